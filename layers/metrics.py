"""A channel layer's metrics: its :class:`~roomcast.layers.base.LayerCounters`, for Prometheus.

Every layer registers one :class:`LayerMetrics` with :mod:`roomcast.metrics` when it is made
(``BaseChannelLayer.__init__``), with the layer as owner: the counters are the same plain ints
the layer already keeps (``layer.counters``), read at scrape time, so the hot path costs nothing
more. When the layer is garbage collected its counters move to the process's retired totals
(they never go down) and its gauges vanish.

=====================================  =======  ===============  ================================
name                                   type     labels           meaning
=====================================  =======  ===============  ================================
``roomcast_layer_sent_total``          counter  backend          ``send`` calls that buffered
``roomcast_layer_group_sent_total``    counter  backend          ``group_send`` calls
``roomcast_layer_delivered_total``     counter  backend          messages handed to ``receive``
``roomcast_layer_dropped_total``       counter  backend, cause   messages lost: ``full`` (a
                                                                 member's buffer), ``expired``,
                                                                 ``undecodable`` (wrong key,
                                                                 corrupt bytes)
``roomcast_layer_groups``              gauge    backend          groups with a member here
``roomcast_layer_group_members``       gauge    backend          memberships of channels here
=====================================  =======  ===============  ================================

``backend`` names the layer class (``memory``, ``redis``; see :func:`backend_label`). The two
gauges come from ``layer.local_group_counts()``: a backend that keeps process-local groups
returns ``(groups, memberships)``; the default (``None``) leaves them out. A backend with
metrics of its own (the Redis layer's reconnects, outages, round trips) registers its own
source with ``roomcast.metrics.register(stats, owner=self)``; see :mod:`roomcast.metrics`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from roomcast.metrics import Family, counter, gauge

if TYPE_CHECKING:
    from .base import BaseChannelLayer

__all__ = ["LayerMetrics", "backend_label"]

_BACKEND = ("backend",)


def backend_label(layer_class: type[object]) -> str:
    """The ``backend`` label of a layer class: ``InMemoryChannelLayer`` → ``"memory"``,
    ``RedisChannelLayer`` → ``"redis"``; a subclass (an app's ``SpyLayer``) takes its nearest
    roomcast ancestor's. A ``metrics_backend`` class attribute wins."""
    named = getattr(layer_class, "metrics_backend", None)
    if isinstance(named, str) and named:
        return named
    for cls in layer_class.__mro__:
        if cls.__module__.startswith("roomcast.layers.") and cls.__name__ != "BaseChannelLayer":
            break
    else:
        cls = layer_class
    name = (cls.__name__.removesuffix("ChannelLayer") or cls.__name__).lower()
    return _SHORT.get(name, name)


_SHORT = {"inmemory": "memory"}


class LayerMetrics:
    """The metric source of one layer: its counters (held) and its gauges (while it lives)."""

    def __init__(self, layer: BaseChannelLayer) -> None:
        self.backend = backend_label(type(layer))
        self.counters = layer.counters  # kept after the layer goes, for the retired totals
        self._layer = weakref.ref(layer)

    def collect_metrics(self) -> Iterator[Family]:
        counters = self.counters
        one = (self.backend,)
        yield counter(
            "roomcast_layer_sent_total",
            "Messages sent to a channel (send) and buffered.",
            {one: counters.sent},
            _BACKEND,
        )
        yield counter(
            "roomcast_layer_group_sent_total",
            "Messages sent to a group (group_send).",
            {one: counters.group_sent},
            _BACKEND,
        )
        yield counter(
            "roomcast_layer_delivered_total",
            "Messages handed to a receive() in this process.",
            {one: counters.delivered},
            _BACKEND,
        )
        yield counter(
            "roomcast_layer_dropped_total",
            "Messages lost: a member's buffer was full, it expired, or it could not be decoded.",
            {
                (self.backend, "full"): counters.dropped,
                (self.backend, "expired"): counters.expired,
                (self.backend, "undecodable"): counters.rejected,
            },
            ("backend", "cause"),
        )
        layer = self._layer()
        found = layer.local_group_counts() if layer is not None else None
        if found is not None:
            groups, members = found
            yield gauge(
                "roomcast_layer_groups",
                "Groups with at least one member channel in this process.",
                {one: groups},
                _BACKEND,
            )
            yield gauge(
                "roomcast_layer_group_members",
                "Group memberships of channels in this process.",
                {one: members},
                _BACKEND,
            )
