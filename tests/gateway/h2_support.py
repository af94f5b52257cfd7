"""HTTP/2 client helpers for the gateway tests: h2 as a client over a real asyncio socket.

``H2Client`` connects (cleartext prior knowledge, or TLS with ALPN ``h2``), keeps a log of
every frame the server sent (``frames``, parsed by hyperframe) and, unless told not to, runs
them through an h2 client state machine that tracks each stream (``H2Stream``: headers, body,
trailers, how it ended). Raw bytes can be written beside h2 (``send_raw``) for input h2 would
refuse to produce; the server's answer is then read from the frame log. A failure of the
client's own code while reading is raised again by ``aclose``.

GOAWAY frames are taken out of the byte stream before h2 sees them (and logged): h2's state
machine refuses every frame after a GOAWAY, but a graceful shutdown still finishes the streams
it names. Every wait is bounded by ``WAIT`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from roomcast.gateway.config import Receive, Scope, Send

from tests.gateway import apps

T = TypeVar("T")

WAIT = 5.0  # every wait is bounded by this; reached only when something broke
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
BIG_WINDOW = 1 << 30  # what the client opens its connection window to

# RFC 9113 §7 error codes, as plain ints for readable assertions.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

# Frame types.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20


# Raw frames -----------------------------------------------------------------------------------


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame's bytes, whatever its content: for frames hyperframe would refuse to build."""
    header = len(payload).to_bytes(3, "big") + bytes((kind, flags))
    return header + (stream_id & 0x7FFFFFFF).to_bytes(4, "big") + payload


def client_preface(settings: dict[int, int] | None = None) -> bytes:
    """The connection preface and a SETTINGS frame."""
    frame = SettingsFrame(0)
    frame.settings = dict(settings or {})
    return PREFACE + frame.serialize()


def ping(opaque: bytes = b"\0" * 8, ack: bool = False) -> bytes:
    frame = PingFrame(0)
    frame.opaque_data = opaque
    if ack:
        frame.flags.add("ACK")
    return frame.serialize()


def rst_stream(stream_id: int, code: int = CANCEL) -> bytes:
    frame = RstStreamFrame(stream_id)
    frame.error_code = code
    return frame.serialize()


def split_frames(buffer: bytes) -> tuple[list[tuple[Frame, bytes]], bytes]:
    """The complete frames at the start of ``buffer`` (each with its bytes), and the rest."""
    frames: list[tuple[Frame, bytes]] = []
    view = memoryview(buffer)
    at = 0
    while len(view) - at >= 9:
        length = int.from_bytes(view[at : at + 3], "big")
        if len(view) - at < 9 + length:
            break
        header, body = view[at : at + 9], view[at + 9 : at + 9 + length]
        try:
            frame, _ = Frame.parse_frame_header(header, strict=False)
            frame.parse_body(body)
        except HyperframeError:
            frame = ExtensionFrame(header[3], int.from_bytes(header[5:9], "big") & 0x7FFFFFFF)
            frame.flag_byte = header[4]
            frame.body = bytes(body)
        frames.append((frame, bytes(view[at : at + 9 + length])))
        at += 9 + length
    return frames, bytes(view[at:])


def header_block_frames(
    stream_id: int, block: bytes, *, end_stream: bool = False, max_frame: int = 16384
) -> bytes:
    """An encoded header block as HEADERS and as many CONTINUATION frames as it takes."""
    pieces = [block[at : at + max_frame] for at in range(0, len(block), max_frame)] or [b""]
    frames = []
    for index, piece in enumerate(pieces):
        flags = END_HEADERS if index == len(pieces) - 1 else 0
        if index == 0:
            frames.append(
                raw_frame(HEADERS, flags | (END_STREAM if end_stream else 0), stream_id, piece)
            )
        else:
            frames.append(raw_frame(CONTINUATION, flags, stream_id, piece))
    return b"".join(frames)


def parse_frames(buffer: bytes) -> tuple[list[Frame], bytes]:
    """The complete frames at the start of ``buffer``, and what is left of it."""
    frames, rest = split_frames(buffer)
    return [frame for frame, _ in frames], rest


# Clients --------------------------------------------------------------------------------------


