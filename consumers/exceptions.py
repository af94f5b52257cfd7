"""The exceptions of consumers, with Django Channels' names and meanings.

Control flow (raise them from a handler):

* :class:`StopConsumer`: end this consumer instance cleanly; ``__call__`` returns.
* :class:`AcceptConnection` / :class:`DenyConnection`: raised from a WebSocket consumer's
  ``connect()``, accept or refuse the handshake.

Errors:

* :class:`InvalidChannelLayerError`: a consumer needs a channel layer (it has ``groups``) and
  has none, or the layer lacks the ``groups`` extension; also the base class of the layers'
  ``LayerConfigError`` (a wrong ``CHANNEL_LAYERS``), as Channels raises it for those.
* :class:`UndecodableFrame`: a JSON consumer got a frame it cannot decode; handed to
  ``receive_json_error()`` (see :mod:`roomcast.consumers.websocket`), not raised at the server.
* :class:`RequestAborted` / :class:`RequestTimeout`: Channels' names, for code that catches
  them; roomcast's consumers do not raise them.

:class:`ChannelFull`, :class:`MessageTooLarge` and :class:`InvalidChannelLayerError` are
defined with the channel layers (:mod:`roomcast.layers.exceptions`) and re-exported here because
Channels has them in this module, so an ``except ChannelFull`` written against
``channels.exceptions`` catches what our layers raise.
"""

from __future__ import annotations

from roomcast.layers.exceptions import ChannelFull, InvalidChannelLayerError, MessageTooLarge

__all__ = [
    "AcceptConnection",
    "ChannelFull",
    "DenyConnection",
    "InvalidChannelLayerError",
    "MessageTooLarge",
    "RequestAborted",
    "RequestTimeout",
    "StopConsumer",
    "UndecodableFrame",
]


class StopConsumer(Exception):
    """Raised by a handler to end its consumer instance; the consumer returns normally."""


class AcceptConnection(Exception):
    """Raised in a WebSocket consumer's ``connect()`` to accept the connection."""


class DenyConnection(Exception):
    """Raised in a WebSocket consumer's ``connect()`` to refuse the connection (HTTP 403)."""


class RequestAborted(Exception):
    """The client went away part-way through sending its request body (Channels' name)."""


class RequestTimeout(RequestAborted):
    """The request body did not arrive in time (Channels' name)."""


class UndecodableFrame(ValueError):
    """A frame that a JSON WebSocket consumer cannot turn into content.

    ``close_code`` is the WebSocket close code the default handling uses: 1003 (unsupported
    data) for a binary frame, 1007 (invalid payload data) for text that is not JSON.
    ``text_data``/``bytes_data`` hold the frame; the decoder's own error is ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        close_code: int,
        text_data: str | None = None,
        bytes_data: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.text_data = text_data
        self.bytes_data = bytes_data
