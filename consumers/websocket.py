"""WebSocket consumers: Channels' ``channels.generic.websocket``, sync and async, plain and JSON.

Subclass one, override ``connect``/``receive``/``disconnect`` (and handlers for your layer
message types), and route ``YourConsumer.as_asgi()``::

    class ChatConsumer(AsyncJsonWebsocketConsumer):
        groups = ["lobby"]                          # joined on connect, left on disconnect

        async def receive_json(self, content):
            await self.channel_layer.group_send("lobby", {"type": "chat.message", **content})

        async def chat_message(self, event):        # a "chat.message" from the layer
            await self.send_json(event)

Behaviour, as in Channels:

* ``groups`` are joined (``group_add`` with ``self.channel_name``) before ``connect()`` runs and
  left before ``disconnect(code)`` runs; ``groups`` without a channel layer raises
  :class:`~roomcast.consumers.exceptions.InvalidChannelLayerError`. Each instance gets its own copy
  of
  the list. Unlike Channels, groups joined this way are also left when the consumer ends by an
  error.
* ``connect()`` accepts by default; raising
  :class:`~roomcast.consumers.exceptions.AcceptConnection` or
  :class:`~roomcast.consumers.exceptions.DenyConnection` from it accepts or closes (a close before
  accepting is an HTTP 403 to the client).
* ``accept(subprotocol=None, headers=None)``, ``close(code=None, reason=None)`` (``code=True``
  means no code, as ``send(close=True)`` passes it), ``send(text_data=None, bytes_data=None,
  close=False)``. After ``websocket.disconnect`` the consumer stops.

JSON consumers decode each text frame with ``decode_json`` and pass the content to
``receive_json``; ``send_json`` encodes with ``encode_json`` (both overridable classmethods,
``json`` by default; async in the async variant, as in Channels). A frame that cannot be
decoded does not crash the consumer (Channels raises): it becomes an
:class:`~roomcast.consumers.exceptions.UndecodableFrame` handed to ``receive_json_error(error)``,
which
by default logs a warning and closes the connection with ``error.close_code``: 1003 for a
binary frame, 1007 for text ``decode_json`` rejects with a :class:`ValueError`. Override
``receive_json_error`` to answer differently (send an error message and stay open, say).

A channel layer that cannot reach its broker (a
:class:`~roomcast.layers.exceptions.LayerConnectionError`, raised once the layer has waited
its ``retry_timeout``) reaching a handler closes the connection with 1013 ("try again later";
accepted first when it happens during the handshake, so that the client sees the code), with one
warning line and no traceback.

Tokens that expire (``TokenAuthMiddleware`` with an authenticate function that returns
``(user, expires_at)``): when the token expires, ``token_expired(message)`` runs (in turn, like
any handler) and by default closes with :data:`~roomcast.consumers.tokens.TOKEN_EXPIRED_CODE`
(4001, reason "token expired"). Before that, the client may send a new token, and the consumer
renews the connection with ``await self.refresh_token(token)`` (True if accepted; the expiry is
re-armed); see :mod:`roomcast.consumers.tokens` for the message shape we suggest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from roomcast.layers.exceptions import LayerConnectionError

from .base import Message, SyncConsumer, _consumer_name, _GroupMembership
from .exceptions import AcceptConnection, DenyConnection, StopConsumer, UndecodableFrame
from .tokens import TOKEN_EXPIRED_CODE, TokenExpiry

__all__ = [
    "AsyncJsonWebsocketConsumer",
    "AsyncWebsocketConsumer",
    "JsonWebsocketConsumer",
    "WebsocketConsumer",
]

logger = logging.getLogger("roomcast.consumers")

Headers = Iterable[tuple[bytes, bytes]]

_CLOSE_REASONS = {1003: "expected a text frame", 1007: "invalid JSON"}
LAYER_DOWN_CLOSE_CODE = 1013  # "try again later": the channel layer cannot reach its broker


def _token_expiry(consumer: Any) -> TokenExpiry:
    expiry = consumer.scope.get("token_expiry")
    if not isinstance(expiry, TokenExpiry):
        raise RuntimeError(
            f"{type(consumer).__name__}.refresh_token(): the connection has no expiring token "
            f"(TokenAuthMiddleware puts one in the scope when authenticate gives an expiry)"
        )
    return expiry


def _accept_message(subprotocol: str | None, headers: Headers | None) -> Message:
    message: Message = {"type": "websocket.accept", "subprotocol": subprotocol}
    if headers:
        message["headers"] = list(headers)
    return message


def _frame_message(text_data: str | None, bytes_data: bytes | None) -> Message:
    if text_data is not None:
        return {"type": "websocket.send", "text": text_data}
    if bytes_data is not None:
        return {"type": "websocket.send", "bytes": bytes_data}
    raise ValueError("You must pass one of bytes_data or text_data")


def _close_message(code: int | bool | None, reason: str | None) -> Message:
    message: Message = {"type": "websocket.close"}
    if code is not None and code is not True and code is not False:
        message["code"] = code
    if reason:
        message["reason"] = reason
    return message


def _undecodable(
    text_data: str | None, bytes_data: bytes | None, exc: Exception | None
) -> UndecodableFrame:
    if text_data is None:
        size = len(bytes_data) if bytes_data is not None else 0
        return UndecodableFrame(
            f"expected a text frame of JSON, got a binary frame of {size} bytes",
            close_code=1003,
            bytes_data=bytes_data,
        )
    return UndecodableFrame(
        f"text frame is not valid JSON: {exc}",
        close_code=1007,
        text_data=text_data,
    )


async def _layer_unavailable(consumer: Any, message: Message, exc: LayerConnectionError) -> None:
    """The layer is down (it waited ``retry_timeout`` already): one log line, no traceback,
    and the client is told to come back later with a close 1013 (accepted first if need be,
    so that the code reaches it)."""
    kind = message.get("type")
    logger.warning(
        "%s: channel layer unavailable while handling %r on %s (%s); closing with %d",
        _consumer_name(consumer),
        kind,
        consumer.scope.get("path"),
        exc,
        LAYER_DOWN_CLOSE_CODE,
    )
    if kind == "websocket.disconnect":
        raise StopConsumer()  # the client is gone already
    try:
        if not consumer.__dict__.get("_ws_accepted"):
            await consumer._send_to_client(_accept_message(None, None))
            consumer._ws_accepted = True
            consumer._metrics.websocket_accepted(consumer)
        await consumer._send_to_client(_close_message(LAYER_DOWN_CLOSE_CODE, "try again later"))
    except OSError:
        pass  # the client went away meanwhile: its disconnect follows


# Async ---------------------------------------------------------------------------------------


class AsyncWebsocketConsumer(_GroupMembership):
    """A WebSocket consumer whose methods are coroutines."""

    async def websocket_connect(self, message: Message) -> None:
        """Join ``groups``, then run ``connect()``."""
        await self._join_groups()
        try:
            await self.connect()
        except AcceptConnection:
            await self.accept()
        except DenyConnection:
            await self.close()

    async def connect(self) -> None:
        """Called when the client asks to connect; accepts by default."""
        await self.accept()

    async def dispatch(self, message: Message) -> None:
        """Dispatch; a channel layer that is down closes the connection with 1013."""
        try:
            await super().dispatch(message)
        except LayerConnectionError as exc:
            await _layer_unavailable(self, message, exc)

    async def accept(self, subprotocol: str | None = None, headers: Headers | None = None) -> None:
        """Accept the connection, with a subprotocol and extra response headers if given."""
        await super().send(_accept_message(subprotocol, headers))
        self._ws_accepted = True
        self._metrics.websocket_accepted(self)

    async def websocket_receive(self, message: Message) -> None:
        """A frame from the client: passed to ``receive()``."""
        if message.get("text") is not None:
            await self.receive(text_data=message["text"])
        else:
            await self.receive(bytes_data=message.get("bytes"))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called with each frame from the client (exactly one of the two is set)."""

    async def send(  # type: ignore[override]
        self,
        text_data: str | None = None,
        bytes_data: bytes | None = None,
        close: bool | int = False,
    ) -> None:
        """Send a frame to the client; ``close`` (``True`` or a close code) closes after it."""
        await super().send(_frame_message(text_data, bytes_data))
        if close:
            await self.close(close)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close the connection (before accepting: refuse it, an HTTP 403)."""
        self._metrics.websocket_closing(self)
        await super().send(_close_message(code, reason))

    async def websocket_disconnect(self, message: Message) -> None:
        """The connection closed: leave ``groups``, run ``disconnect(code)``, stop."""
        self._metrics.websocket_disconnected(self, message.get("code", 1005))
        await self._leave_groups()
        await self.disconnect(message.get("code", 1005))
        raise StopConsumer()

    async def disconnect(self, code: int) -> None:
        """Called when the connection has closed (by either side)."""

    async def token_expired(self, message: Message) -> None:
        """The connection's token expired (``TokenAuthMiddleware``): close with 4001."""
        await self.close(code=TOKEN_EXPIRED_CODE, reason="token expired")

    async def refresh_token(self, token: str) -> bool:
        """Authenticate ``token`` for this connection and re-arm its expiry (see tokens)."""
        return await _token_expiry(self).refresh(token, self.scope)