async def wait_on(changed: asyncio.Event, predicate: Callable[[], bool], timeout: float) -> None:
    """Until ``predicate()`` holds, checked each time ``changed`` is set; bounded by ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            changed.clear()
            await changed.wait()


@dataclass
class H2Stream:
    """What the client saw of one stream."""

    sid: int
    ack: bool = True  # acknowledge DATA as it arrives (False: the stream's window fills up)
    headers: list[tuple[bytes, bytes]] | None = None
    data: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] | None = None
    received: int = 0  # flow-controlled bytes of DATA
    unacked: int = 0  # what an ack=False stream held back
    ended: bool = False  # the server sent END_STREAM
    reset_code: int | None = None  # the server sent RST_STREAM
    lost: bool = False  # the connection closed before the stream ended
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    on_data: Callable[[bytes], None] | None = None  # takes the DATA instead of ``data``

    @property
    def status(self) -> int | None:
        for name, value in self.headers or ():
            if name == b":status":
                return int(value)
        return None

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers or () if key == name), None)

    @property
    def done(self) -> bool:
        return self.ended or self.reset_code is not None or self.lost

    async def wait(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        await wait_on(self.changed, predicate, timeout)

    async def response(self, timeout: float = WAIT) -> int:
        """The response's status, once its HEADERS arrived; asserts that they did."""
        await self.wait(lambda: self.headers is not None or self.done, timeout)
        assert self.headers is not None, f"stream {self.sid}: no response, {self.describe()}"
        status = self.status
        assert status is not None
        return status

    def describe(self) -> str:
        return f"ended {self.ended}, reset {self.reset_code}, lost {self.lost}"

    async def finished(self, timeout: float = WAIT) -> H2Stream:
        """Once the stream ended, was reset or lost its connection."""
        await self.wait(lambda: self.done, timeout)
        return self

    async def body(self, timeout: float = WAIT) -> bytes:
        """The whole response body; asserts that the stream ended normally."""
        await self.finished(timeout)
        assert self.ended, f"stream {self.sid}: {self.describe()}"
        return bytes(self.data)


