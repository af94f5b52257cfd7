"""roomcast channel layers: Django Channels' layer API, in memory and over Redis.

``get_channel_layer(alias)`` returns the layer configured by ``CHANNEL_LAYERS`` (see
:mod:`roomcast.layers.settings`); the contract and its semantics are in :mod:`roomcast.layers.base`.
"""

from __future__ import annotations

if __name__ != "roomcast.layers":  # the source folder, imported by its folder name
    raise ImportError(
        f"{__name__!r} is roomcast's source folder layers/: import roomcast.layers "
        "(pip install -e . maps it there)"
    )

from typing import TYPE_CHECKING, Any

from .base import BaseChannelLayer
from .exceptions import (
    ChannelFull,
    HistoryNotEnabled,
    InvalidChannelName,
    InvalidGroupName,
    InvalidMessage,
    InvalidPosition,
    LayerConfigError,
    LayerConnectionError,
    LayerError,
    MessageEncodeError,
    MessageTooLarge,
    UndecodableMessage,
)
from .history import POSITION_KEY, HistoryResult, StreamPosition, message_position
from .memory import InMemoryChannelLayer

if TYPE_CHECKING:
    from .settings import ChannelLayerManager

__all__ = [
    "POSITION_KEY",
    "BaseChannelLayer",
    "ChannelFull",
    "HistoryNotEnabled",
    "HistoryResult",
    "InMemoryChannelLayer",
    "InvalidChannelName",
    "InvalidGroupName",
    "InvalidMessage",
    "InvalidPosition",
    "LayerConfigError",
    "LayerConnectionError",
    "LayerError",
    "MessageEncodeError",
    "MessageTooLarge",
    "StreamPosition",
    "UndecodableMessage",
    "channel_layers",
    "get_channel_layer",
    "message_position",
]


def get_channel_layer(alias: str = "default") -> BaseChannelLayer:
    """The layer instance configured under ``alias`` (one per alias, made on first use)."""
    from .settings import get_channel_layer as _get

    return _get(alias)


def __getattr__(name: str) -> Any:
    if name == "channel_layers":
        from .settings import channel_layers

        return channel_layers
    raise AttributeError(name)


if TYPE_CHECKING:
    channel_layers: ChannelLayerManager