class AsyncJsonWebsocketConsumer(AsyncWebsocketConsumer):
    """An async WebSocket consumer that speaks JSON text frames."""

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        """Decode the frame and pass it to ``receive_json`` (or ``receive_json_error``)."""
        if text_data is None:
            await self.receive_json_error(_undecodable(None, bytes_data, None))
            return
        try:
            content = await self.decode_json(text_data)
        except ValueError as exc:
            error = _undecodable(text_data, None, exc)
            error.__cause__ = exc
            await self.receive_json_error(error)
            return
        await self.receive_json(content, **kwargs)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Called with the decoded content of each frame."""

    async def receive_json_error(self, error: UndecodableFrame) -> None:
        """A frame could not be decoded: by default log it and close with ``error.close_code``."""
        logger.warning("%s: %s; closing with %d", _consumer_name(self), error, error.close_code)
        await self.close(code=error.close_code, reason=_CLOSE_REASONS.get(error.close_code))

    async def send_json(self, content: Any, close: bool | int = False) -> None:
        """Encode ``content`` with ``encode_json`` and send it as a text frame."""
        await super().send(text_data=await self.encode_json(content), close=close)

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        """Text frame → content; raise :class:`ValueError` for input you refuse."""
        return json.loads(text_data)

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        """Content → the text of a frame."""
        return json.dumps(content)


# Sync ----------------------------------------------------------------------------------------


class WebsocketConsumer(_GroupMembership, SyncConsumer):
    """A WebSocket consumer whose methods are plain functions run in a worker thread."""

    def websocket_connect(self, message: Message) -> None:
        """Join ``groups``, then run ``connect()``."""
        async_to_sync(self._join_groups)()
        try:
            self.connect()
        except AcceptConnection:
            self.accept()
        except DenyConnection:
            self.close()

    def connect(self) -> None:
        """Called when the client asks to connect; accepts by default."""
        self.accept()

    async def dispatch(self, message: Message) -> None:
        """Dispatch; a channel layer that is down closes the connection with 1013."""
        try:
            await super().dispatch(message)
        except LayerConnectionError as exc:
            await _layer_unavailable(self, message, exc)

    def accept(self, subprotocol: str | None = None, headers: Headers | None = None) -> None:
        """Accept the connection, with a subprotocol and extra response headers if given."""
        super().send(_accept_message(subprotocol, headers))
        self._ws_accepted = True
        self._metrics.websocket_accepted(self)

    def websocket_receive(self, message: Message) -> None:
        """A frame from the client: passed to ``receive()``."""
        if message.get("text") is not None:
            self.receive(text_data=message["text"])
        else:
            self.receive(bytes_data=message.get("bytes"))

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called with each frame from the client (exactly one of the two is set)."""

    def send(  # type: ignore[override]
        self,
        text_data: str | None = None,
        bytes_data: bytes | None = None,
        close: bool | int = False,
    ) -> None:
        """Send a frame to the client; ``close`` (``True`` or a close code) closes after it."""
        super().send(_frame_message(text_data, bytes_data))
        if close:
            self.close(close)

    def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close the connection (before accepting: refuse it, an HTTP 403)."""
        self._metrics.websocket_closing(self)
        super().send(_close_message(code, reason))

    def websocket_disconnect(self, message: Message) -> None:
        """The connection closed: leave ``groups``, run ``disconnect(code)``, stop."""
        self._metrics.websocket_disconnected(self, message.get("code", 1005))
        async_to_sync(self._leave_groups)()
        self.disconnect(message.get("code", 1005))
        raise StopConsumer()

    def disconnect(self, code: int) -> None:
        """Called when the connection has closed (by either side)."""

    def token_expired(self, message: Message) -> None:
        """The connection's token expired (``TokenAuthMiddleware``): close with 4001."""
        self.close(code=TOKEN_EXPIRED_CODE, reason="token expired")

    def refresh_token(self, token: str) -> bool:
        """Authenticate ``token`` for this connection and re-arm its expiry (see tokens)."""
        return bool(async_to_sync(_token_expiry(self).refresh)(token, self.scope))


