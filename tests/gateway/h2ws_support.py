"""A small HTTP/2 client (h2 over asyncio streams) that opens WebSockets by RFC 8441.

``H2Client`` speaks prior-knowledge cleartext HTTP/2 to the gateway. It acknowledges received
DATA as it arrives unless a stream was opened with ``ack=False`` (then only the connection
window is kept open, so the stream's window stays shut and other streams keep flowing).

GOAWAY frames are taken out of the byte stream before h2 sees them and recorded in
``goaways``: h2's state machine refuses every frame after a GOAWAY, but a graceful server
shutdown still finishes (and closes) the streams it named.

``H2WebSocket`` frames and parses WebSocket messages for one stream with wsproto's
post-handshake ``Connection`` (client side: masked frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from wsproto.connection import Connection, ConnectionType
from wsproto.events import Event
from wsproto.extensions import Extension, PerMessageDeflate

WAIT = 5.0  # every wait in these tests is bounded by this; reached only when something broke
CONNECTION_WINDOW = 1 << 30  # what the client opens its connection window to at once
GOAWAY = 0x7


@dataclass
class GoAway:
    last_stream_id: int
    error_code: int


@dataclass
class Ended:
    """The server ended its half of the stream (END_STREAM)."""


@dataclass
class Reset:
    """The server reset the stream (RST_STREAM)."""

    code: int


@dataclass
class Closed:
    """The connection closed under the stream."""


Outcome = Ended | Reset | Closed


@dataclass
class H2Stream:
    sid: int
    ack: bool = True
    headers: list[tuple[bytes, bytes]] | None = None
    data: bytearray = field(default_factory=bytearray)
    received: int = 0  # flow-controlled bytes of DATA received
    unacked: int = 0  # flow-controlled bytes the client held back (ack=False)
    outcome: Outcome | None = None  # the first of END_STREAM, RST_STREAM, connection lost
    reset_code: int | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    on_data: Callable[[bytes], None] | None = None

    @property
    def status(self) -> int | None:
        for name, value in self.headers or ():
            if name == b":status":
                return int(value)
        return None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers or ():
            if key == name:
                return value
        return None

    def _notify(self) -> None:
        self.changed.set()

    async def wait(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        """Until ``predicate()`` holds (checked whenever something arrives on the stream)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def response(self, timeout: float = WAIT) -> int:
        """The response's status, once its HEADERS arrived (or AssertionError)."""
        await self.wait(lambda: self.headers is not None or self.outcome is not None, timeout)
        assert self.headers is not None, f"stream {self.sid}: no response, {self.outcome}"
        status = self.status
        assert status is not None
        return status

    async def body(self, timeout: float = WAIT) -> bytes:
        """The whole response body (waits for END_STREAM)."""
        await self.wait(lambda: self.outcome is not None, timeout)
        assert isinstance(self.outcome, Ended), f"stream {self.sid}: {self.outcome}"
        return bytes(self.data)


