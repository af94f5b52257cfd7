"""WebSocket framing (wsproto) over any byte carrier, and the HTTP/1.1 handshake that starts it.

Two layers, split so that HTTP/2 (RFC 8441: the frames travel in the DATA frames of one
stream) reuses everything after the handshake:

- :class:`WebSocketSession` is that part, written against a :class:`WebSocketCarrier`, not a
  socket. It reassembles fragmented messages up to the size limit (1009 beyond it, checked
  while inflating too, so a small deflated frame cannot expand in memory), answers pings, pings
  an idle client (closing 1011 when it stops answering), answers a frame it cannot parse with
  the Close code wsproto names (1002, 1007, ...), and bounds what is queued for a client that
  does not read: past ``websocket_write_buffer`` for ``websocket_write_timeout`` the carrier is
  dropped (the app sees 1008). A Close frame that cannot be delivered within ``CLOSE_TIMEOUT``
  (the client stopped reading) does not keep the carrier open either.
- :class:`WebSocketHandler` is the HTTP/1.1
  :class:`~roomcast.gateway.streams.websocket.WebSocketResponder`:
  it answers the upgrade with a 101 (or denies it through h11, which owns the connection until
  then) and hands the socket, as a :class:`TransportCarrier`, to its session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Protocol

import h11
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong, TextMessage
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol
from wsproto.utilities import LocalProtocolError, generate_accept_token

from ..config import MIB, Config
from ..state import ServerState
from ..streams.http import ClientDisconnected
from ..streams.websocket import Closer, WebSocketStream

logger = logging.getLogger("roomcast.gateway.error")

CLOSE_TIMEOUT = 5.0  # seconds we wait for the client's half of the closing handshake


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate that inflates at most ``max_size + 1`` bytes per piece of a frame.

    wsproto inflates without a bound, so a frame of a few kilobytes could grow to gigabytes
    before the message size check saw it. Beyond the bound the frame fails with 1009.
    ``max_size`` 0 is Daphne's "no limit": no bound either.
    """

    def __init__(self, max_size: int) -> None:
        super().__init__()
        self.max_size = max_size

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        try:
            bound = self.max_size + 1 if self.max_size else 0  # zlib: 0 is no bound
            inflated = self._decompressor.decompress(bytes(data), bound)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if self._decompressor.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        return inflated


def negotiate_deflate(offers: str, max_size: int) -> tuple[PerMessageDeflate, bytes] | None:
    """The extension and the Sec-WebSocket-Extensions answer for the first usable offer."""
    for offer in offers.split(","):
        offer = offer.strip()
        if offer.split(";", 1)[0].strip() != PerMessageDeflate.name:
            continue
        deflate = BoundedDeflate(max_size)
        try:
            accepted = deflate.accept(offer)
        except ValueError:  # a malformed parameter: decline this offer
            continue
        if accepted is None or accepted is False:
            continue
        if isinstance(accepted, str) and accepted:
            return deflate, f"{deflate.name}; {accepted}".encode()
        return deflate, deflate.name.encode()
    return None


def accept_headers(
    config: Config,
    state: ServerState,
    offers: bytes,
    subprotocol: str | None,
    headers: list[tuple[bytes, bytes]],
) -> tuple[list[Extension], list[tuple[bytes, bytes]]]:
    """What accepting a handshake adds, whatever carries it: the extensions negotiated from the
    client's ``offers`` and the response headers (extensions, subprotocol, Date/Server unless
    the app set them, then the app's own)."""
    extensions: list[Extension] = []
    response: list[tuple[bytes, bytes]] = []
    if offers and config.websocket_per_message_deflate:
        negotiated = negotiate_deflate(offers.decode("latin-1"), config.websocket_max_message_size)
        if negotiated is not None:
            extensions.append(negotiated[0])
            response.append((b"sec-websocket-extensions", negotiated[1]))
    if subprotocol:
        response.append((b"sec-websocket-protocol", subprotocol.encode()))
    names = {name.lower() for name, _ in headers}
    response.extend(pair for pair in state.default_headers() if pair[0] not in names)
    response.extend(headers)
    return extensions, response


