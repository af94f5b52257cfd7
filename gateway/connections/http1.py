"""An HTTP/1.1 connection (h11): request heads become streams, streams' answers become bytes.

The connection owns the socket and the framing and keeps no ASGI state of its own: each
request is an :class:`~roomcast.gateway.streams.http.HTTPStream`, and an upgrade to WebSocket hands
the
socket to a :class:`~roomcast.gateway.connections.websocket.WebSocketHandler` carrying a
:class:`~roomcast.gateway.streams.websocket.WebSocketStream`.

Bad bytes get an HTTP error and a closed connection: malformed → 400, head too large → 431,
body over the limit → 413, smuggling shapes (two Content-Lengths, Content-Length with
Transfer-Encoding) → 400, over ``--limit-concurrency`` → 503. A head that does not arrive in
``timeout_request_headers`` seconds, or an idle keep-alive past ``timeout_keep_alive``, is
closed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from http import HTTPStatus
from typing import Any, cast

import h11

from ..config import ASGIApp, Config, Scope
from ..probes import probes_of
from ..state import ServerState
from ..streams.http import HTTPStream, ProtocolViolation
from ..streams.websocket import WebSocketStream
from .addresses import socket_addresses
from .h1writer import ResponseFramingError, ResponseWriter
from .http2 import PREFACE as H2_PREFACE
from .http2 import HTTP2Connection
from .scope import request_scope
from .websocket import WebSocketHandler

logger = logging.getLogger("roomcast.gateway.error")

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_NOTABLE = frozenset(
    (b"content-length", b"transfer-encoding", b"upgrade", b"connection", b"expect")
)
_DEFAULT_NAMES = frozenset((b"date", b"server"))
_HEAD_END = re.compile(rb"\r?\n\r?\n")


def _length_headers(raw: bytes) -> int:
    """How many Content-Length lines the raw head (and whatever followed it) starts with.

    h11 refuses differing values but merges identical ones (RFC 9110 §8.6 allows either); we
    refuse both as a request-smuggling shape, so the connection keeps the head's raw bytes.
    """
    end = _HEAD_END.search(raw)
    head = raw if end is None else raw[: end.start()]
    return head.lower().count(b"\ncontent-length:")


def _header_list(request: h11.Request) -> list[tuple[bytes, bytes]]:
    """The request's headers as ASGI wants them: (lower-cased name, value) pairs.

    h11 keeps exactly these in ``Headers._full_items``; reading them there avoids iterating
    its Sequence wrapper item by item, which costs more than parsing the head did.
    """
    items = getattr(request.headers, "_full_items", None)
    if items is None:  # a future h11 without it: the public, slower way
        return [(name, value) for name, value in request.headers]
    return [(name, value) for _, name, value in items]


def _h2c_settings(headers: list[tuple[bytes, bytes]], connection: bytes) -> bytes | None:
    """The HTTP2-Settings of a well-formed ``Upgrade: h2c`` request, else None."""
    if b"http2-settings" not in connection or b"upgrade" not in connection:
        return None
    values = [value for name, value in headers if name == b"http2-settings"]
    return values[0] if len(values) == 1 else None


def _error_response(status: int, detail: str = "") -> bytes:
    reason = _REASONS.get(status, b"Error")
    body = reason + (b": " + detail.encode("latin-1", "replace") if detail else b"") + b"\n"
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, reason, len(body), body)
    )


class HTTP1Connection(asyncio.Protocol):
    """One client socket speaking HTTP/1.1, possibly upgraded to WebSocket."""

    def __init__(self, config: Config, app: ASGIApp, state: ServerState) -> None:
        self.config = config
        self.app = app
        self.state = state
        self.loop = asyncio.get_event_loop()
        self.h11 = self._new_h11()
        self.transport: asyncio.Transport | None = None
        self.stream: HTTPStream | None = None
        self.websocket: WebSocketHandler | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int | None] | None = None
        self.scheme = "http"
        self._timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True  # no byte of the next request has arrived yet
        self._in_head = True  # the next request's head is still arriving
        self._head = b""  # its bytes so far (bounded by limit_request_head)
        self._read_paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._body_received = 0
        self._closing = False
        self._writer: ResponseWriter | None = None
        self._head_request = False
        self._http11 = True
        self._keep_alive = True
        # Cleartext HTTP/2 by prior knowledge: the first bytes are checked against its preface.
        self._sniffing = config.http2
        self._sniffed = b""

    # asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike: no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        self.state.connections.add(self)
        self._closing = self.state.closing  # accepted while draining: one answer, then close
        self.client, self.server, self.scheme = socket_addresses(transport)
        if self.scheme == "https":
            self._sniffing = False  # over TLS, HTTP/2 is chosen by ALPN
            ssl_object = transport.get_extra_info("ssl_object")
            alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            if self.config.http2 and alpn == "h2":
                self._switch_to_http2().start()
                return
        self._set_timer(self.config.timeout_request_headers, self._on_head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self._cancel_timer()
        if self.websocket is not None:
            self.websocket.connection_lost()
        if self.stream is not None:
            self.stream.feed_disconnect()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    def data_received(self, data: bytes) -> None:
        if self.websocket is not None:
            self.websocket.data_received(data)
            return
        if self._sniffing:
            data = self._sniffed + data
            size = min(len(data), len(H2_PREFACE))
            if data[:size] == H2_PREFACE[:size]:
                if size < len(H2_PREFACE):
                    self._sniffed = data  # could still be either
                    return
                self._switch_to_http2().start(data)
                return
            self._sniffing, self._sniffed = False, b""
        if self._awaiting_head:
            # RFC 9112 §2.2: ignore empty lines before a request line (some clients send a CRLF
            # after a body); h11 would answer them with a 400.
            data = data.lstrip(b"\r\n")
            if not data:
                return
            # Bytes of a new head have begun to arrive: the keep-alive wait is over and the
            # head has ``timeout_request_headers`` to complete.
            self._set_timer(self.config.timeout_request_headers, self._on_head_timeout)
            self._awaiting_head = False
        if self.h11.their_state is h11.MUST_CLOSE:
            return  # see _handle_events; not buffered either
        if self._in_head and len(self._head) <= self.config.limit_request_head:
            self._head += data  # see _length_headers: h11 hides repeated Content-Lengths
        self.h11.receive_data(data)
        self._handle_events()

    def eof_received(self) -> bool | None:
        if self.websocket is None:
            self.h11.receive_data(b"")
            self._handle_events()
        return None

    # Reading requests -------------------------------------------------------------------------

    def _new_h11(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.limit_request_head)

    def _handle_events(self) -> None:
        conn = self.h11
        while self.transport is not None and not self.transport.is_closing():
            if conn.their_state is h11.MUST_CLOSE:
                # The request was the client's last (Connection: close, HTTP/1.0): bytes after
                # it are ignored, not answered with a 400 that would replace its response.
                return
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                # h11's text quotes the client's bytes as Python reprs and depends on how they
                # were split: it goes to the log, the client gets the status alone.
                logger.debug("bad request from %s: %s", self.client, exc)
                self._reject(exc.error_status_hint, "")
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                # The next pipelined request waits for this response to complete.
                self.pause_reading()
                return
            kind = type(event)
            if kind is h11.Data:
                # h11 hands out bytearray slices of its buffer; ASGI promises ``bytes``.
                self._on_body(bytes(event.data))  # type: ignore[union-attr]
            elif kind is h11.EndOfMessage:
                if self.stream is not None:
                    self.stream.feed_body(b"", more=False)
            elif kind is h11.Request:
                self._on_request(event)  # type: ignore[arg-type]
                if self.websocket is not None:
                    return
            elif kind is h11.ConnectionClosed:
                if self.stream is None:
                    self.transport.close()
                return

    def _on_body(self, data: bytes) -> None:
        self._body_received += len(data)
        stream = self.stream
        if self._body_received > self.config.limit_request_body:
            if stream is not None and stream.response_started:
                self.abort()
            else:
                self._reject(413, f"body over {self.config.limit_request_body} bytes")
                if stream is not None:
                    stream.feed_disconnect()
            return
        if stream is not None:
            stream.feed_body(data, more=True)

    def _on_request(self, request: h11.Request) -> None:
        self._cancel_timer()
        self._body_received = 0
        raw_head, self._head, self._in_head = self._head, b"", False
        headers = _header_list(request)
        # h11's max_incomplete_event_size only bounds a head still being received: one that
        # arrives whole in a single read is parsed whatever its size. Measure it here, so the
        # answer does not depend on how the bytes were split.
        head_size = len(request.method) + len(request.target) + 12  # "M T HTTP/1.1\r\n" "\r\n"
        has_length = False
        chunked = False
        upgrade = b""
        connection = b""
        expect = b""
        declared = 0
        for name, value in headers:
            head_size += len(name) + len(value) + 4
            if name in _NOTABLE:
                if name == b"content-length":
                    has_length = True
                    declared = int(value)  # h11 has checked it is digits
                elif name == b"transfer-encoding":
                    chunked = True
                elif name == b"upgrade":
                    upgrade = value.lower()
                elif name == b"connection":
                    connection = value.lower()
                else:
                    expect = value.lower()
        if request.http_version not in (b"1.1", b"1.0"):
            # h11 takes any d.d: HTTP/2's preface (with --no-http2, or mangled) must not
            # reach the app as a "PRI *" request.
            self._reject(505, "only HTTP/1.0 and HTTP/1.1 are served here")
            return
        if head_size > self.config.limit_request_head:
            self._reject(431, f"request head over {self.config.limit_request_head} bytes")
            return
        if has_length and _length_headers(raw_head) > 1:
            self._reject(400, "more than one Content-Length header")
            return
        # h11 already refuses conflicting Content-Lengths (400) and merges identical ones, as
        # RFC 9110 §8.6 allows; Content-Length beside Transfer-Encoding we refuse here.
        if has_length and chunked:
            self._reject(400, "ambiguous message length (Content-Length with Transfer-Encoding)")
            return
        app = self.app
        if self.config.has_probes:
            probe = probes_of(self.config, self.state).match(request.target)
            if probe is not None:
                app = probe  # answered whatever the load, upgrade headers or not
                upgrade = b""
            elif self.state.closing:  # accepted while draining: only probes are served
                self._reject(503, "server shutting down")
                return
        limit = self.config.limit_concurrency
        if limit is not None and self.state.active >= limit and app is self.app:
            self.state.counters.rejected_overload += 1
            self._reject(503, "server at its concurrency limit")
            return
        scope = self._scope(request, headers)
        if b"websocket" in upgrade and b"upgrade" in connection and request.method == b"GET":
            self._start_websocket(request, scope)
            return
        if upgrade == b"h2c" and not declared and not chunked:
            settings = _h2c_settings(headers, connection)
            if settings is not None and self.config.http2 and self.scheme == "http":
                scope["type"] = "http"
                scope["method"] = request.method.decode("ascii")
                self._upgrade_to_http2(settings, scope)
                return
        if declared > self.config.limit_request_body:
            self._reject(413, f"body over {self.config.limit_request_body} bytes")
            return
        scope["type"] = "http"
        scope["method"] = request.method.decode("ascii")
        self._head_request = request.method == b"HEAD"
        self._http11 = request.http_version == b"1.1"
        self._keep_alive = self._http11 and b"close" not in connection
        stream = self.stream = HTTPStream(
            app,
            scope,
            self,
            self.config.http_timeout,
            self.config.application_close_timeout,
        )
        if expect == b"100-continue":
            stream.on_first_receive = self._continue
        self._run(stream.run())

    def _switch_to_http2(self) -> HTTP2Connection:
        """Hand the socket to an HTTP/2 connection; this object is done with it."""
        transport = self.transport
        assert transport is not None
        self._cancel_timer()
        self.state.connections.discard(self)
        self.transport = None
        successor = HTTP2Connection(self.config, self.app, self.state)
        transport.set_protocol(successor)
        successor.connection_made(transport)
        return successor

    def _upgrade_to_http2(self, settings: bytes, scope: Scope) -> None:
        """RFC 7540 §3.2: answer 101, then the request is stream 1 of an HTTP/2 connection."""
        assert self.transport is not None
        trailing, _ = self.h11.trailing_data
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
        )
        self._switch_to_http2().start_upgraded(settings, scope, bytes(trailing))

    def _scope(self, request: h11.Request, headers: list[tuple[bytes, bytes]]) -> Scope:
        target = request.target
        path, mark, query = target.partition(b"?")
        if path[:1] != b"/" and b"://" in path:  # absolute-form: its path, then the query
            target = b"/" + path.split(b"://", 1)[1].partition(b"/")[2] + mark + query
        return request_scope(
            self.config,
            self.state,
            http_version=request.http_version.decode("ascii"),
            target=target,
            headers=headers,
            client=self.client,
            server=self.server,
            scheme=self.scheme,
        )

    def _start_websocket(self, request: h11.Request, scope: Scope) -> None:
        assert self.transport is not None
        version = key = None
        protocols: list[str] = []
        for name, value in request.headers:
            if name == b"sec-websocket-version":
                version = value
            elif name == b"sec-websocket-key":
                key = value
            elif name == b"sec-websocket-protocol":
                protocols.extend(p.strip() for p in value.decode("latin-1").split(",") if p.strip())
        if version != b"13" or not key:
            self._reject(400, "missing or unsupported Sec-WebSocket-Version/Key")
            return
        scope["type"] = "websocket"
        scope["scheme"] = "wss" if scope["scheme"] == "https" else "ws"
        scope["subprotocols"] = protocols
        scope["extensions"] = {"websocket.http.response": {}}
        handler = self.websocket = WebSocketHandler(
            self.transport, self.config, self.state, request, self.h11, self.drain
        )
        stream = WebSocketStream(
            self.app,
            scope,
            handler,
            self.config.websocket_connect_timeout,
            self.config.websocket_timeout,
            self.config.application_close_timeout,
            self.config.ws_protocols,
        )
        handler.stream = stream
        trailing, _ = self.h11.trailing_data
        if trailing:
            handler.data_received(trailing)
        self._run(stream.run())

    def _run(self, work: Any) -> None:
        self.state.active += 1
        self.state.counters.requests += 1
        task = self.loop.create_task(work)
        self.state.tasks.add(task)
        task.add_done_callback(self._stream_done)

    def _stream_done(self, task: asyncio.Task[None]) -> None:
        self.state.active -= 1
        self.state.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("stream task failed", exc_info=task.exception())

    def _continue(self) -> None:
        if self.h11.they_are_waiting_for_100_continue and self.transport is not None:
            self.transport.write(
                self.h11.send(h11.InformationalResponse(status_code=100, headers=[]))
            )

    def _reject(self, status: int, detail: str) -> None:
        """Answer a request we will not serve with ``status``, then close."""
        if status != 503:  # overload is counted in rejected_overload: the request was fine
            self.state.counters.bad_requests += 1
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.stream is None or not self.stream.response_started:
            transport.write(_error_response(status, detail))
        transport.close()

    # The Responder interface (for HTTPStream) -----------------------------------------------

    def send_response(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, end: bool
    ) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        # Header names arrive validated and lower-cased from the stream (HTTPStream._start),
        # so h11 is told they are parsed already: its per-header regexes are the costliest
        # part of a small response.
        if any(name in _DEFAULT_NAMES for name, _ in headers):
            names = {name for name, _ in headers}
            full = [pair for pair in self.state.default_headers() if pair[0] not in names]
            full += headers
        else:
            full = self.state.default_headers() + headers
        writer = self._writer = ResponseWriter(
            head_request=self._head_request,
            http11=self._http11,
            keep_alive=self._keep_alive and not self._closing,
        )
        try:
            data = writer.head(status, _REASONS.get(status, b""), full) + writer.body(body)
            if end:
                data += writer.end()
        except ResponseFramingError as exc:
            transport.write(_error_response(500))
            transport.close()
            raise ProtocolViolation(f"response refused: {exc}") from exc
        transport.write(data)
        if end:
            self._response_done()

    def send_body(self, body: bytes, end: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        writer = self._writer
        assert writer is not None
        try:
            data = writer.body(body)
            if end:
                data += writer.end()
        except ResponseFramingError as exc:  # more or less body than its Content-Length
            transport.close()
            raise ProtocolViolation(f"response body refused: {exc}") from exc
        if data:
            transport.write(data)
        if end:
            self._response_done()

    def send_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Never called: HTTP/1.1 scopes do not offer ``http.response.trailers``."""
        raise ProtocolViolation("response trailers are offered on HTTP/2 only")

    def _response_done(self) -> None:
        transport = self.transport
        assert transport is not None
        conn = self.h11
        writer = self._writer
        self._writer = None
        if self._closing or writer is None or not writer.keep_alive:
            transport.close()
            return
        if conn.their_state is not h11.DONE:  # the app answered without reading the body
            transport.close()
            return
        self.stream = None
        # The response went out through our writer, not h11, so h11 cannot start a new cycle;
        # a fresh parser (sub-microsecond) takes what the client has already pipelined, minus
        # the empty lines RFC 9112 §2.2 says to ignore (see data_received).
        trailing = conn.trailing_data[0].lstrip(b"\r\n")
        self._in_head, self._head = True, trailing
        self.h11 = conn = self._new_h11()
        if trailing:
            conn.receive_data(trailing)
        self._awaiting_head = not trailing
        if trailing:  # a pipelined request is already (partly) here
            self._set_timer(self.config.timeout_request_headers, self._on_head_timeout)
        else:
            self._set_timer(self.config.timeout_keep_alive, self._on_keep_alive_timeout)
        self.resume_reading()
        if trailing:
            self._handle_events()

    async def drain(self) -> None:
        if self._write_paused and self.transport is not None and not self.transport.is_closing():
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()

    # Server-driven closing ------------------------------------------------------------------

    def shutdown(self, restart: bool = False) -> None:
        self._closing = True
        if self.transport is None or self.transport.is_closing():
            return
        if self.websocket is not None:
            self.websocket.shutdown(restart)
        elif self.stream is None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now: close() would wait on a client that does not read."""
        if self.transport is not None:
            self.transport.abort()

    # Timers -----------------------------------------------------------------------------------

    def _set_timer(self, seconds: float, callback: Any) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(seconds, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_head_timeout(self) -> None:
        self._timer = None
        if self.transport is not None and self.stream is None and self.websocket is None:
            self.transport.close()

    def _on_keep_alive_timeout(self) -> None:
        self._timer = None
        if self.transport is not None and self.stream is None and self.websocket is None:
            self.transport.close()