class H2Client:
    """One prior-knowledge HTTP/2 connection to 127.0.0.1:``port``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        authority: str,
        settings: dict[h2.settings.SettingCodes, int],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.authority = authority
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.streams: dict[int, H2Stream] = {}
        self.goaways: list[GoAway] = []
        self.remote_settings: dict[int, int] = {}
        self.closed = False
        self.error: Exception | None = None
        self.changed = asyncio.Event()
        self._buffer = b""
        self._pings = 0
        self.pongs: set[bytes] = set()
        self._reader_task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls, host: str, port: int, *, settings: dict[h2.settings.SettingCodes, int] | None = None
    ) -> H2Client:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), WAIT)
        client = cls(reader, writer, f"{host}:{port}", settings or {})
        client.conn.initiate_connection()
        client.conn.increment_flow_control_window(CONNECTION_WINDOW)
        client.flush()
        client._reader_task = asyncio.create_task(client._read())
        # The server's SETTINGS (ENABLE_CONNECT_PROTOCOL) before any extended CONNECT.
        await client.wait(lambda: bool(client.remote_settings) or client.closed)
        assert client.remote_settings, "no SETTINGS from the server"
        return client

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

    async def __aenter__(self) -> H2Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # Waiting ---------------------------------------------------------------------------------

    async def wait(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    # Sending ---------------------------------------------------------------------------------

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def open_stream(
        self, headers: Sequence[tuple[bytes, bytes]], *, end: bool = False, ack: bool = True
    ) -> H2Stream:
        sid = self.conn.get_next_available_stream_id()
        stream = self.streams[sid] = H2Stream(sid, ack=ack)
        self.conn.send_headers(sid, list(headers), end_stream=end)
        self.flush()
        return stream

    def request(self, method: str, path: str, body: bytes = b"") -> H2Stream:
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", self.authority.encode()),
            (b":path", path.encode()),
        ]
        stream = self.open_stream(headers, end=not body)
        if body:
            self.send_data(stream.sid, body, end=True)
        return stream

    def send_data(self, sid: int, data: bytes, end: bool = False) -> None:
        self.conn.send_data(sid, data, end_stream=end)
        self.flush()

    def end_stream(self, sid: int) -> None:
        self.conn.end_stream(sid)
        self.flush()

    async def ping(self) -> None:
        """A PING answered: the server has handled everything we sent before it."""
        self._pings += 1
        payload = self._pings.to_bytes(8, "big")
        self.conn.ping(payload)
        self.flush()
        await self.wait(lambda: payload in self.pongs or self.closed)
        assert payload in self.pongs, "the connection closed before the PING was answered"

    def reset(self, sid: int, code: int) -> None:
        self.conn.reset_stream(sid, code)
        self.flush()

    async def websocket(
        self,
        path: str,
        *,
        protocols: Sequence[str] = (),
        deflate: bool = False,
        headers: Sequence[tuple[bytes, bytes]] = (),
        version: bytes = b"13",
        ack: bool = True,
        expect: int | None = 200,
    ) -> H2WebSocket:
        """Extended CONNECT for ``path``; waits for the response (asserting ``expect``)."""
        request = [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", self.authority.encode()),
            (b"sec-websocket-version", version),
        ]
        if protocols:
            request.append((b"sec-websocket-protocol", ", ".join(protocols).encode()))
        extension = PerMessageDeflate() if deflate else None
        if extension is not None:
            request.append(
                (b"sec-websocket-extensions", f"{extension.name}; {extension.offer()}".encode())
            )
        request += list(headers)
        stream = self.open_stream(request, ack=ack)
        ws = H2WebSocket(self, stream, extension)
        if expect is not None:
            status = await stream.response()
            assert status == expect, (status, stream.headers, bytes(stream.data))
            if status == 200:
                ws.handshake_done()
        return ws

    # Receiving -------------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                self._received(data)
        except (ConnectionError, OSError):
            pass
        except Exception as exc:  # the client's own failure: surfaced by aclose()
            self.error = exc
        finally:
            self.closed = True
            for stream in self.streams.values():
                if stream.outcome is None:
                    stream.outcome = Closed()
                stream._notify()
            self.changed.set()

    def _received(self, data: bytes) -> None:
        self._buffer += data
        frames = []
        buffer = self._buffer
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            frame, buffer = buffer[: 9 + length], buffer[9 + length :]
            if frame[3] == GOAWAY:
                last, code = struct.unpack("!LL", frame[9:17])
                self.goaways.append(GoAway(last & 0x7FFFFFFF, code))
            else:
                frames.append(frame)
        self._buffer = buffer
        if frames:
            for event in self.conn.receive_data(b"".join(frames)):
                self._event(event)
            self.flush()
        self.changed.set()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            for code, setting in event.changed_settings.items():
                self.remote_settings[int(code)] = setting.new_value
            return
        if isinstance(event, h2.events.PingAckReceived):
            self.pongs.add(bytes(event.ping_data))
            return
        sid = getattr(event, "stream_id", None)
        stream = self.streams.get(sid) if sid else None
        if stream is None:
            if isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        if isinstance(event, h2.events.ResponseReceived):
            stream.headers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            size = event.flow_controlled_length or 0
            stream.received += size
            if stream.ack:
                if size:
                    self.conn.acknowledge_received_data(size, event.stream_id)
            else:
                stream.unacked += size
            if stream.on_data is not None:
                stream.on_data(event.data)
            else:
                stream.data += event.data
        elif isinstance(event, h2.events.StreamEnded):
            stream.outcome = Ended()
        elif isinstance(event, h2.events.StreamReset):
            stream.reset_code = int(event.error_code)
            if stream.outcome is None:  # after END_STREAM, RST_STREAM(NO_ERROR) ends our half
                stream.outcome = Reset(stream.reset_code)
        stream._notify()


class H2WebSocket:
    """The WebSocket riding one extended CONNECT stream."""

    def __init__(self, client: H2Client, stream: H2Stream, extension: Extension | None) -> None:
        self.client = client
        self.stream = stream
        self.extension = extension
        self.ws: Connection | None = None
        self.events: list[Event] = []
        self._early = bytearray()
        stream.on_data = self._data

    @property
    def sid(self) -> int:
        return self.stream.sid

    @property
    def outcome(self) -> Outcome | None:
        return self.stream.outcome

    def header(self, name: bytes) -> bytes | None:
        return self.stream.header(name)

    def handshake_done(self) -> None:
        extensions: list[Extension] = []
        answer = self.stream.header(b"sec-websocket-extensions")
        if self.extension is not None and answer is not None:
            self.extension.finalize(answer.decode("latin-1"))
            extensions.append(self.extension)
        self.ws = Connection(ConnectionType.CLIENT, extensions)
        if self._early:
            early, self._early = bytes(self._early), bytearray()
            self._data(early)

    def _data(self, data: bytes) -> None:
        if not data:
            return  # an empty DATA frame (END_STREAM): to wsproto, b"" would mean EOF
        if self.ws is None:
            if self.stream.status not in (None, 200):  # a denial's body: plain bytes
                self.stream.data += data
            else:
                self._early += data
            return
        self.ws.receive_data(data)
        self.events.extend(self.ws.events())

    def send(self, event: Event) -> None:
        assert self.ws is not None, "the handshake has not completed"
        self.client.send_data(self.sid, self.ws.send(event))

    def send_raw(self, data: bytes) -> None:
        self.client.send_data(self.sid, data)

    async def next_event(self, timeout: float = WAIT) -> Event | Outcome:
        """The next WebSocket event, or how the stream ended once no event is left."""
        await self.stream.wait(lambda: bool(self.events) or self.outcome is not None, timeout)
        if self.events:
            return self.events.pop(0)
        assert self.outcome is not None
        return self.outcome

    async def expect(self, kind: type[Any], timeout: float = WAIT) -> Any:
        event = await self.next_event(timeout)
        assert isinstance(event, kind), f"expected {kind.__name__}, got {event!r}"
        return event

    async def outcome_within(self, timeout: float = WAIT) -> Outcome:
        """Wait for the stream to end (skipping WebSocket events); how it ended."""
        await self.stream.wait(lambda: self.outcome is not None, timeout)
        assert self.outcome is not None
        return self.outcome


async def wait_until(
    predicate: Callable[[], bool], timeout: float = WAIT, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until it holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