class WebSocketCarrier(Protocol):
    """The byte pipe a WebSocket session rides: an upgraded HTTP/1.1 socket or one HTTP/2 stream.

    The session needs no more than this, so HTTP/2 reuses it unchanged.
    """

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None:
        """Flush what is queued, then end (h1: ``transport.close()``; h2: END_STREAM)."""

    def abort(self) -> None:
        """Drop now (h1: ``transport.abort()``; h2: RST_STREAM)."""

    def buffered(self) -> int:
        """Bytes queued for the client, not yet taken by it."""

    async def drain(self) -> None:
        """Return when the client has taken enough (or the carrier is closing)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class TransportCarrier:
    """A :class:`WebSocketCarrier` over the socket of an upgraded HTTP/1.1 connection.

    ``drain`` is the connection's: it owns the transport's pause_writing/resume_writing.
    """

    __slots__ = ("_drain", "transport")

    def __init__(self, transport: asyncio.Transport, drain: Callable[[], Awaitable[None]]) -> None:
        self.transport = transport
        self._drain = drain

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size()

    async def drain(self) -> None:
        await self._drain()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()


class FrameSizeGuard:
    """Reads the frame headers in the incoming bytes and says when one declares a payload over
    ``limit`` (``--websocket-max-frame-size``, as autobahn's ``maxFramePayloadSize`` in
    Daphne: the payload on the wire, before inflating). wsproto hands out partial frames and
    exposes no frame header, so this is checked beside it, at the header, before the payload
    arrives. Cost: one small loop turn per frame."""

    __slots__ = ("_head", "_skip", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._skip = 0  # payload bytes of the current frame still to come
        self._head = b""  # a frame header split across reads

    def feed(self, data: bytes) -> bool:
        """False when a frame over the limit begins in ``data``."""
        if self._head:
            data, self._head = self._head + data, b""
        size = len(data)
        pos = 0
        skip = self._skip
        while True:
            if skip:
                if size - pos <= skip:
                    self._skip = skip - (size - pos)
                    return True
                pos += skip
                skip = 0
            self._skip = 0
            if size - pos < 2:
                self._head = data[pos:]
                return True
            second = data[pos + 1]
            length = second & 0x7F
            extended = 2 if length == 126 else 8 if length == 127 else 0
            head = 2 + extended + (4 if second & 0x80 else 0)  # + the masking key
            if size - pos < head:
                self._head = data[pos:]
                return True
            if extended:
                length = int.from_bytes(data[pos + 2 : pos + 2 + extended], "big")
            if length > self.limit:
                return False
            pos += head
            skip = length


class WebSocketSession:
    """Everything after the handshake, over a carrier: frames, limits, keep-alive, closing."""

    def __init__(
        self, carrier: WebSocketCarrier, config: Config, state: ServerState, target: str
    ) -> None:
        self.carrier = carrier
        self.config = config
        self.state = state
        self.target = target  # names the WebSocket in the log
        self.stream: WebSocketStream | None = None  # set by whoever creates it
        self.ws: Connection | None = None  # None until start()
        self._pending = b""  # bytes that arrived before the handshake completed
        self._parts: list[bytes | str] = []
        self._size = 0
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_deadline: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.paused = False  # reading paused: the app is behind
        # Daphne's 0 for "no limit": the limits, None when there is none.
        self.max_message = config.websocket_max_message_size or None
        frame_limit = config.websocket_max_frame_size
        self._frames = FrameSizeGuard(frame_limit) if frame_limit else None

    @property
    def started(self) -> bool:
        return self.ws is not None

    def start(self, extensions: list[Extension]) -> None:
        """The handshake is done (its answer written): frames flow from here on."""
        if self.ws is not None:
            raise RuntimeError("WebSocket session started twice")
        self.ws = Connection(ConnectionType.SERVER, extensions)
        self.state.counters.websockets += 1
        self._arm_ping()
        if self._pending:
            pending, self._pending = self._pending, b""
            self.data_received(pending)

    # Frames -------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        if ws is None:
            limit = self.max_message or self.config.websocket_max_frame_size or MIB
            if len(self._pending) + len(data) > limit:
                self._abort()  # a client streaming frames before the handshake
                return
            self._pending += data
            return
        if ws.state is ConnectionState.CLOSED or self.closed:
            return
        if self._frames is not None and not self._frames.feed(data):
            # No reading on past a frame we refuse: our Close goes out, then the connection.
            self.close(1009, "frame too big")
            self._gone(1009, "frame too big", by="server")
            self._finish()
            return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, Message):
                self._on_message(event)
            elif isinstance(event, Ping):
                self._write(event.response())
            elif isinstance(event, Pong):
                self._on_pong()
            elif isinstance(event, CloseConnection):
                self._on_close(event)
                return

    def _on_message(self, event: Message[Any]) -> None:
        if self.ws is None or self.ws.state is not ConnectionState.OPEN:
            return  # we sent our Close (1009 perhaps): what follows is discarded
        part = event.data
        # The limit is in bytes; for text only non-ASCII needs encoding to count them.
        ascii_or_bytes = isinstance(part, bytes | bytearray) or part.isascii()
        self._size += len(part) if ascii_or_bytes else len(part.encode("utf-8"))
        if self.max_message is not None and self._size > self.max_message:
            self._parts.clear()
            self._size = 0
            self.close(1009, "message too big")
            self._gone(1009, by="server")
            return
        self._parts.append(part)
        if not event.message_finished:
            return
        parts, self._parts, self._size = self._parts, [], 0
        if isinstance(event, TextMessage):
            message: str | bytes = parts[0] if len(parts) == 1 else "".join(parts)  # type: ignore[arg-type]
        else:
            assert isinstance(event, BytesMessage)
            message = parts[0] if len(parts) == 1 else b"".join(parts)  # type: ignore[arg-type]
        if self.stream is not None:
            self.stream.feed_message(message)

    def _on_close(self, event: CloseConnection) -> None:
        ws = self.ws
        assert ws is not None
        # REMOTE_CLOSING: the client's Close, which we echo. OPEN: wsproto could not parse a
        # frame (bad UTF-8, protocol error, too big) and names the code we must close with.
        by: Closer = "server" if ws.state is ConnectionState.OPEN else "client"
        if ws.state in (ConnectionState.REMOTE_CLOSING, ConnectionState.OPEN):
            self._write(event.response())
        self._gone(event.code, event.reason or "", by=by)
        self._finish()

    def _gone(self, code: int, reason: str = "", by: Closer = "client") -> None:
        if self.stream is not None:
            self.stream.feed_disconnect(code, reason, by)

    def _write(self, event: Any) -> None:
        ws = self.ws
        if ws is None or self.carrier.is_closing():
            return
        with contextlib.suppress(LocalProtocolError):  # closing already: nothing more may go
            self.carrier.write(ws.send(event))

    def _finish(self) -> None:
        self.closed = True
        self._cancel_timers()
        carrier = self.carrier
        carrier.close()
        if carrier.buffered():
            # close() waits for the buffer to flush, which a client that does not read never
            # lets happen: drop the carrier if it has not gone by then.
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(CLOSE_TIMEOUT, carrier.abort)

    def _abort(self) -> None:
        self.closed = True
        self._cancel_timers()
        self.carrier.abort()

    # What the responder delegates ---------------------------------------------------------------

    async def send_message(self, data: str | bytes) -> None:
        ws, carrier = self.ws, self.carrier
        if ws is None or ws.state is not ConnectionState.OPEN or carrier.is_closing():
            raise ClientDisconnected("WebSocket is closed")
        carrier.write(
            ws.send(TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data))
        )
        if carrier.buffered() > self.config.websocket_write_buffer:
            try:
                await asyncio.wait_for(carrier.drain(), self.config.websocket_write_timeout)
            except TimeoutError:
                if not self.closed:
                    self.state.counters.slow_clients_closed += 1
                    logger.warning(
                        "closing WebSocket %s: the client read too little for %g s "
                        "with %d bytes queued",
                        self.target,
                        self.config.websocket_write_timeout,
                        carrier.buffered(),
                    )
                    self._gone(1008, "client too slow", by="server")
                    self._abort()  # no Close frame: it could not get through the full buffer
                raise ClientDisconnected("WebSocket client too slow: closed") from None

    def close(self, code: int, reason: str) -> None:
        ws = self.ws
        if ws is None:  # no handshake yet (or a denial cut short): drop the carrier
            if not self.closed:
                self._abort()
            return
        if ws.state is ConnectionState.OPEN:
            self._write(CloseConnection(code=code, reason=reason or None))
            # No answering Close in time (or ours is stuck behind a client that does not read):
            # drop the carrier.
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(CLOSE_TIMEOUT, self._abort)
        elif ws.state is not ConnectionState.CLOSED:
            self._finish()

    def shutdown(self, restart: bool) -> None:
        """Server going away: 1012 for a restart, 1001 otherwise.

        Only after start(): before it the handshake's owner answers (503 on HTTP/1.1).
        """
        if self.ws is None:
            return
        code = 1012 if restart else 1001
        self.close(code, "server restart" if restart else "server shutting down")
        self._gone(code, by="server")

    def connection_lost(self) -> None:
        self.closed = True
        self._cancel_timers()
        self._gone(1006)

    def pause_reading(self) -> None:
        if not self.paused:
            self.paused = True
            if not self.carrier.is_closing():
                self.carrier.pause_reading()

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if not self.carrier.is_closing():
                self.carrier.resume_reading()

    # Keep-alive -------------------------------------------------------------------------------

    def _arm_ping(self) -> None:
        if self.config.ping_interval > 0:
            loop = asyncio.get_running_loop()
            self._ping_timer = loop.call_later(self.config.ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        if self.closed:
            return
        self._write(Ping(payload=b"roomcast"))
        if self._pong_deadline is None and self.config.ping_timeout > 0:
            loop = asyncio.get_running_loop()
            self._pong_deadline = loop.call_later(self.config.ping_timeout, self._no_pong)
        self._arm_ping()

    def _on_pong(self) -> None:
        if self._pong_deadline is not None:
            self._pong_deadline.cancel()
            self._pong_deadline = None

    def _no_pong(self) -> None:
        self._pong_deadline = None
        logger.info("closing WebSocket %s: no pong within the ping timeout", self.target)
        self._gone(1011, "keepalive ping timeout", by="server")
        self.close(1011, "keepalive ping timeout")
        self._finish()

    def _cancel_timers(self) -> None:
        for timer in (self._ping_timer, self._pong_deadline, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_deadline = self._close_timer = None


class WebSocketHandler:
    """The :class:`WebSocketResponder` of an upgraded HTTP/1.1 connection: the handshake.

    h11 owns the connection until the 101 goes out (a denial is an ordinary response through
    it); from then on the socket is the :class:`WebSocketSession`'s.
    """

    accept_status = 101  # what the access log shows for an accepted handshake

    def __init__(
        self,
        transport: asyncio.Transport,
        config: Config,
        state: ServerState,
        request: h11.Request,
        h11_conn: h11.Connection,
        drain: Callable[[], Awaitable[None]],
    ) -> None:
        self.transport = transport
        self.config = config
        self.state = state
        self.request = request
        self.h11 = h11_conn
        target = request.target.decode("latin-1")
        self.session = WebSocketSession(TransportCarrier(transport, drain), config, state, target)

    @property
    def stream(self) -> WebSocketStream | None:
        return self.session.stream

    @stream.setter
    def stream(self, stream: WebSocketStream | None) -> None:
        self.session.stream = stream

    @property
    def paused(self) -> bool:
        return self.session.paused

    def accept(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> None:
        session = self.session
        if session.closed or session.started or self.transport.is_closing():
            raise ClientDisconnected("WebSocket closed before the handshake completed")
        key = _header(self.request, b"sec-websocket-key") or b""
        response = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", generate_accept_token(key)),
        ]
        offers = b", ".join(
            value for name, value in self.request.headers if name == b"sec-websocket-extensions"
        )
        extensions, answer = accept_headers(self.config, self.state, offers, subprotocol, headers)
        response.extend(answer)
        head = [b"HTTP/1.1 101 Switching Protocols\r\n"]
        head.extend(b"%s: %s\r\n" % (name, value) for name, value in response)
        head.append(b"\r\n")
        # Bound what the transport queues for a client that does not read: writes pause past
        # the limit, and ``send_message`` waits (up to the write timeout) for it to drain.
        limit = self.config.websocket_write_buffer
        self.transport.set_write_buffer_limits(high=limit, low=limit // 4)
        self.transport.write(b"".join(head))
        session.start(extensions)

    def deny(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, end: bool) -> None:
        """An HTTP response instead of the upgrade (h11 still owns the connection)."""
        try:
            data = b""
            if status:
                response = h11.Response(status_code=status, headers=headers, reason=_reason(status))
                data += self.h11.send(response) or b""
            if body:
                data += self.h11.send(h11.Data(data=body)) or b""
            if end:
                data += self.h11.send(h11.EndOfMessage()) or b""
            self.transport.write(data)
        except h11.LocalProtocolError as exc:
            logger.error("WebSocket denial response refused: %s", exc)
            end = True
        if end:
            self.session.closed = True  # a later close() must not cut the response short
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.session.data_received(data)

    async def send_message(self, data: str | bytes) -> None:
        await self.session.send_message(data)

    def close(self, code: int, reason: str) -> None:
        self.session.close(code, reason)

    def shutdown(self, restart: bool) -> None:
        """Server going away: 1012 for a restart, 1001 otherwise (503 before the handshake)."""
        if self.session.started:
            self.session.shutdown(restart)
            return
        if self.h11.our_state is h11.SEND_RESPONSE:  # else the app's denial is under way
            if self.stream is not None:  # the app's accept now fails; it sees the disconnect
                self.stream.feed_disconnect(1012 if restart else 1001, by="server")
            self.deny(503, [(b"content-length", b"0"), (b"connection", b"close")], b"", True)

    def connection_lost(self) -> None:
        self.session.connection_lost()

    def pause_reading(self) -> None:
        self.session.pause_reading()

    def resume_reading(self) -> None:
        self.session.resume_reading()


def _header(request: h11.Request, name: bytes) -> bytes | None:
    for key, value in request.headers:
        if key == name:
            return bytes(value)
    return None


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
