"""WebSocketSession over an in-memory carrier: the part HTTP/1.1 and HTTP/2 share.

No socket and no handshake: a wsproto client Connection produces real (masked) frames, the
session answers into :class:`MemoryCarrier`, and the client side parses what it wrote. What
the app would see is recorded by :class:`StreamRecorder`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from roomcast.gateway.config import Config, Receive, Scope, Send
from roomcast.gateway.connections.websocket import (
    BoundedDeflate,
    WebSocketCarrier,
    WebSocketSession,
    negotiate_deflate,
)
from roomcast.gateway.state import ServerState
from roomcast.gateway.streams.http import ClientDisconnected
from roomcast.gateway.streams.websocket import WebSocketStream
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    TextMessage,
)

LIMIT = 100  # websocket_max_message_size of these sessions


@dataclass
class MemoryCarrier:
    """A carrier that records what the session does to it; ``queued`` is what buffered() says."""

    written: bytearray = field(default_factory=bytearray)
    closed: bool = False
    aborted: bool = False
    queued: int = 0
    paused: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def write(self, data: bytes) -> None:
        assert not self.is_closing(), "write after close/abort"
        self.written += data

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def buffered(self) -> int:
        return self.queued

    async def drain(self) -> None:
        await self.drained.wait()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class StreamRecorder:
    """Stands in for the WebSocketStream: what the session feeds it."""

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.disconnects: list[tuple[int, str]] = []

    def feed_message(self, data: str | bytes) -> None:
        self.messages.append(data)

    def feed_disconnect(self, code: int, reason: str = "", by: str = "client") -> None:
        self.disconnects.append((code, reason))


@dataclass
class Session:
    session: WebSocketSession
    carrier: MemoryCarrier
    stream: StreamRecorder
    client: Connection
    state: ServerState

    def send(self, event: Event) -> None:
        """The client sends ``event``: its frame bytes reach the session."""
        self.session.data_received(self.client.send(event))

    def received(self) -> list[Event]:
        """What the client makes of everything the session wrote so far."""
        self.client.receive_data(bytes(self.carrier.written))
        self.carrier.written.clear()
        return list(self.client.events())


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("no app runs in these tests")


def _session(**overrides: Any) -> Session:
    options: dict[str, Any] = {"ping_interval": 0, "websocket_max_message_size": LIMIT}
    options.update(overrides)
    carrier, stream, state = MemoryCarrier(), StreamRecorder(), ServerState()
    checked: WebSocketCarrier = carrier  # MemoryCarrier must satisfy the protocol
    session = WebSocketSession(checked, Config(app=_app, **options), state, "/chat")
    session.stream = cast(WebSocketStream, stream)
    return Session(session, carrier, stream, Connection(ConnectionType.CLIENT), state)


@pytest.fixture
async def ws() -> AsyncIterator[Session]:
    """A started session (no extensions); its timers are cancelled at teardown."""
    made = _session()
    made.session.start([])
    yield made
    made.session.connection_lost()


async def test_a_message_round_trip(ws: Session) -> None:
    ws.send(TextMessage(data="héllo"))
    ws.send(BytesMessage(data=b"\x00\x01"))
    assert ws.stream.messages == ["héllo", b"\x00\x01"]
    await ws.session.send_message("hi")
    await ws.session.send_message(b"\xff")
    events = ws.received()
    assert [(type(e), cast(Message[Any], e).data) for e in events] == [
        (TextMessage, "hi"),
        (BytesMessage, b"\xff"),
    ]
    assert ws.state.counters.websockets == 1


async def test_fragments_are_joined_into_one_message(ws: Session) -> None:
    ws.send(TextMessage(data="ab", message_finished=False))
    assert ws.stream.messages == []
    ws.send(TextMessage(data="cd", message_finished=True))
    assert ws.stream.messages == ["abcd"]


async def test_a_fragmented_message_over_the_limit_is_closed_1009(ws: Session) -> None:
    half = LIMIT // 2 + 1
    ws.send(BytesMessage(data=bytes(half), message_finished=False))
    assert ws.received() == []  # within the limit so far
    ws.send(BytesMessage(data=bytes(half), message_finished=True))
    (close,) = ws.received()
    assert isinstance(close, CloseConnection)
    assert close.code == 1009
    assert ws.stream.messages == []
    assert ws.stream.disconnects == [(1009, "")]
    assert not ws.carrier.aborted  # a closing handshake, not a drop
    # The client's answering Close ends it.
    ws.send(close.response())
    assert ws.carrier.closed
    assert ws.session.closed


async def test_a_ping_is_answered_with_a_pong(ws: Session) -> None:
    ws.send(Ping(payload=b"are you there"))
    assert ws.received() == [Pong(payload=b"are you there")]
    assert ws.stream.messages == []


async def test_a_client_close_is_echoed_and_the_carrier_closed(ws: Session) -> None:
    ws.send(CloseConnection(code=1000, reason="bye"))
    (echo,) = ws.received()
    assert isinstance(echo, CloseConnection)
    assert echo.code == 1000
    assert ws.carrier.closed
    assert not ws.carrier.aborted
    assert ws.stream.disconnects == [(1000, "bye")]
    with pytest.raises(ClientDisconnected):
        await ws.session.send_message("too late")


async def test_bytes_before_start_are_processed_after_it() -> None:
    made = _session()
    made.send(TextMessage(data="early"))
    made.send(Ping(payload=b"p"))
    assert made.stream.messages == []
    assert made.carrier.written == b""
    made.session.start([])
    try:
        assert made.stream.messages == ["early"]
        assert made.received() == [Pong(payload=b"p")]
        assert made.state.counters.websockets == 1
    finally:
        made.session.connection_lost()


async def test_too_many_bytes_before_start_abort_the_carrier() -> None:
    made = _session()
    made.session.data_received(bytes(LIMIT + 1))
    assert made.carrier.aborted
    assert made.session.closed


async def test_a_client_that_does_not_drain_is_dropped_1008() -> None:
    """Over websocket_write_buffer and no drain within the write timeout: abort, app sees 1008."""
    made = _session(websocket_write_buffer=10, websocket_write_timeout=0)
    made.session.start([])
    made.carrier.queued = 11
    with pytest.raises(ClientDisconnected):
        await made.session.send_message("x")
    assert made.carrier.aborted
    assert made.stream.disconnects == [(1008, "client too slow")]
    assert made.state.counters.slow_clients_closed == 1


async def test_shutdown_after_start_closes_1012_and_tells_the_app(ws: Session) -> None:
    ws.session.shutdown(restart=True)
    (close,) = ws.received()
    assert isinstance(close, CloseConnection)
    assert close.code == 1012
    assert ws.stream.disconnects == [(1012, "")]
    ws.send(close.response())
    assert ws.carrier.closed


async def test_pause_and_resume_reach_the_carrier(ws: Session) -> None:
    ws.session.pause_reading()
    assert ws.carrier.paused
    ws.session.resume_reading()
    assert not ws.carrier.paused


def test_negotiate_deflate_answers_the_first_usable_offer() -> None:
    offers = "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=7, " + (
        "permessage-deflate; client_max_window_bits"
    )
    negotiated = negotiate_deflate(offers, LIMIT)
    assert negotiated is not None
    extension, answer = negotiated
    assert isinstance(extension, BoundedDeflate)  # inflating is bounded by the size limit
    assert extension.max_size == LIMIT
    # window bits 7 are out of range (8..15): that offer is declined, the next one taken
    assert answer == b"permessage-deflate; client_max_window_bits=15"
    assert negotiate_deflate("x-webkit-deflate-frame", LIMIT) is None
