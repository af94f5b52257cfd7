"""The gateway's own metrics: plain counters on the process's ServerState, read at scrape time.

One :class:`GatewayMetrics` lives on each server's :class:`~roomcast.gateway.state.ServerState`
(``state.metrics``) and is registered with :mod:`roomcast.metrics` by the
:class:`~roomcast.gateway.server.Server` for as long as that state lives. Counting costs an
attribute or dict add; nothing here calls prometheus-client (see roomcast/metrics.py).

What counts today: the event loop's lag (observed by the
:class:`~roomcast.gateway.watchdog.LoopWatchdog` every tick, on the loop), the limits of
:mod:`roomcast.gateway.limits` (``limit_refusals``), and the supervisor's view of its workers
(:mod:`roomcast.gateway.workers`). The connection and stream counters (connections, requests,
WebSocket messages and bytes, slow clients, refusals, handshake and TLS failures) are defined,
registered and exported at zero: the connection code calls the ``*_`` methods below once it is
wired (issue 15's successor), which keeps every label value inside the fixed sets here.

Labels are bounded: ``protocol`` is ``h1``, ``h2`` or ``ws``; ``method`` one of
:data:`METHODS` or ``other``; ``status`` a class (``2xx``) or, for refusals, one of
:data:`REFUSALS`; a WebSocket close ``code`` is ``1000``-``1015`` as itself, ``3xxx``,
``4xxx`` or ``other`` (:func:`close_code_label`).

Faults: the counters live in the process; a restart or a kill -9 starts them at zero (a
counter reset to Prometheus). A reconnect, a failover of Redis and the like change nothing
here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from roomcast import readiness
from roomcast.metrics import Family, Histogram, counter, gauge, histogram

PROTOCOLS = ("h1", "h2", "ws")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT"})
#: The refusals the gateway answers for a limit: HTTP statuses, and WebSocket close 1009.
REFUSALS = ("400", "413", "431", "503", "1009")
#: The limits of roomcast.gateway.limits.
LIMITS = ("connections_per_client", "messages_per_second", "bytes_per_second")
DIRECTIONS = ("in", "out")


def status_class(status: int) -> str:
    """``200`` → ``2xx``; anything outside 100-599 → ``other``."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def close_code_label(code: int) -> str:
    """A WebSocket close code as a bounded label value."""
    if 1000 <= code <= 1015:
        return str(code)
    if 3000 <= code <= 3999:
        return "3xxx"
    if 4000 <= code <= 4999:
        return "4xxx"
    return "other"


