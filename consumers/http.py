"""The HTTP consumer: Channels' ``AsyncHttpConsumer``, plus responses that outlive ``handle()``.

``handle(body)`` is called with the whole request body; it answers with ``send_headers`` and
``send_body`` (or ``send_response``). As in Channels, the consumer ends once the response is
complete (``send_body`` with ``more_body=False``) and ``disconnect()`` runs.

Unlike Channels, ``handle()`` may return **before the response is complete**, and the consumer
stays alive, reading its layer channel, until the response completes or the client goes away.
That gives long-poll and streamed responses driven by channel layer messages::

    class Updates(AsyncHttpConsumer):
        groups = ["news"]                 # joined before handle(), left when the consumer ends

        async def handle(self, body):
            await self.send_headers(headers=[(b"content-type", b"text/event-stream")])
            await self.send_body(b": open\\n\\n", more_body=True)   # the response stays open

        async def news_item(self, event):  # a group_send("news", {"type": "news.item", ...})
            await self.send_body(f"data: {event['text']}\\n\\n".encode(), more_body=True)

A long-poll may even wait with nothing sent: ``handle()`` returns without ``send_headers``
and a later handler sends the whole response. Nothing times out on its own: the consumer
waits until its response completes or the client disconnects (``http.disconnect``), then
leaves its groups and runs ``disconnect()``, exactly once, however it ended (an error too).
The channel (``self.channel_name``) can be handed to other code for direct ``send`` as well.

``send_headers`` accepts headers as a list of pairs or a dict, names and values as bytes or
str (str is encoded as latin-1). Misuse raises :class:`RuntimeError` at once rather than at the
server: headers twice, a body before the headers, anything after the response completed.

A channel layer that cannot reach its broker (a
:class:`~roomcast.layers.exceptions.LayerConnectionError`, raised once the layer has waited its
``retry_timeout``) reaching a handler is answered ``503 Service Unavailable`` with
``Retry-After``, with one warning line and no traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from roomcast.layers.exceptions import LayerConnectionError

from .base import Message, _consumer_name, _GroupMembership, logger
from .exceptions import StopConsumer

__all__ = ["AsyncHttpConsumer"]

HeaderValue = bytes | str
HeadersArg = Mapping[HeaderValue, HeaderValue] | Iterable[tuple[HeaderValue, HeaderValue]]


def _as_bytes(value: HeaderValue) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("latin-1")
    raise TypeError(f"header names and values must be bytes or str, not {type(value).__name__}")


class AsyncHttpConsumer(_GroupMembership):
    """An HTTP endpoint: override ``handle(body)``; the response may be finished later."""

    response_started: bool = False
    response_complete: bool = False
    _disconnect_done: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.body: list[bytes] = []

    # The response -----------------------------------------------------------------------

    async def send_headers(self, *, status: int = 200, headers: HeadersArg | None = None) -> None:
        """Start the response. The server sends it with the first ``send_body``."""
        if self.response_started:
            raise RuntimeError(f"{type(self).__name__}: the response has already started")
        pairs = headers.items() if isinstance(headers, Mapping) else (headers or [])
        encoded = [(_as_bytes(name), _as_bytes(value)) for name, value in pairs]
        await self.send({"type": "http.response.start", "status": status, "headers": encoded})
        self.response_started = True

    async def send_body(self, body: bytes, *, more_body: bool = False) -> None:
        """Send a part of the body; ``more_body=False`` (the default) completes the response."""
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(f"the body must be bytes, not {type(body).__name__}")
        if not self.response_started:
            name = type(self).__name__
            raise RuntimeError(f"{name}: send_headers() must come before send_body()")
        if self.response_complete:
            raise RuntimeError(f"{type(self).__name__}: the response is already complete")
        await self.send({"type": "http.response.body", "body": bytes(body), "more_body": more_body})
        if not more_body:
            self.response_complete = True

    async def send_response(
        self, status: int, body: bytes, *, headers: HeadersArg | None = None
    ) -> None:
        """The whole response at once: ``send_headers`` then ``send_body``."""
        await self.send_headers(status=status, headers=headers)
        await self.send_body(body)

    # What subclasses override -------------------------------------------------------------

    async def handle(self, body: bytes) -> None:
        """Called with the complete request body. Respond now, or later from a handler."""
        raise NotImplementedError("Subclasses of AsyncHttpConsumer must provide a handle() method.")

    async def disconnect(self) -> None:
        """Called once when the consumer ends (response done, client gone, or an error).

        Do not send from here.
        """

    # Handlers ---------------------------------------------------------------------------

    async def http_request(self, message: Message) -> None:
        """Collect the body; when it is complete, join ``groups`` and run ``handle()``."""
        body: list[bytes] = self.__dict__.setdefault("body", [])
        if "body" in message:
            body.append(message["body"])
        if message.get("more_body"):
            return
        await self._join_groups()
        await self.handle(b"".join(body))

    async def http_disconnect(self, message: Message) -> None:
        """The client went away: leave ``groups``, run ``disconnect()``, stop."""
        await self._end()

    async def dispatch(self, message: Message) -> None:
        """Dispatch, then end the consumer if the response has been completed.

        A channel layer that cannot reach its broker (``LayerConnectionError``) is answered
        503 with ``Retry-After`` (if the response has not started; else the response ends
        there), with one warning line and no traceback.
        """
        try:
            await super().dispatch(message)
        except LayerConnectionError as exc:
            logger.warning(
                "%s: channel layer unavailable while handling %r on %s (%s); answering 503",
                _consumer_name(self),
                message.get("type"),
                self.scope.get("path"),
                exc,
            )
            if message.get("type") == "http.disconnect":
                raise StopConsumer() from None
            try:
                if not self.response_started:
                    await self.send_response(
                        503,
                        b"Service Unavailable: try again later\n",
                        headers=[(b"content-type", b"text/plain"), (b"retry-after", b"5")],
                    )
                elif not self.response_complete:
                    await self.send_body(b"")
            except OSError:
                pass  # the client went away meanwhile
            await self._end()
        if self.response_complete:
            await self._end()

    async def _end(self) -> None:
        await self._leave_groups()
        await self._run_disconnect()
        raise StopConsumer()

    async def _run_disconnect(self) -> None:
        if not self._disconnect_done:
            self._disconnect_done = True
            await self.disconnect()

    async def _finish(self) -> None:
        await super()._finish()
        try:
            await self._run_disconnect()
        except Exception:
            logger.exception("%s: disconnect() failed", _consumer_name(self))
