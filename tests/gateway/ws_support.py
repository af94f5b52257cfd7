"""Helpers for the WebSocket tests: an in-process gateway and a raw, misbehaving client.

``gateway_server`` runs :class:`~roomcast.gateway.connections.http1.HTTP1Connection` on a real
loopback
socket inside the test's event loop, so a test can look at the server's state
(``served.state.connections``) while it talks to it. ``RawClient`` speaks the WebSocket
protocol by hand (frames are built here, the server's frames are parsed by wsproto's client
side) for the cases a well-behaved client will not produce.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from roomcast.gateway.config import ASGIApp, Config, Message, Receive, Scope, Send
from roomcast.gateway.connections.http1 import HTTP1Connection
from roomcast.gateway.state import ServerState
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage

WAIT = 5.0  # the bound on every wait in these tests; reached only when something is broken

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


@dataclass
class Served:
    """A gateway listening on 127.0.0.1 in this event loop."""

    config: Config
    state: ServerState
    server: asyncio.Server
    port: int
    clients: list[RawClient]

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def raw_client(self) -> RawClient:
        """A raw client connected to this server, closed when the server is torn down."""
        client = await RawClient.connect(self.port)
        self.clients.append(client)
        return client

    def connections(self) -> list[HTTP1Connection]:
        return [conn for conn in self.state.connections if isinstance(conn, HTTP1Connection)]

    def write_buffered(self) -> int:
        """Bytes queued in the server's transports, not yet taken by the kernel."""
        return sum(
            conn.transport.get_write_buffer_size()
            for conn in self.connections()
            if conn.transport is not None and not conn.transport.is_closing()
        )


@contextlib.asynccontextmanager
async def gateway_server(
    app: ASGIApp,
    *,
    on_connection: Callable[[HTTP1Connection], None] | None = None,
    backlog: int = 100,
    **overrides: Any,
) -> AsyncIterator[Served]:
    """Serve ``app`` with ``Config(app=app, **overrides)``; everything is torn down after."""
    config = Config(app=app, **overrides)
    state = ServerState()
    loop = asyncio.get_running_loop()

    def factory() -> HTTP1Connection:
        conn = HTTP1Connection(config, app, state)
        if on_connection is not None:
            original = conn.connection_made

            def connection_made(transport: asyncio.BaseTransport) -> None:
                original(transport)
                on_connection(conn)

            conn.connection_made = connection_made  # type: ignore[method-assign]
        return conn

    server = await loop.create_server(factory, "127.0.0.1", 0, backlog=backlog)
    port = server.sockets[0].getsockname()[1]
    served = Served(config, state, server, port, [])
    try:
        yield served
    finally:
        for client in served.clients:
            client.close()
        server.close()
        for conn in list(state.connections):
            if isinstance(conn, HTTP1Connection) and conn.transport is not None:
                conn.transport.abort()
        tasks = list(state.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=WAIT)
        await server.wait_closed()


async def wait_for_condition(check: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll ``check`` until it holds; fail the test if it does not within ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)


# A raw client ------------------------------------------------------------------------------


def frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False, mask: bool = True
) -> bytes:
    """One WebSocket frame as a client sends it (masked unless told otherwise)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head = struct.pack("!BB", first, mask_bit | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))
    return head + key + masked


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(OP_CLOSE, struct.pack("!H", code) + reason.encode())


def handshake_request(
    path: str = "/",
    *,
    key: str | None = None,
    version: str | None = "13",
    headers: list[tuple[str, str]] | None = None,
) -> bytes:
    """An HTTP/1.1 upgrade request; ``key``/``version`` None leaves that header out."""
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
    ]
    if key is None:
        key = base64.b64encode(os.urandom(16)).decode()
    if key:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    lines.extend(f"{name}: {value}" for name, value in headers or [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class HTTPResponse:
    status: int
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes


class RawClient:
    """A hand-driven WebSocket client over ``asyncio.open_connection``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = Connection(ConnectionType.CLIENT)
        self._events: list[Event] = []

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_head(self) -> HTTPResponse:
        """The response head; for a non-101 response also its body (read to EOF)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                value = value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body = b""
        if status != 101:
            body = await asyncio.wait_for(self.reader.read(), WAIT)
            if headers.get("transfer-encoding") == "chunked":
                body = _dechunk(body)
        return HTTPResponse(status, headers, body)

    async def handshake(self, path: str = "/", **kwargs: Any) -> HTTPResponse:
        await self.send(handshake_request(path, **kwargs))
        return await self.read_head()

    async def next_event(self, timeout: float = WAIT) -> Event | None:
        """The next WebSocket event from the server; None at EOF."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._events:
            data = await asyncio.wait_for(self.reader.read(65536), deadline - loop.time())
            if not data:
                return None
            self.ws.receive_data(data)
            self._events.extend(self.ws.events())
        return self._events.pop(0)

    async def receive_message(self) -> str | bytes:
        """The next whole message, skipping pings."""
        parts: list[Any] = []
        while True:
            event = await self.next_event()
            if isinstance(event, (TextMessage, BytesMessage)):
                parts.append(event.data)
                if event.message_finished:
                    empty: str | bytes = "" if isinstance(event, TextMessage) else b""
                    return empty.join(parts)
            elif not isinstance(event, Ping):
                raise AssertionError(f"expected a message, got {event!r}")

    async def expect_close(self, *, answer_pings: bool = True) -> CloseConnection:
        """Read until the server's Close frame (messages are skipped) and return it."""
        while True:
            event = await self.next_event()
            if event is None:
                raise AssertionError("connection ended without a Close frame")
            if isinstance(event, CloseConnection):
                return event
            if isinstance(event, Ping) and answer_pings:
                await self.send(frame(OP_PONG, event.payload))

    async def at_eof(self) -> bool:
        """Whether the server closes the TCP connection (within the bound), draining the rest."""
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(self.reader.read(65536), WAIT):
                pass
        return True

    def close(self) -> None:
        self.writer.close()
        self.writer.transport.abort()


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


# Small ASGI applications -------------------------------------------------------------------


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Accepts and echoes every message back, text as text and bytes as bytes."""
    assert scope["type"] == "websocket"
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        reply: Message = {"type": "websocket.send"}
        if message.get("text") is not None:
            reply["text"] = message["text"]
        else:
            reply["bytes"] = message["bytes"]
        await send(reply)
