"""One HTTP/2 stream as its ASGI stream sees it: the state our side keeps, and the adapters
that let :class:`~roomcast.gateway.streams.http.HTTPStream` and
:class:`~roomcast.gateway.connections.websocket.WebSocketSession` run on it exactly as on HTTP/1.1.

:class:`H2Responder` is an HTTP stream's Responder, :class:`H2Carrier` the byte pipe of a
WebSocket over extended CONNECT (RFC 8441) and :class:`H2WebSocketResponder` its handshake.
They send through their :class:`~roomcast.gateway.connections.http2.HTTP2Connection`, which owns h2
and the flow-control windows.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import h2.errors

from ..streams.http import ClientDisconnected, HTTPStream, ProtocolViolation
from ..streams.websocket import WebSocketStream
from .websocket import WebSocketSession, accept_headers

if TYPE_CHECKING:
    from .http2 import HTTP2Connection

ERROR_CODES = h2.errors.ErrorCodes
# RFC 9113 §8.2.2: connection-specific fields must not appear in HTTP/2.
HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
STATUS = {status: str(status).encode() for status in range(100, 1000)}


class H2Stream:
    """Our side of one h2 stream: what is queued for the client and how its body is acked."""

    __slots__ = (
        "declared",
        "drained",
        "end",
        "end_sent",
        "handler",
        "outbox",
        "paused",
        "received",
        "remote_ended",
        "reset",
        "sent",
        "session",
        "sid",
        "task_done",
        "trailers",
        "unacked",
    )

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.handler: HTTPStream | WebSocketStream | None = None
        self.session: WebSocketSession | None = None
        self.outbox = bytearray()
        self.end = False  # the app has sent its last byte
        self.end_sent = False  # END_STREAM has gone to h2
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.unacked = 0  # body bytes received while paused, acknowledged on resume
        self.paused = False
        self.drained: asyncio.Future[None] | None = None
        self.reset = False  # reset by either side: nothing more is sent
        self.task_done = False
        self.received = 0
        self.remote_ended = False
        self.declared: int | None = None  # the response's Content-Length
        self.sent = 0


class _StreamPort:
    """What an HTTP responder and a WebSocket carrier on one stream do alike: wait for the
    client's window (backpressure) and hold or give back the stream's receive window."""

    __slots__ = ("connection", "stream")

    def __init__(self, connection: HTTP2Connection, stream: H2Stream) -> None:
        self.connection = connection
        self.stream = stream

    async def drain(self) -> None:
        await self.connection.drain(self.stream)

    def pause_reading(self) -> None:
        self.stream.paused = True

    def resume_reading(self) -> None:
        self.connection.acknowledge(self.stream)


class H2Responder(_StreamPort):
    """The :class:`~roomcast.gateway.streams.http.Responder` of one HTTP/2 request stream."""

    __slots__ = ()

    def send_response(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, end: bool
    ) -> None:
        connection, stream = self.connection, self.stream
        full = [(b":status", STATUS[status])]
        names: set[bytes] = set()
        # No body goes with these, whatever Content-Length says (RFC 9110 §6.4.1, §8.6).
        bodiless = status in (204, 304) or status < 200 or self._head_request()
        if bodiless:
            stream.declared = 0
        for name, value in headers:
            if name in HOP_BY_HOP:
                continue
            if name == b"content-length" and not bodiless:
                if not value.isdigit():
                    raise ProtocolViolation(f"response Content-Length {value!r} is not a number")
                stream.declared = int(value)
            names.add(name)
            full.append((name, value))
        full += [pair for pair in connection.state.default_headers() if pair[0] not in names]
        self._count(body, end)
        if end and not body:
            connection.send_headers(stream, full, end=True)
            return
        connection.send_headers(stream, full, end=False)
        connection.send_data(stream, body, end)

    def send_body(self, body: bytes, end: bool) -> None:
        self._count(body, end)
        self.connection.send_data(self.stream, body, end)

    def _head_request(self) -> bool:
        handler = self.stream.handler
        return isinstance(handler, HTTPStream) and handler.head_request

    def send_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        stream = self.stream
        stream.trailers = [pair for pair in headers if pair[0] not in HOP_BY_HOP]
        stream.end = True
        self.connection.flush(stream)

    def _count(self, body: bytes, end: bool) -> None:
        """Hold the app to its Content-Length, as HTTP/1.1 framing would."""
        stream = self.stream
        stream.sent += len(body)
        declared = stream.declared
        if declared is None:
            return
        if stream.sent > declared or (end and stream.sent < declared):
            self.connection.reset(stream, ERROR_CODES.INTERNAL_ERROR)
            raise ProtocolViolation(
                f"response body of {stream.sent} bytes against Content-Length {declared}"
            )

    def abort(self) -> None:
        self.connection.reset(self.stream, ERROR_CODES.INTERNAL_ERROR)


class H2Carrier(_StreamPort):
    """A :class:`~.websocket.WebSocketCarrier` over one HTTP/2 stream."""

    __slots__ = ()

    def write(self, data: bytes) -> None:
        self.connection.send_data(self.stream, data, end=False)

    def is_closing(self) -> bool:
        stream = self.stream
        transport = self.connection.transport
        return stream.reset or stream.end or transport is None or transport.is_closing()

    def close(self) -> None:
        self.connection.finish_local(self.stream)

    def abort(self) -> None:
        self.connection.reset(self.stream, ERROR_CODES.CANCEL)

    def buffered(self) -> int:
        transport = self.connection.transport
        queued = transport.get_write_buffer_size() if transport is not None else 0
        return len(self.stream.outbox) + queued


class H2WebSocketResponder:
    """The :class:`~.streams.websocket.WebSocketResponder` of an extended CONNECT."""

    accept_status = 200  # what the access log shows for an accepted handshake

    def __init__(
        self, connection: HTTP2Connection, stream: H2Stream, offers: bytes, target: str
    ) -> None:
        self.connection = connection
        self.stream = stream
        self.offers = offers
        self.session = WebSocketSession(
            H2Carrier(connection, stream), connection.config, connection.state, target
        )
        self._answered = False

    def accept(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> None:
        stream = self.stream
        if stream.reset or self._answered:
            raise ClientDisconnected("WebSocket closed before the handshake completed")
        self._answered = True
        connection = self.connection
        headers = [(name.lower(), value) for name, value in headers]
        extensions, answer = accept_headers(
            connection.config, connection.state, self.offers, subprotocol, headers
        )
        response = [(b":status", b"200")]
        response += [pair for pair in answer if pair[0] not in HOP_BY_HOP]
        connection.send_headers(stream, response, end=False)
        self.session.start(extensions)

    async def send_message(self, data: str | bytes) -> None:
        await self.session.send_message(data)

    def close(self, code: int, reason: str) -> None:
        if not self._answered:  # the app gave up before answering: refuse the stream
            self.connection.reset(self.stream, ERROR_CODES.CANCEL)
            return
        self.session.close(code, reason)

    def deny(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, end: bool) -> None:
        connection, stream = self.connection, self.stream
        if status:
            self._answered = True
            full = [(b":status", STATUS.get(status, b"500"))]
            full += [(n.lower(), v) for n, v in headers if n.lower() not in HOP_BY_HOP]
            connection.send_headers(stream, full, end=end and not body)
            if end and not body:
                return
        connection.send_data(stream, body, end)

    def pause_reading(self) -> None:
        self.session.pause_reading()

    def resume_reading(self) -> None:
        self.session.resume_reading()

    def shutdown(self, restart: bool) -> None:
        if not self._answered:
            code = 1012 if restart else 1001
            handler = self.stream.handler
            if isinstance(handler, WebSocketStream):
                handler.feed_disconnect(code, by="server")
            self.deny(503, [(b"content-length", b"0")], b"", end=True)
            return
        self.session.shutdown(restart)
