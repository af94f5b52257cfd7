"""The errors a channel layer raises, each at the place the fault is found.

Name and message errors subclass :class:`TypeError`, as Django Channels' do, so code written
against Channels that catches ``TypeError`` keeps working.
"""

from __future__ import annotations


class LayerError(Exception):
    """Base class of every error raised by a roomcast channel layer."""


class ChannelFull(LayerError):
    """The channel already holds ``capacity`` undelivered messages."""


class InvalidChannelName(LayerError, TypeError):
    """A channel name breaks Channels' rules (characters or length)."""


class InvalidGroupName(LayerError, TypeError):
    """A group name breaks Channels' rules (characters or length)."""


class InvalidMessage(LayerError, TypeError):
    """A message is not a dict with string keys and a string ``type``."""


class MessageEncodeError(InvalidMessage):
    """A message holds a value that msgpack cannot encode."""


class MessageTooLarge(LayerError, ValueError):
    """An encoded message is larger than the layer's ``max_message_size``."""


class UndecodableMessage(LayerError, ValueError):
    """Bytes that arrived are not a message this layer can read (wrong key, corrupt)."""


class InvalidChannelLayerError(ValueError):
    """A channel layer is configured incorrectly, or missing where one is needed.

    Channels' name (``channels.exceptions.InvalidChannelLayerError``), defined here so that
    ``except InvalidChannelLayerError`` written against Channels catches every
    :class:`LayerConfigError`; ``roomcast.consumers.exceptions`` re-exports it.
    """


class LayerConfigError(LayerError, InvalidChannelLayerError):
    """A ``CHANNEL_LAYERS`` entry or a layer option is wrong (a ``ValueError``, and Channels'
    :class:`InvalidChannelLayerError`)."""


class LayerConnectionError(LayerError, ConnectionError):
    """The layer could not reach its broker; the operation did not take effect."""


class HistoryNotEnabled(LayerError, LookupError):
    """``group_history``/``group_position`` on a group no ``CONFIG["history"]`` pattern matches."""


class InvalidPosition(LayerError, ValueError):
    """A stream position that is malformed: wrong type, epoch or offset (forged or corrupt)."""
