"""Channels' ``channels.layers``: the channel layer registry and the in-memory layer, defined in
:mod:`roomcast.layers` (``settings``, ``base``, ``memory``).

``get_channel_layer(alias)`` differs from Channels' on purpose: an alias that is not configured
raises :class:`~roomcast.layers.exceptions.LayerConfigError` naming the configured ones (Channels
returns ``None``), and without any ``CHANNEL_LAYERS`` the in-memory layer is the default
(Channels has none). See :mod:`roomcast.layers.settings`.
"""

from roomcast.layers.base import BaseChannelLayer
from roomcast.layers.memory import InMemoryChannelLayer
from roomcast.layers.settings import (
    DEFAULT_CHANNEL_LAYER,
    ChannelLayerManager,
    channel_layers,
    get_channel_layer,
)

__all__ = [
    "DEFAULT_CHANNEL_LAYER",
    "BaseChannelLayer",
    "ChannelLayerManager",
    "InMemoryChannelLayer",
    "channel_layers",
    "get_channel_layer",
]