class GatewayMetrics:
    """What one gateway process counts; a :mod:`roomcast.metrics` source."""

    def __init__(self) -> None:
        self.connections_open = dict.fromkeys(PROTOCOLS, 0)
        self.connections_accepted = dict.fromkeys(PROTOCOLS, 0)
        self.connections_closed = dict.fromkeys(PROTOCOLS, 0)
        self.requests: dict[tuple[str, str], int] = {}  # (method, status class)
        self.request_duration = {protocol: Histogram() for protocol in ("h1", "h2")}
        self.websocket_messages = dict.fromkeys(DIRECTIONS, 0)
        self.websocket_bytes = dict.fromkeys(DIRECTIONS, 0)
        self.websocket_closed: dict[str, int] = {}  # close code label
        self.slow_client_drops = 0
        self.refusals = dict.fromkeys(REFUSALS, 0)
        self.handshake_failures = dict.fromkeys(PROTOCOLS, 0)
        self.tls_errors = 0
        self.limit_refusals = dict.fromkeys(LIMITS, 0)
        self.loop_lag = Histogram()

    # What the connection code calls (wired in issue 15's successor) ----------------------

    def connection_opened(self, protocol: str) -> None:
        self.connections_accepted[protocol] += 1
        self.connections_open[protocol] += 1

    def connection_closed(self, protocol: str) -> None:
        self.connections_closed[protocol] += 1
        self.connections_open[protocol] -= 1

    def request_done(self, method: str, status: int, duration: float, protocol: str) -> None:
        key = (method_label(method), status_class(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        self.request_duration[protocol].observe(duration)

    def websocket_message(self, direction: str, size: int) -> None:
        self.websocket_messages[direction] += 1
        self.websocket_bytes[direction] += size

    def websocket_close(self, code: int) -> None:
        label = close_code_label(code)
        self.websocket_closed[label] = self.websocket_closed.get(label, 0) + 1

    def refused(self, status: int) -> None:
        """A limit answered: 400, 413, 431, 503, or close 1009 (others are not counted)."""
        label = str(status)
        if label in self.refusals:
            self.refusals[label] += 1

    # The source ---------------------------------------------------------------------------

    def collect_metrics(self) -> Iterable[Family]:
        def by(values: dict[str, int]) -> dict[tuple[str, ...], float]:
            return {(key,): value for key, value in values.items()}

        yield gauge(
            "roomcast_gateway_connections",
            "Open connections by protocol (h1, h2, ws).",
            by(self.connections_open),
            ("protocol",),
        )
        yield counter(
            "roomcast_gateway_connections_accepted_total",
            "Connections accepted, by protocol (a WebSocket counts once it is accepted).",
            by(self.connections_accepted),
            ("protocol",),
        )
        yield counter(
            "roomcast_gateway_connections_closed_total",
            "Connections closed, by protocol.",
            by(self.connections_closed),
            ("protocol",),
        )
        yield counter(
            "roomcast_gateway_requests_total",
            "HTTP requests answered, by method and status class.",
            {key: value for key, value in dict(self.requests).items()},
            ("method", "status"),
        )
        yield histogram(
            "roomcast_gateway_request_duration_seconds",
            "Time from a request's head to the end of its response, by protocol.",
            {(key,): value.value() for key, value in self.request_duration.items()},
            ("protocol",),
        )
        yield counter(
            "roomcast_gateway_websocket_messages_total",
            "WebSocket messages received (in) and sent (out).",
            by(self.websocket_messages),
            ("direction",),
        )
        yield counter(
            "roomcast_gateway_websocket_bytes_total",
            "WebSocket message payload bytes received (in) and sent (out).",
            by(self.websocket_bytes),
            ("direction",),
        )
        yield counter(
            "roomcast_gateway_websocket_closed_total",
            "WebSocket sessions closed, by close code (1000-1015, 3xxx, 4xxx, other).",
            by(dict(self.websocket_closed)),
            ("code",),
        )
        yield counter(
            "roomcast_gateway_slow_client_drops_total",
            "Connections closed because the client did not read what it was sent.",
            self.slow_client_drops,
        )
        yield counter(
            "roomcast_gateway_refusals_total",
            "Requests and messages refused by a limit: HTTP 400, 413, 431, 503; close 1009.",
            by(self.refusals),
            ("status",),
        )
        yield counter(
            "roomcast_gateway_handshake_failures_total",
            "Failed handshakes: WebSocket upgrades (ws) and HTTP/2 prefaces (h2), by protocol.",
            by(self.handshake_failures),
            ("protocol",),
        )
        yield counter(
            "roomcast_gateway_tls_errors_total",
            "TLS handshakes that failed.",
            self.tls_errors,
        )
        yield counter(
            "roomcast_gateway_limit_refusals_total",
            "Clients refused or closed by a limit per client address or per WebSocket.",
            by(self.limit_refusals),
            ("limit",),
        )
        yield histogram(
            "roomcast_gateway_event_loop_lag_seconds",
            "How late the event loop ran the watchdog's timer, observed every tick.",
            self.loop_lag.value(),
        )


class ReadinessMetrics:
    """``roomcast_gateway_ready``: what the readiness probe would answer now, as 1 or 0.

    ``reasons()`` is the probe's own (start-up not complete, draining, and every report in
    :mod:`roomcast.readiness`: a channel layer that cannot reach Redis), so an outage of Redis
    shows in Prometheus as the processes that are not ready, without the gateway importing a
    layer.
    """

    def __init__(self, reasons: Callable[[], dict[str, str]]) -> None:
        self.reasons = reasons

    def collect_metrics(self) -> Iterable[Family]:
        waiting = self.reasons()
        yield gauge(
            "roomcast_gateway_ready",
            "1 when this process is ready to serve (the readiness probe's 200), else 0.",
            0 if waiting else 1,
        )
        yield gauge(
            "roomcast_gateway_not_ready_reasons",
            "Reasons this process is not ready now: start-up, draining, a layer without Redis.",
            len(waiting),
        )


def readiness_reasons(app_started: bool, closing: bool) -> dict[str, str]:
    """The readiness probe's reasons (probes.Probes.reasons), from the server's state."""
    found: dict[str, str] = {}
    if not app_started:
        found["lifespan"] = "application startup not complete"
    if closing:
        found["server"] = "shutting down"
    found.update(readiness.not_ready())
    return found
