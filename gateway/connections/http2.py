"""An HTTP/2 connection (h2): many streams on one socket, each its own ASGI conversation.

The connection owns the socket and the h2 state machine; every request stream runs an
:class:`~roomcast.gateway.streams.http.HTTPStream` and every extended CONNECT with ``:protocol
websocket`` (RFC 8441) a :class:`~roomcast.gateway.streams.websocket.WebSocketStream` over a
:class:`~roomcast.gateway.connections.websocket.WebSocketSession`, exactly as on HTTP/1.1. The
per-stream state and those adapters live in :mod:`roomcast.gateway.connections.h2streams`; the
checks
h2 lacks (control-frame floods, oversized frame headers) in
:mod:`roomcast.gateway.connections.h2guards`.

Flow control both ways, so that one slow party stalls only its own stream:

- Out: each stream queues what its app sent and h2 frames it as the client's windows allow;
  ``drain()`` (the app's backpressure) waits until that queue is empty. When the socket itself
  is backed up, reading stops too, so a client that sends PINGs or requests without reading
  the answers cannot make us queue without bound.
- In: request body is acknowledged (WINDOW_UPDATE) as it arrives, except on a stream whose
  app is behind (the stream paused reading): its window closes and the client waits. The
  connection window is ``(max streams + 1) * stream window``, so paused streams can never
  starve the others.

Bad input ends with the right h2 error: h2 raises a ``ProtocolError`` carrying the code and
has queued the GOAWAY, which we send before closing. h2 bounds CONTINUATION frames and HPACK's
decoded header list (``limit_request_head``: ENHANCE_YOUR_CALM); a frame header declaring
more than SETTINGS_MAX_FRAME_SIZE is refused at once (FRAME_SIZE_ERROR; h2 would first buffer
the declared length); too many streams is a connection error; a flood of control frames
(PING, SETTINGS, RST_STREAM, PRIORITY, empty DATA, unknown frames: the rapid-reset and
ping-flood attacks) spends a token bucket and ends in GOAWAY ENHANCE_YOUR_CALM, its answers
unsent. Body the app will never read (its stream reset or answered early) gives its
connection window back.

Shutdown is graceful both ways: our GOAWAY names the last stream we will serve and goes out
at once (written beside h2, whose state machine would otherwise refuse to finish the streams
in flight); a client's GOAWAY (NO_ERROR) lets its streams in flight finish too. The
connection closes when none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from ..config import ASGIApp, Config, Scope
from ..probes import probes_of
from ..state import ServerState
from ..streams.http import HTTPStream
from ..streams.websocket import WebSocketStream
from .addresses import socket_addresses
from .h2guards import FloodGuard, FrameSizeCheck
from .h2streams import STATUS, H2Responder, H2Stream, H2WebSocketResponder
from .scope import request_scope

logger = logging.getLogger("roomcast.gateway.error")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
STREAM_WINDOW = 65535  # SETTINGS_INITIAL_WINDOW_SIZE: request body buffered per stream
_ERROR_CODES = h2.errors.ErrorCodes


class HTTP2Connection(asyncio.Protocol):
    """One client socket speaking HTTP/2 (after ALPN, the preface, or ``Upgrade: h2c``)."""

    def __init__(self, config: Config, app: ASGIApp, state: ServerState) -> None:
        self.config = config
        self.app = app
        self.state = state
        self.loop = asyncio.get_event_loop()
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                # Response headers arrive validated and lower-cased from the streams; h2's
                # per-header checks would cost more than the rest of a small response.
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: config.h2_max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: config.limit_request_head,
                h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            },
        )
        self.conn.decoder.max_header_list_size = config.limit_request_head
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int | None] | None = None
        self.scheme = "http"
        self.flood = FloodGuard()
        self._timer: asyncio.TimerHandle | None = None
        self._write_scheduled = False
        self._write_paused = False
        self._closing = False  # GOAWAY sent: no new streams
        self._last_stream = 0  # the last stream served after GOAWAY
        self._lost = False
        self._frames = FrameSizeCheck(len(PREFACE))

    # Taking over a socket --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self.state.connections.add(self)
        self.client, self.server, self.scheme = socket_addresses(transport)

    def start(self, data: bytes = b"") -> None:
        """Send our SETTINGS, then handle what the client already sent (its preface first)."""
        self.conn.initiate_connection()
        self._open_connection_window()
        self._arm_idle_timer(self.config.timeout_request_headers)
        self._write()
        if data:
            self.data_received(data)

    def start_upgraded(self, settings: bytes, scope: Scope, trailing: bytes) -> None:
        """Continue an ``Upgrade: h2c`` request (already answered 101) as stream 1."""
        try:
            self.conn.initiate_upgrade_connection(settings)
        except (h2.exceptions.ProtocolError, ValueError) as exc:
            # A bad HTTP2-Settings header: the client gets a GOAWAY instead of its response.
            self._protocol_error(exc)
            return
        self._open_connection_window()
        stream = self.streams[1] = H2Stream(1)
        stream.remote_ended = True
        scope["http_version"] = "2"
        scope["extensions"] = {"http.response.trailers": {}}
        self._start_http(stream, scope, body_complete=True)
        self._write()
        if trailing:
            self.data_received(trailing)

    def _open_connection_window(self) -> None:
        window = (self.config.h2_max_concurrent_streams + 1) * STREAM_WINDOW
        self.conn.increment_flow_control_window(window - 65535)

    # asyncio.Protocol -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._frames.feed(data, self.conn.max_inbound_frame_size):
            # h2 would buffer the whole declared length before checking it against our
            # SETTINGS_MAX_FRAME_SIZE: refuse at the frame header.
            self.conn.close_connection(_ERROR_CODES.FRAME_SIZE_ERROR)
            self._protocol_error(h2.exceptions.FrameTooLargeError("frame over max frame size"))
            return
        before = self.conn.state_machine.state
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._protocol_error(exc)
            return
        except Exception as exc:
            logger.warning("HTTP/2 frames from %s not understood", self.client, exc_info=exc)
            self._protocol_error(h2.exceptions.ProtocolError(str(exc)))
            return
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                self._on_data(cast(h2.events.DataReceived, event))
            elif kind is h2.events.RequestReceived:
                self._on_request(cast(h2.events.RequestReceived, event))
            elif kind is h2.events.StreamEnded:
                self._on_stream_ended(cast(h2.events.StreamEnded, event).stream_id)
            elif kind is h2.events.WindowUpdated:
                self._on_window_updated(cast(h2.events.WindowUpdated, event).stream_id)
            elif kind is h2.events.StreamReset:
                self._on_reset(cast(h2.events.StreamReset, event).stream_id)
            elif kind is h2.events.ConnectionTerminated:
                self._on_goaway(cast(h2.events.ConnectionTerminated, event), before)
            elif kind in (
                h2.events.PingReceived,
                h2.events.PingAckReceived,
                h2.events.SettingsAcknowledged,
                h2.events.RemoteSettingsChanged,
                h2.events.PriorityUpdated,
                h2.events.UnknownFrameReceived,
            ):
                if kind is h2.events.RemoteSettingsChanged:
                    self._on_window_updated(0)  # INITIAL_WINDOW_SIZE may have grown
                self._spend()
            if self.transport is None or self.transport.is_closing():
                return
        self._write()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.state.connections.discard(self)
        self._cancel_timer()
        for stream in list(self.streams.values()):
            self._gone(stream)
        self.streams.clear()

    def pause_writing(self) -> None:
        # The client is not reading: stop reading what it sends, so that its requests and
        # pings cannot make us queue answers without bound.
        self._write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        for stream in list(self.streams.values()):
            if not stream.outbox:
                self._wake(stream)

    def eof_received(self) -> bool | None:
        return None  # close our side too; streams see the disconnect in connection_lost

    # Events ------------------------------------------------------------------------------------

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        if self._closing and sid > self._last_stream:
            self._reset_stream(sid, _ERROR_CODES.REFUSED_STREAM)
            return
        self._cancel_timer()
        method = path = protocol = authority = b""
        headers: list[tuple[bytes, bytes]] = []
        has_host = False
        declared = 0
        for name, value in event.headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                elif name == b":protocol":
                    protocol = value
                continue
            if name == b"host":
                has_host = True
            elif name == b"content-length":
                declared = int(value) if value.isdigit() else 0
            headers.append((name, value))
        if authority and not has_host:
            headers.insert(0, (b"host", authority))  # what HTTP/1.1 apps read the host from
        stream = self.streams[sid] = H2Stream(sid)
        stream.remote_ended = event.stream_ended is not None
        app = self.app
        if self.config.has_probes:
            probe = None if method == b"CONNECT" else probes_of(self.config, self.state).match(path)
            if probe is not None:
                app = probe  # answered whatever the load
            elif self.state.closing:  # accepted while draining: only probes are served
                self._refuse(stream, 503, "server shutting down")
                return
        limit = self.config.limit_concurrency
        if limit is not None and self.state.active >= limit and app is self.app:
            self.state.counters.rejected_overload += 1
            self._refuse(stream, 503, "server at its concurrency limit")
            return
        if method == b"CONNECT":
            if protocol.lower() != b"websocket":
                self.state.counters.bad_requests += 1
                self._refuse(stream, 501, "CONNECT is served only for WebSockets (RFC 8441)")
                return
            self._start_websocket(stream, self._scope(path, headers), headers)
            return
        if declared > self.config.limit_request_body:
            self.state.counters.bad_requests += 1
            self._refuse(stream, 413, f"body over {self.config.limit_request_body} bytes")
            return
        scope = self._scope(path, headers)
        scope["type"] = "http"
        scope["method"] = method.decode("ascii", "replace")
        scope["extensions"] = {"http.response.trailers": {}}
        self._start_http(stream, scope, body_complete=stream.remote_ended, app=app)

    def _scope(self, path: bytes, headers: list[tuple[bytes, bytes]]) -> Scope:
        return request_scope(
            self.config,
            self.state,
            http_version="2",
            target=path,
            headers=headers,
            client=self.client,
            server=self.server,
            scheme=self.scheme,
        )

    def _start_http(
        self, stream: H2Stream, scope: Scope, body_complete: bool, app: ASGIApp | None = None
    ) -> None:
        responder = H2Responder(self, stream)
        handler = HTTPStream(
            app or self.app,
            scope,
            responder,
            self.config.http_timeout,
            self.config.application_close_timeout,
        )
        stream.handler = handler
        if body_complete:
            handler.feed_body(b"", more=False)
        self._run(stream, handler.run())

    def _start_websocket(
        self, stream: H2Stream, scope: Scope, headers: list[tuple[bytes, bytes]]
    ) -> None:
        version = b""
        protocols: list[str] = []
        offers: list[bytes] = []
        for name, value in headers:
            if name == b"sec-websocket-version":
                version = value
            elif name == b"sec-websocket-protocol":
                protocols.extend(p.strip() for p in value.decode("latin-1").split(",") if p.strip())
            elif name == b"sec-websocket-extensions":
                offers.append(value)
        if version != b"13":
            self.state.counters.bad_requests += 1
            self._refuse(stream, 400, "missing or unsupported Sec-WebSocket-Version")
            return
        scope["type"] = "websocket"
        scope["scheme"] = "wss" if scope["scheme"] == "https" else "ws"
        scope["subprotocols"] = protocols
        scope["extensions"] = {"websocket.http.response": {}}
        responder = H2WebSocketResponder(self, stream, b", ".join(offers), scope["path"])
        handler = WebSocketStream(
            self.app,
            scope,
            responder,
            self.config.websocket_connect_timeout,
            self.config.websocket_timeout,
            self.config.application_close_timeout,
            self.config.ws_protocols,
        )
        stream.handler = handler
        stream.session = responder.session
        responder.session.stream = handler
        self._run(stream, handler.run())

    def _on_data(self, event: h2.events.DataReceived) -> None:
        sid = event.stream_id
        size = event.flow_controlled_length or 0
        data = event.data or b""
        if not data and not event.stream_ended:
            self._spend()  # empty DATA frames cost nothing to send and something to handle
        stream = self.streams.get(sid)
        if stream is None or stream.reset:
            self.conn.acknowledge_received_data(size, sid)
            return
        if stream.paused:
            stream.unacked += size
        elif size:
            self.conn.acknowledge_received_data(size, sid)
        if stream.session is not None:
            if data:
                stream.session.data_received(data)
            return
        handler = stream.handler
        if not isinstance(handler, HTTPStream):
            return
        stream.received += len(data)
        if stream.received > self.config.limit_request_body:
            self.state.counters.bad_requests += 1
            handler.feed_disconnect()
            if handler.response_started:
                self.reset(stream, _ERROR_CODES.CANCEL)
            else:
                self._refuse(stream, 413, f"body over {self.config.limit_request_body} bytes")
            return
        if data:
            handler.feed_body(data, more=True)

    def _on_stream_ended(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        stream.remote_ended = True
        if stream.session is not None:
            # The client ended its half: as a TCP EOF would for HTTP/1.1.
            stream.session.connection_lost()
            self.finish_local(stream)
        elif isinstance(stream.handler, HTTPStream) and not stream.reset:
            stream.handler.feed_body(b"", more=False)
        self._maybe_forget(stream)

    def _on_reset(self, sid: int) -> None:
        self._spend()  # rapid reset (CVE-2023-44487): opening and cancelling is cheap for them
        stream = self.streams.get(sid)
        if stream is not None:
            stream.reset = True
            self._gone(stream)
            self._maybe_forget(stream)

    def _on_window_updated(self, sid: int) -> None:
        if sid:
            stream = self.streams.get(sid)
            if stream is not None and stream.outbox:
                self.flush(stream)
            return
        for stream in list(self.streams.values()):
            if stream.outbox:
                self.flush(stream)

    def _on_goaway(
        self, event: h2.events.ConnectionTerminated, before: h2.connection.ConnectionState
    ) -> None:
        """The client's GOAWAY: no new streams; with NO_ERROR, those in flight still finish.

        h2 takes any GOAWAY as the end of sending too (RFC 9113 §6.8 says otherwise), so its
        state machine is put back to where it was, and the connection closes once the streams
        are done, as after our own GOAWAY.
        """
        self._closing = True
        self._last_stream = self.conn.highest_inbound_stream_id
        if event.error_code != _ERROR_CODES.NO_ERROR or not self.streams:
            self._close()
            return
        self.conn.state_machine.state = before

    def _spend(self) -> None:
        if not self.flood.spend():
            logger.warning("closing HTTP/2 connection from %s: control frame flood", self.client)
            self.state.counters.bad_requests += 1
            self.conn.data_to_send()  # the flood's answers (PING ACKs...) are not sent
            self.conn.close_connection(_ERROR_CODES.ENHANCE_YOUR_CALM)
            self._write()
            self._close()

    def _protocol_error(self, exc: Exception) -> None:
        self.state.counters.bad_requests += 1
        logger.debug("HTTP/2 protocol error from %s: %s", self.client, exc)
        self._write()  # h2 has queued the GOAWAY with the error's code
        self._close()

    # Running streams ---------------------------------------------------------------------------

    def _run(self, stream: H2Stream, work: Any) -> None:
        self.state.active += 1
        self.state.counters.requests += 1
        task = self.loop.create_task(work)
        self.state.tasks.add(task)
        task.add_done_callback(lambda done: self._stream_done(stream, done))

    def _stream_done(self, stream: H2Stream, task: asyncio.Task[None]) -> None:
        self.state.active -= 1
        self.state.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("stream task failed", exc_info=task.exception())
        stream.task_done = True
        session = stream.session
        if session is not None and session.started and not session.closed:
            pass  # the closing handshake ends the stream: the client's Close or CLOSE_TIMEOUT
        elif not stream.reset and not stream.end_sent and not stream.outbox and not self._lost:
            stream.end = True  # the app returned without ending its side
            self.flush(stream)
        self._maybe_forget(stream)

    def _maybe_forget(self, stream: H2Stream) -> None:
        """Drop a stream whose app is done and whose answer has gone to h2 (or was reset)."""
        if not stream.task_done or not (stream.reset or stream.end_sent):
            return
        if self.streams.pop(stream.sid, None) is None:
            return
        self._release(stream)
        if not stream.reset and not stream.remote_ended:
            # RFC 9113 §8.1: a complete response ends the request's upload early.
            self._reset_stream(stream.sid, _ERROR_CODES.NO_ERROR)
        if not self.streams:
            if self._closing:
                self._close()
            else:
                self._arm_idle_timer(self.config.timeout_keep_alive)
        self._schedule_write()

    def _gone(self, stream: H2Stream) -> None:
        """The client can no longer hear this stream: its app is told, its window released."""
        self._release(stream)
        if stream.session is not None:
            stream.session.connection_lost()
        elif isinstance(stream.handler, HTTPStream):
            stream.handler.feed_disconnect()
        stream.outbox.clear()
        self._wake(stream)

    # Sending -------------------------------------------------------------------------------------

    def send_headers(self, stream: H2Stream, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        if stream.reset or self._lost:
            return
        try:
            self.conn.send_headers(stream.sid, headers, end_stream=end)
        except h2.exceptions.ProtocolError as exc:  # the stream closed under us
            logger.debug("HTTP/2 stream %d: headers not sent: %s", stream.sid, exc)
            stream.reset = True
            self._gone(stream)
            return
        if end:
            stream.end = stream.end_sent = True
            self._maybe_forget(stream)
        self._schedule_write()

    def send_data(self, stream: H2Stream, data: bytes, end: bool) -> None:
        if stream.reset or self._lost or stream.end:
            return
        stream.outbox += data
        stream.end = end
        self.flush(stream)

    def flush(self, stream: H2Stream) -> None:
        """Frame what the stream has queued, as far as the client's windows allow."""
        conn = self.conn
        sid = stream.sid
        outbox = stream.outbox
        try:
            while outbox:
                size = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if size <= 0:
                    break  # a WINDOW_UPDATE resumes us (_on_window_updated)
                chunk = bytes(outbox[:size])
                del outbox[:size]
                last = not outbox and stream.end and stream.trailers is None
                conn.send_data(sid, chunk, end_stream=last)
                if last:
                    stream.end_sent = True
            if not outbox and stream.end and not stream.end_sent:
                if stream.trailers is not None:
                    conn.send_headers(sid, stream.trailers, end_stream=True)
                else:
                    conn.end_stream(sid)
                stream.end_sent = True
        except h2.exceptions.ProtocolError as exc:
            logger.debug("HTTP/2 stream %d: data not sent: %s", sid, exc)
            stream.reset = True
            self._gone(stream)
        if not outbox:
            self._wake(stream)
        self._schedule_write()
        if stream.end_sent:
            self._maybe_forget(stream)

    async def drain(self, stream: H2Stream) -> None:
        """Wait until the stream's queue has gone to the socket and the socket is not full."""
        while (stream.outbox or self._write_paused) and not stream.reset and not self._lost:
            if stream.drained is None or stream.drained.done():
                stream.drained = self.loop.create_future()
            await stream.drained

    @staticmethod
    def _wake(stream: H2Stream) -> None:
        waiter = stream.drained  # drain() checks again what it waits for
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _release(self, stream: H2Stream) -> None:
        """Give back the connection window held by body the app will now never read."""
        if stream.unacked and not self._lost:
            size, stream.unacked = stream.unacked, 0
            self.conn.acknowledge_received_data(size, stream.sid)  # connection level if closed
            self._schedule_write()

    def acknowledge(self, stream: H2Stream) -> None:
        """The stream's app caught up: open its window again."""
        stream.paused = False
        if stream.unacked and not stream.reset and not self._lost:
            size, stream.unacked = stream.unacked, 0
            self.conn.acknowledge_received_data(size, stream.sid)
            self._schedule_write()

    def _refuse(self, stream: H2Stream, status: int, detail: str) -> None:
        """Answer a stream we will not serve with a short plain-text error."""
        body = f"{status} {detail}\n".encode()
        headers = [
            (b":status", STATUS[status]),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            *self.state.default_headers(),
        ]
        if stream.handler is None:
            stream.task_done = True  # no app runs for it
        self.send_headers(stream, headers, end=False)
        self.send_data(stream, body, end=True)

    def reset(self, stream: H2Stream, code: h2.errors.ErrorCodes) -> None:
        if not stream.reset:
            stream.reset = True
            self._reset_stream(stream.sid, code)
            self._gone(stream)
            self._maybe_forget(stream)

    def _reset_stream(self, sid: int, code: h2.errors.ErrorCodes) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):  # closed already
            self.conn.reset_stream(sid, code)
        self._schedule_write()

    def finish_local(self, stream: H2Stream) -> None:
        """End our half of a WebSocket stream once what is queued has gone."""
        if not stream.end and not stream.reset:
            stream.end = True
            self.flush(stream)

    def _schedule_write(self) -> None:
        # Streams answer from their own tasks: one write per loop iteration gathers them.
        if not self._write_scheduled:
            self._write_scheduled = True
            self.loop.call_soon(self._write)

    def _write(self) -> None:
        self._write_scheduled = False
        transport = self.transport
        if transport is None or self._lost:
            return
        data = self.conn.data_to_send()
        if data and not transport.is_closing():
            transport.write(data)

    # Server-driven closing ----------------------------------------------------------------------

    def shutdown(self, restart: bool = False) -> None:
        """GOAWAY: streams in flight finish, new ones are refused; close when none is left."""
        if self._closing or self.transport is None or self.transport.is_closing():
            return
        self._closing = True
        self._last_stream = self.conn.highest_inbound_stream_id
        frame = GoAwayFrame(0)
        frame.last_stream_id = self._last_stream
        frame.error_code = _ERROR_CODES.NO_ERROR
        self._write()
        self.transport.write(frame.serialize())
        for stream in list(self.streams.values()):
            if stream.session is not None:
                handler = stream.handler
                assert isinstance(handler, WebSocketStream)
                cast(H2WebSocketResponder, handler.responder).shutdown(restart)
        if not self.streams:
            self._close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.transport.is_closing():
            self._write()
            self.transport.close()

    def _arm_idle_timer(self, seconds: float) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(seconds, self._on_idle)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_idle(self) -> None:
        self._timer = None
        if not self.streams and self.transport is not None and not self.transport.is_closing():
            self.conn.close_connection(_ERROR_CODES.NO_ERROR)
            self._close()
