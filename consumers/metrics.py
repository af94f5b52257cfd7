"""What the consumers of this process do, counted for :mod:`roomcast.metrics`.

One :class:`ConsumerStats` per consumer class (by ``module.qualname``), plain ints and small
dicts: the consumer base class takes its class's stats once per connection, and per message
adds one to ``messages``; everything else is counted once per connection or per error. The
whole module is one metric source, registered at import.

==============================================  =======  ======================  =============
name                                            type     labels                  meaning
==============================================  =======  ======================  =============
``roomcast_consumer_instances``                 gauge    consumer                instances
                                                                                 running now
``roomcast_consumer_messages_total``            counter  consumer                messages
                                                                                 dispatched to
                                                                                 a handler
``roomcast_consumer_errors_total``              counter  consumer, message_type  handlers that
                                                                                 raised
``roomcast_consumer_websocket_accepted_total``  counter  consumer                accepted
``roomcast_consumer_websocket_denied_total``    counter  consumer                closed before
                                                                                 accepting
``roomcast_consumer_websocket_closed_total``    counter  consumer, code          accepted, then
                                                                                 closed
==============================================  =======  ======================  =============

Bounded labels: ``consumer`` keeps the first 200 class names seen, ``message_type`` the first
100 message types (developer-chosen strings; a type that is not a str reads ``"invalid"``),
the rest read ``"other"``. ``code`` is the close code the consumer was told
(``websocket.disconnect``): the RFC 6455 codes 1000-1015 as themselves, ``"3xxx"`` and
``"4xxx"`` for the registered and private ranges (4001 is "token expired"), ``"other"`` else.

Counted on the event loop's thread, except what a sync consumer does in its worker thread
(accept, close, disconnect): those take a lock, once per connection.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from roomcast import metrics
from roomcast.metrics import Family, LabelValues, counter, gauge

__all__ = ["ConsumerStats", "close_code_label", "stats_for"]

CONSUMER_LIMIT = 200
MESSAGE_TYPE_LIMIT = 100

_consumer_names = LabelValues(CONSUMER_LIMIT)
_message_types = LabelValues(MESSAGE_TYPE_LIMIT)
_lock = threading.Lock()


def close_code_label(code: Any) -> str:
    """A close code as a label of bounded cardinality (see the module docstring)."""
    if isinstance(code, int) and not isinstance(code, bool):
        if 1000 <= code <= 1015:
            return str(code)
        if 3000 <= code <= 3999:
            return "3xxx"
        if 4000 <= code <= 4999:
            return "4xxx"
    return metrics.OTHER


class ConsumerStats:
    """The counts of one consumer class."""

    __slots__ = ("accepted", "closed", "denied", "errors", "instances", "messages", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.instances = 0
        self.messages = 0
        self.errors: dict[str, int] = {}  # message type label -> handlers that raised
        self.accepted = 0
        self.denied = 0
        self.closed: dict[str, int] = {}  # close code label -> connections

    def error(self, message_type: Any) -> None:
        """A handler raised on a message of ``message_type`` (counted on the loop's thread)."""
        label = _message_types(message_type) if isinstance(message_type, str) else "invalid"
        self.errors[label] = self.errors.get(label, 0) + 1

    # Once per WebSocket connection (maybe from a sync consumer's thread) ------------------

    def websocket_accepted(self, consumer: object) -> None:
        """The consumer accepted (it has set its ``_ws_accepted`` flag, which we read later)."""
        with _lock:
            self.accepted += 1

    def websocket_closing(self, consumer: object) -> None:
        """The consumer sends ``websocket.close``: a denial unless it accepted first."""
        state = consumer.__dict__
        if not state.get("_ws_accepted") and not state.get("_metrics_denied"):
            state["_metrics_denied"] = True
            with _lock:
                self.denied += 1

    def websocket_disconnected(self, consumer: object, code: Any) -> None:
        """The server said ``websocket.disconnect``: an accepted connection has closed."""
        state = consumer.__dict__
        if state.get("_ws_accepted") and not state.get("_metrics_closed"):
            state["_metrics_closed"] = True
            label = close_code_label(code)
            with _lock:
                self.closed[label] = self.closed.get(label, 0) + 1


_stats: dict[str, ConsumerStats] = {}


def stats_for(consumer: object) -> ConsumerStats:
    """The stats of ``consumer``'s class (made on first use; 200 classes at most, then
    ``"other"``)."""
    cls = type(consumer)
    name = _consumer_names(f"{cls.__module__}.{cls.__qualname__}")
    stats = _stats.get(name)
    if stats is None:
        with _lock:
            stats = _stats.setdefault(name, ConsumerStats(name))
    return stats


class _ConsumerSource:
    def collect_metrics(self) -> Iterator[Family]:
        everyone = list(_stats.values())
        consumer = ("consumer",)
        yield gauge(
            "roomcast_consumer_instances",
            "Consumer instances running now (one per connection; a worker's per channel).",
            {(s.name,): s.instances for s in everyone},
            consumer,
        )
        yield counter(
            "roomcast_consumer_messages_total",
            "Messages dispatched to a consumer handler.",
            {(s.name,): s.messages for s in everyone},
            consumer,
        )
        yield counter(
            "roomcast_consumer_errors_total",
            "Consumer handlers that raised, by the type of the message they handled.",
            {(s.name, kind): n for s in everyone for kind, n in dict(s.errors).items()},
            ("consumer", "message_type"),
        )
        yield counter(
            "roomcast_consumer_websocket_accepted_total",
            "WebSocket connections a consumer accepted.",
            {(s.name,): s.accepted for s in everyone if s.accepted or s.denied},
            consumer,
        )
        yield counter(
            "roomcast_consumer_websocket_denied_total",
            "WebSocket connections a consumer closed before accepting them (HTTP 403).",
            {(s.name,): s.denied for s in everyone if s.accepted or s.denied},
            consumer,
        )
        yield counter(
            "roomcast_consumer_websocket_closed_total",
            "Accepted WebSocket connections that closed, by close code.",
            {(s.name, code): n for s in everyone for code, n in dict(s.closed).items()},
            ("consumer", "code"),
        )


_SOURCE = _ConsumerSource()
metrics.register(_SOURCE)  # held by this module for the life of the process
