"""WebSockets over HTTP/2 (RFC 8441 extended CONNECT) for the tests, on ``h2_support``'s client.

``H2WebSocketClient`` is ``h2_support.H2Client`` (prior-knowledge cleartext HTTP/2; DATA
acknowledged as it arrives unless a stream was opened with ``ack=False``; GOAWAY frames kept out
of h2 and recorded in ``goaways``) that waits for the server's SETTINGS before any extended
CONNECT, opens WebSockets (``websocket``) and fails at ``aclose`` if h2 refused the server's
frames.

``H2WebSocket`` frames and parses WebSocket messages for one stream with wsproto's
post-handshake ``Connection`` (client side: masked frames).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

from wsproto.connection import Connection, ConnectionType
from wsproto.events import Event
from wsproto.extensions import Extension, PerMessageDeflate

from tests.gateway.h2_support import WAIT, H2Client, H2Stream

__all__ = [
    "WAIT",
    "Closed",
    "Ended",
    "H2Stream",
    "H2WebSocket",
    "H2WebSocketClient",
    "Outcome",
    "Reset",
    "wait_until",
]


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


def outcome(stream: H2Stream) -> Outcome | None:
    """How the stream ended (the first of END_STREAM, RST_STREAM, connection lost), if it did."""
    if stream.ended:
        return Ended()
    if stream.reset_code is not None:
        return Reset(stream.reset_code)
    if stream.lost:
        return Closed()
    return None


class H2WebSocketClient(H2Client):
    """One prior-knowledge HTTP/2 connection that can carry WebSockets."""

    @classmethod
    async def connect(cls, host: str, port: int, **options: Any) -> Self:
        client = await super().connect(host, port, **options)
        # The server's SETTINGS (ENABLE_CONNECT_PROTOCOL) before any extended CONNECT.
        await client.wait(lambda: bool(client.remote_settings) or client.closed)
        assert client.remote_settings, "no SETTINGS from the server"
        return client

    async def aclose(self) -> None:
        await super().aclose()
        if self.h2_error is not None:
            raise AssertionError(f"h2 refused the server's frames: {self.h2_error!r}")

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
            (b":scheme", self.scheme.encode()),
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
        return outcome(self.stream)

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
        ended = self.outcome
        assert ended is not None
        return ended

    async def expect(self, kind: type[Any], timeout: float = WAIT) -> Any:
        event = await self.next_event(timeout)
        assert isinstance(event, kind), f"expected {kind.__name__}, got {event!r}"
        return event

    async def outcome_within(self, timeout: float = WAIT) -> Outcome:
        """Wait for the stream to end (skipping WebSocket events); how it ended."""
        await self.stream.wait(lambda: self.outcome is not None, timeout)
        ended = self.outcome
        assert ended is not None
        return ended


async def wait_until(
    predicate: Callable[[], bool], timeout: float = WAIT, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until it holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