class JsonWebsocketConsumer(WebsocketConsumer):
    """A WebSocket consumer (sync) that speaks JSON text frames."""

    def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        """Decode the frame and pass it to ``receive_json`` (or ``receive_json_error``)."""
        if text_data is None:
            self.receive_json_error(_undecodable(None, bytes_data, None))
            return
        try:
            content = self.decode_json(text_data)
        except ValueError as exc:
            error = _undecodable(text_data, None, exc)
            error.__cause__ = exc
            self.receive_json_error(error)
            return
        self.receive_json(content, **kwargs)

    def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Called with the decoded content of each frame."""

    def receive_json_error(self, error: UndecodableFrame) -> None:
        """A frame could not be decoded: by default log it and close with ``error.close_code``."""
        logger.warning("%s: %s; closing with %d", _consumer_name(self), error, error.close_code)
        self.close(code=error.close_code, reason=_CLOSE_REASONS.get(error.close_code))

    def send_json(self, content: Any, close: bool | int = False) -> None:
        """Encode ``content`` with ``encode_json`` and send it as a text frame."""
        super().send(text_data=self.encode_json(content), close=close)

    @classmethod
    def decode_json(cls, text_data: str) -> Any:
        """Text frame → content; raise :class:`ValueError` for input you refuse."""
        return json.loads(text_data)

    @classmethod
    def encode_json(cls, content: Any) -> str:
        """Content → the text of a frame."""
        return json.dumps(content)