class H2Client:
    """One HTTP/2 connection to the server, h2 on the client side."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        authority: str,
        scheme: str,
        *,
        use_h2: bool = True,
        settings: dict[int, int] | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.authority = authority
        self.scheme = scheme
        self.use_h2 = use_h2
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values=dict(settings or {})
        )
        self.frames: list[Frame] = []  # every frame the server sent, GOAWAY included
        self.events: list[h2.events.Event] = []
        self.streams: dict[int, H2Stream] = {}
        self.h2_error: Exception | None = None  # h2 refused the server's frames (raw tests)
        self.error: Exception | None = None  # the client's own failure: raised by aclose()
        self.closed = False
        self.received_bytes = 0
        self.changed = asyncio.Event()
        self._buffer = b""
        self._pings = 0
        self._reader_task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        settings: dict[int, int] | None = None,
        use_h2: bool = True,
        preface: bool = True,
        window: int = BIG_WINDOW,
    ) -> Self:
        """Connect; with ``preface`` send the preface and SETTINGS (h2's, or a raw empty one)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls, limit=1 << 20), WAIT
        )
        if tls is not None:
            ssl_object = writer.get_extra_info("ssl_object")
            assert ssl_object.selected_alpn_protocol() == "h2", "ALPN did not pick h2"
        client = cls(
            reader,
            writer,
            f"{host}:{port}",
            "https" if tls else "http",
            use_h2=use_h2,
            settings=settings,
        )
        if preface:
            if use_h2:
                client.conn.initiate_connection()
                if window:
                    client.conn.increment_flow_control_window(window)
                client.flush()
            else:
                client.send_raw(client_preface(settings))
        client._reader_task = asyncio.create_task(client._read())
        return client

    @classmethod
    async def upgrade(
        cls, host: str, port: int, path: str = "/", *, pipeline: bool = False
    ) -> tuple[Self, bytes]:
        """HTTP/1.1 ``Upgrade: h2c`` for ``GET path``: the client (its request is stream 1)
        and the head of the server's HTTP/1.1 answer. With ``pipeline`` the preface goes out
        with the request, before the 101."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), WAIT)
        client = cls(reader, writer, f"{host}:{port}", "http")
        settings = client.conn.initiate_upgrade_connection()
        assert settings is not None
        preface = client.conn.data_to_send()
        request = (
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            ).encode()
            + b"HTTP2-Settings: "
            + settings
            + b"\r\n\r\n"
        )
        writer.write(request + (preface if pipeline else b""))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        client.streams[1] = H2Stream(1)
        if head.startswith(b"HTTP/1.1 101 "):
            if not pipeline:
                writer.write(preface)
            client.conn.increment_flow_control_window(BIG_WINDOW)
            client.flush()
        client._reader_task = asyncio.create_task(client._read())
        return client, head

    async def aclose(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), WAIT)
        if self.error is not None:
            raise AssertionError(f"the HTTP/2 client failed: {self.error!r}") from self.error

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # Waiting --------------------------------------------------------------------------------

    async def wait(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        """Until ``predicate()`` holds; checked whenever something arrived."""
        await wait_on(self.changed, predicate, timeout)

    async def wait_closed(self, timeout: float = WAIT) -> None:
        """Until the server closed the connection."""
        await self.wait(lambda: self.closed, timeout)

    async def wait_frame(self, predicate: Callable[[Frame], bool], timeout: float = WAIT) -> Frame:
        """The first frame received (so far or later) for which ``predicate`` holds."""
        found: list[Frame] = []

        def seen() -> bool:
            found[:] = [frame for frame in self.frames if predicate(frame)][:1]
            return bool(found) or self.closed

        await self.wait(seen, timeout)
        assert found, f"the connection closed first; frames: {self.describe()}"
        return found[0]

    async def wait_goaway(self, timeout: float = WAIT) -> GoAwayFrame:
        frame = await self.wait_frame(lambda f: isinstance(f, GoAwayFrame), timeout)
        assert isinstance(frame, GoAwayFrame)
        return frame

    async def goaway_and_close(self, timeout: float = WAIT) -> GoAwayFrame:
        """The server's GOAWAY, once it has closed the connection too."""
        await self.wait_closed(timeout)
        goaways = self.goaways
        assert goaways, f"closed without GOAWAY; frames: {self.describe()}"
        return goaways[0]

    @property
    def goaways(self) -> list[GoAwayFrame]:
        return [frame for frame in self.frames if isinstance(frame, GoAwayFrame)]

    @property
    def remote_settings(self) -> dict[int, int]:
        """The settings the server sent (and h2 took), by code."""
        found: dict[int, int] = {}
        for event in self.events:
            if isinstance(event, h2.events.RemoteSettingsChanged):
                for code, setting in event.changed_settings.items():
                    found[int(code)] = setting.new_value
        return found

    def frames_of(self, kind: type[Frame]) -> list[Frame]:
        return [frame for frame in self.frames if isinstance(frame, kind)]

    def describe(self) -> str:
        """The frames received, for assertion messages (long lists shortened)."""
        names = [repr(frame) for frame in self.frames]
        if len(names) > 20:
            names = [*names[:10], f"... {len(names) - 20} more ...", *names[-10:]]
        return f"closed={self.closed} h2_error={self.h2_error!r} frames=[{', '.join(names)}]"

    # Sending --------------------------------------------------------------------------------

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.send_raw(data)

    def send_raw(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(self.writer.drain(), WAIT)

    def request_headers(
        self, method: str, path: str, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> list[tuple[bytes, bytes]]:
        return [
            (b":method", method.encode()),
            (b":scheme", self.scheme.encode()),
            (b":authority", self.authority.encode()),
            (b":path", path.encode()),
            *headers,
        ]

    def open_stream(
        self, headers: Sequence[tuple[bytes, bytes]], *, end: bool = False, ack: bool = True
    ) -> H2Stream:
        sid = self.conn.get_next_available_stream_id()
        stream = self.streams[sid] = H2Stream(sid, ack=ack)
        self.conn.send_headers(sid, list(headers), end_stream=end)
        self.flush()
        return stream

    def upload(
        self, method: str, path: str, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> H2Stream:
        """Open a stream whose body follows (``send_body``)."""
        return self.open_stream(self.request_headers(method, path, headers), end=False)

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Sequence[tuple[bytes, bytes]] = (),
        *,
        ack: bool = True,
    ) -> H2Stream:
        """Open a stream; a small ``body`` (within the stream window) is sent with it."""
        stream = self.open_stream(
            self.request_headers(method, path, headers), end=not body, ack=ack
        )
        if body:
            self.send_data(stream.sid, body, end=True)
        return stream

    def send_data(self, sid: int, data: bytes, end: bool = False) -> None:
        """``data`` on stream ``sid`` at once (it must fit the windows)."""
        self.conn.send_data(sid, data, end_stream=end)
        self.flush()

    def reset(self, sid: int, code: int = CANCEL) -> None:
        self.conn.reset_stream(sid, code)
        self.flush()

    async def send_body(self, sid: int, data: bytes, end: bool = True) -> int:
        """Send ``data`` on stream ``sid`` as the server's windows allow; the bytes sent.

        Returns early (with fewer bytes) when the stream was reset or the connection closed.
        """
        sent = 0
        view = memoryview(data)
        while sent < len(data):
            stream = self.streams.get(sid)
            if self.closed or (stream is not None and stream.done):
                return sent
            try:
                window = self.conn.local_flow_control_window(sid)
            except h2.exceptions.StreamClosedError:
                return sent
            size = min(window, self.conn.max_outbound_frame_size, len(data) - sent)
            if size <= 0:
                self.changed.clear()
                await asyncio.wait_for(self.changed.wait(), WAIT)
                continue
            try:
                self.conn.send_data(sid, bytes(view[sent : sent + size]))
            except h2.exceptions.StreamClosedError:
                return sent
            sent += size
            self.flush()
            self.changed.set()  # waiters on the windows look again
            await self.drain()
        if end and not self.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.conn.end_stream(sid)
                self.flush()
        return sent

    def window(self, sid: int) -> int:
        """How much more the client may send on stream ``sid`` (h2's view of the window)."""
        return self.conn.local_flow_control_window(sid)

    def stream_window(self, sid: int) -> int:
        """The stream's own window, whatever the connection's."""
        return int(self.conn.streams[sid].outbound_flow_control_window)

    def acknowledge(self, stream: H2Stream) -> None:
        """Open an ``ack=False`` stream's window by what it held back, and ack from now on."""
        stream.ack = True
        if stream.unacked:
            size, stream.unacked = stream.unacked, 0
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.conn.acknowledge_received_data(size, stream.sid)
            self.flush()

    def ping(self, opaque: bytes = b"12345678") -> None:
        self.conn.ping(opaque)
        self.flush()

    async def ping_answered(self, timeout: float = WAIT) -> None:
        """A PING sent and its ACK received: the server has handled all that was sent before.

        AssertionError if the connection closes first."""
        self._pings += 1
        opaque = self._pings.to_bytes(8, "big")
        self.ping(opaque)

        def answer(frame: Frame) -> bool:
            return (
                isinstance(frame, PingFrame)
                and "ACK" in frame.flags
                and frame.opaque_data == opaque
            )

        await self.wait_frame(answer, timeout)

    # Receiving ------------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(1 << 20)
                if not data:
                    break
                self._received(data)
        except (ConnectionError, OSError):
            pass
        except Exception as exc:  # the client's own failure: raised again by aclose()
            self.error = exc
        finally:
            self.closed = True
            for stream in self.streams.values():
                if not stream.done:
                    stream.lost = True
                stream.changed.set()
            self.changed.set()

    def _received(self, data: bytes) -> None:
        self.received_bytes += len(data)
        frames, self._buffer = split_frames(self._buffer + data)
        self.frames += [frame for frame, _ in frames]
        if self.use_h2 and self.h2_error is None:
            # h2 gets every frame but GOAWAY.
            passed = b"".join(raw for frame, raw in frames if not isinstance(frame, GoAwayFrame))
            try:
                events = self.conn.receive_data(passed) if passed else []
            except h2.exceptions.ProtocolError as exc:
                self.h2_error = exc
                events = []
            for event in events:
                self._event(event)
            with contextlib.suppress(Exception):
                self.flush()
        self.changed.set()

    def _event(self, event: h2.events.Event) -> None:
        self.events.append(event)
        sid = getattr(event, "stream_id", None)
        stream = self.streams.get(sid) if sid else None
        if isinstance(event, h2.events.DataReceived):
            size = event.flow_controlled_length or 0
            if stream is not None and not stream.ack:
                stream.unacked += size
            elif size:
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.conn.acknowledge_received_data(size, event.stream_id)
        if stream is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            stream.headers = list(event.headers)
        elif isinstance(event, h2.events.InformationalResponseReceived):
            pass
        elif isinstance(event, h2.events.TrailersReceived):
            stream.trailers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            stream.received += event.flow_controlled_length or 0
            if stream.on_data is not None:
                stream.on_data(event.data or b"")
            else:
                stream.data += event.data or b""
        elif isinstance(event, h2.events.StreamEnded):
            stream.ended = True
        elif isinstance(event, h2.events.StreamReset) and not stream.ended:
            # (after END_STREAM, a RST_STREAM(NO_ERROR) only ends the client's half)
            stream.reset_code = int(event.error_code)
        stream.changed.set()


@contextlib.asynccontextmanager
async def background(work: Coroutine[Any, Any, T]) -> AsyncIterator[asyncio.Task[T]]:
    """Run ``work`` in a task for the block; cancelled and awaited at its end, whatever
    happened (a task left failed and unawaited would be reported at garbage collection)."""
    task = asyncio.create_task(work)
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def tls_client_context(cafile: str, alpn: Sequence[str] = ("h2",)) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(list(alpn))
    return context


class Gate:
    """An app that reads the body, then holds the request (every path, or only ``path``)
    until ``release`` is set, then answers ``body``. ``started`` is set once one is held."""

    def __init__(self, body: bytes = b"ok", path: str | None = None) -> None:
        self.body = body
        self.path = path
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await apps.drain_body(receive)
        if self.path is None or scope["path"] == self.path:
            self.started.set()
            await asyncio.wait_for(self.release.wait(), WAIT)
        await apps.respond(send, self.body)


async def get_200(host: str, port: int, path: str = "/") -> None:
    """A fresh HTTP/2 connection still gets a 200: the server is fine."""
    async with await H2Client.connect(host, port) as client:
        stream = client.request("GET", path)
        await stream.finished()
        assert stream.status == 200, (stream.headers, client.describe())
        assert stream.ended
