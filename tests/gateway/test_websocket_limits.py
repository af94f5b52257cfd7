"""WebSocket limits and bad input: message size, UTF-8, handshakes, clients that stop reading."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import zlib
from collections.abc import Iterator

import pytest
import roomcast.gateway.connections.websocket as ws_connection
from roomcast.gateway.config import Message, Receive, Scope, Send
from roomcast.gateway.connections.http1 import HTTP1Connection
from roomcast.gateway.connections.websocket import BoundedDeflate
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection
from wsproto.events import Message as WSMessage

from tests.gateway.ws_support import (
    OP_BINARY,
    OP_CONT,
    OP_TEXT,
    WAIT,
    RawClient,
    Served,
    echo_app,
    frame,
    gateway_server,
    handshake_request,
    wait_for_condition,
)

LIMIT = 1000  # websocket_max_message_size in these tests


class Recording:
    """Echo app that records what it receives."""

    def __init__(self) -> None:
        self.received: list[Message] = []
        self.done = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def recording_receive() -> Message:
            message = await receive()
            self.received.append(message)
            return message

        try:
            await echo_app(scope, recording_receive, send)
        finally:
            self.done.set()

    async def finished(self) -> list[Message]:
        await asyncio.wait_for(self.done.wait(), WAIT)
        return self.received

    def messages(self) -> list[Message]:
        return [m for m in self.received if m["type"] == "websocket.receive"]


async def raw_open(served: Served, **kwargs: object) -> RawClient:
    client = await served.raw_client()
    response = await client.handshake(**kwargs)  # type: ignore[arg-type]
    assert response.status == 101
    return client


# Message size --------------------------------------------------------------------------------


async def test_message_at_the_limit_is_accepted() -> None:
    async with (
        gateway_server(echo_app, websocket_max_message_size=LIMIT) as served,
        connect(served.url(), ping_interval=None) as ws,
    ):
        await ws.send(b"x" * LIMIT)
        assert await ws.recv() == b"x" * LIMIT
        await ws.send(["y" * 500, "y" * 500])
        assert await ws.recv() == "y" * LIMIT


async def test_single_frame_over_the_limit_closes_1009() -> None:
    app = Recording()
    async with gateway_server(app, websocket_max_message_size=LIMIT) as served:
        async with connect(served.url(), ping_interval=None) as ws:
            await ws.send(b"x" * (LIMIT + 1))
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1009
        await app.finished()
    assert app.messages() == []
    assert app.received[-1]["type"] == "websocket.disconnect"
    assert app.received[-1]["code"] == 1009


async def test_fragmented_message_over_the_limit_closes_1009() -> None:
    app = Recording()
    async with gateway_server(app, websocket_max_message_size=LIMIT) as served:
        async with connect(served.url(), ping_interval=None) as ws:
            await ws.send(["z" * 400, "z" * 400, "z" * 400])
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1009
        await app.finished()
    assert app.messages() == []


async def test_text_limit_counts_utf8_bytes_not_characters() -> None:
    app = Recording()
    async with gateway_server(app, websocket_max_message_size=LIMIT) as served:
        async with connect(served.url(), ping_interval=None, compression=None) as ws:
            await ws.send("é" * (LIMIT // 2))  # exactly LIMIT bytes
            assert await ws.recv() == "é" * (LIMIT // 2)
            await ws.send("é" * (LIMIT // 2 + 1))  # LIMIT + 2 bytes, fewer characters
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1009
        await app.finished()
    assert len(app.messages()) == 1


async def test_rest_of_an_oversized_message_is_not_delivered() -> None:
    """Fragments after the 1009 are dropped, not handed to the app as a short message."""
    app = Recording()
    async with gateway_server(app, websocket_max_message_size=LIMIT) as served:
        client = await raw_open(served)
        await client.send(
            frame(OP_BINARY, b"a" * 600, fin=False)
            + frame(OP_CONT, b"b" * 600, fin=False)  # over the limit here
            + frame(OP_CONT, b"c" * 10, fin=True)
            + frame(OP_TEXT, b"after the close")
        )
        close = await client.expect_close()
        assert close.code == 1009
        client.close()
        await app.finished()
    assert app.messages() == []


async def test_compressed_message_over_the_limit_closes_1009() -> None:
    """A small deflated frame that inflates past the limit (a zip bomb) is refused."""
    app = Recording()
    async with gateway_server(app, websocket_max_message_size=LIMIT) as served:
        client = await raw_open(
            served, headers=[("Sec-WebSocket-Extensions", "permessage-deflate")]
        )
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        bomb = compressor.compress(bytes(50 * 1024 * 1024)) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert len(bomb) < 100 * 1024
        await client.send(frame(OP_BINARY, bomb[:-4], rsv1=True))
        close = await client.expect_close()
        assert close.code == 1009
        client.close()
        await app.finished()
    assert app.messages() == []


def test_inflating_is_bounded_while_parsing() -> None:
    """Sans I/O: a deflate bomb never inflates past the limit, even inside one frame."""
    deflate = BoundedDeflate(LIMIT)
    assert deflate.accept("permessage-deflate") is not None
    conn = Connection(ConnectionType.SERVER, [deflate])
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(bytes(50 * 1024 * 1024)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    conn.receive_data(frame(OP_BINARY, bomb[:-4], rsv1=True))
    events = list(conn.events())
    inflated = sum(len(event.data) for event in events if isinstance(event, WSMessage))
    assert inflated <= LIMIT + 1
    assert isinstance(events[-1], CloseConnection)
    assert events[-1].code == 1009


async def test_compressed_messages_within_the_limit_pass() -> None:
    async with (
        gateway_server(echo_app, websocket_max_message_size=LIMIT) as served,
        connect(served.url(), ping_interval=None) as ws,
    ):
        for _ in range(5):
            await ws.send("q" * LIMIT)
            assert await ws.recv() == "q" * LIMIT


# Bad frames ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames",
    [
        [frame(OP_TEXT, b"bad \xff\xfe utf-8")],
        [frame(OP_TEXT, b"ok so far \xe2\x82", fin=False), frame(OP_CONT, b"\x41")],
    ],
    ids=["one-frame", "split-across-fragments"],
)
async def test_invalid_utf8_text_closes_1007(frames: list[bytes]) -> None:
    app = Recording()
    async with gateway_server(app) as served:
        client = await raw_open(served)
        await client.send(b"".join(frames))
        close = await client.expect_close()
        assert close.code == 1007
        assert await client.at_eof()
        await app.finished()
    assert app.messages() == []
    assert app.received[-1]["code"] == 1007


@pytest.mark.parametrize(
    "data",
    [
        frame(OP_TEXT, b"unmasked", mask=False),
        frame(0x3, b"reserved opcode"),
        frame(OP_CONT, b"continuation of nothing"),
        frame(0x9, b"fragmented ping", fin=False),
        frame(OP_TEXT, b"rsv1 without deflate", rsv1=True),
    ],
    ids=["unmasked", "reserved-opcode", "stray-continuation", "fragmented-control", "rsv1"],
)
async def test_protocol_errors_close_1002(data: bytes) -> None:
    app = Recording()
    async with gateway_server(app) as served:
        client = await raw_open(served)
        await client.send(data)
        close = await client.expect_close()
        assert isinstance(close, CloseConnection)
        assert close.code == 1002
        assert await client.at_eof()
        await app.finished()
    assert app.received[-1]["code"] == 1002


# Handshake -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "version"),
    [("", "13"), (None, None), (None, "8"), (None, "")],
    ids=["no-key", "no-version", "version-8", "empty-version"],
)
async def test_bad_handshake_is_400(key: str | None, version: str | None) -> None:
    started = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started.set()

    async with gateway_server(app) as served:
        client = await served.raw_client()
        response = await client.handshake(key=key, version=version)
        assert response.status == 400
        assert served.state.counters.bad_requests == 1
    assert not started.is_set()


# Clients that stop reading --------------------------------------------------------------------

BUFFER = 64 * 1024
CHUNK = 16 * 1024
SLACK = 16 * 1024  # frame headers, the 101 response


def shrink_send_buffer(conn: HTTP1Connection) -> None:
    """Small kernel buffers on the server side, so the transport's own buffer fills fast."""
    assert conn.transport is not None
    sock = conn.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


class Pusher:
    """Accepts, then sends CHUNK-sized messages until the server says the client is gone."""

    def __init__(self, go: asyncio.Event | None = None) -> None:
        self.outcomes: list[BaseException | None] = []
        self.go = go

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        if self.go is not None:
            await self.go.wait()
        data = os.urandom(CHUNK)
        try:
            while True:
                await send({"type": "websocket.send", "bytes": data})
        except OSError as exc:
            self.outcomes.append(exc)


async def silent_client(port: int) -> socket.socket:
    """A client that sends its handshake and then never reads a byte."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, handshake_request())
    except BaseException:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def closing_all(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


async def test_client_that_stops_reading_is_bounded_then_closed() -> None:
    app = Pusher()
    async with gateway_server(
        app,
        on_connection=shrink_send_buffer,
        websocket_write_buffer=BUFFER,
        websocket_write_timeout=0.5,
    ) as served:
        with closing_all([await silent_client(served.port)]):
            peak = 0
            while not app.outcomes:
                peak = max(peak, served.write_buffered())
                assert peak <= BUFFER + CHUNK + SLACK
                await asyncio.sleep(0.01)
                assert served.state.counters.slow_clients_closed <= 1
            await wait_for_condition(lambda: not served.state.connections)
            assert peak > BUFFER  # the limit was reached, not some other stop
    assert served.state.counters.slow_clients_closed == 1
    assert isinstance(app.outcomes[0], OSError)


async def test_slow_client_is_not_closed_while_it_keeps_up() -> None:
    """Over the limit only briefly: a client that reads, slowly, is not dropped."""
    total = 2 * 1024 * 1024

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        for _ in range(total // CHUNK):
            await send({"type": "websocket.send", "bytes": bytes(CHUNK)})
        await send({"type": "websocket.close"})

    async with gateway_server(
        app,
        websocket_write_buffer=BUFFER,
        websocket_write_timeout=0.5,
        websocket_per_message_deflate=False,
    ) as served:
        client = await raw_open(served)
        received = 0
        while received < total:
            message = await client.receive_message()
            received += len(message)
            if received % (256 * 1024) == 0:
                await asyncio.sleep(0.01)
        assert (await client.expect_close()).code == 1000
        assert served.state.counters.slow_clients_closed == 0


async def test_close_to_a_client_that_does_not_read_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Close frame cannot go out while the buffer is full: the socket is dropped anyway."""
    monkeypatch.setattr(ws_connection, "CLOSE_TIMEOUT", 0.2)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "bytes": bytes(1024 * 1024)})
        await send({"type": "websocket.close", "code": 1000})

    async with gateway_server(
        app,
        on_connection=shrink_send_buffer,
        websocket_write_buffer=4 * 1024 * 1024,
        websocket_per_message_deflate=False,
    ) as served:
        with closing_all([await silent_client(served.port)]):
            await wait_for_condition(lambda: bool(served.state.connections))
            await wait_for_condition(lambda: not served.state.connections)


async def test_shutdown_with_a_client_that_does_not_read_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ws_connection, "CLOSE_TIMEOUT", 0.2)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "bytes": bytes(1024 * 1024)})
        await receive()

    async with gateway_server(
        app,
        on_connection=shrink_send_buffer,
        websocket_write_buffer=4 * 1024 * 1024,
        websocket_per_message_deflate=False,
    ) as served:
        with closing_all([await silent_client(served.port)]):
            await wait_for_condition(lambda: served.write_buffered() > 0)
            for conn in list(served.state.connections):
                conn.shutdown(False)
            await wait_for_condition(lambda: not served.state.connections)


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@pytest.mark.timeout(60)
async def test_memory_stays_bounded_with_a_thousand_clients_that_do_not_read() -> None:
    clients = 1000
    _raise_fd_limit(2 * clients + 200)
    go = asyncio.Event()  # all clients connected: push to all of them at once
    app = Pusher(go)
    bound = clients * (BUFFER + CHUNK + SLACK)
    async with gateway_server(
        app,
        on_connection=shrink_send_buffer,
        backlog=clients,
        websocket_write_buffer=BUFFER,
        websocket_write_timeout=0.5,
        ping_interval=0,
    ) as served:
        rss_before = _rss()
        peak_buffered = peak_rss = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal peak_buffered, peak_rss
            while not done.is_set():
                peak_buffered = max(peak_buffered, served.write_buffered())
                peak_rss = max(peak_rss, _rss())
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        socks: list[socket.socket] = []
        with closing_all(socks):
            for start in range(0, clients, 100):
                socks.extend(
                    await asyncio.gather(
                        *(
                            silent_client(served.port)
                            for _ in range(start, min(clients, start + 100))
                        )
                    )
                )
            await wait_for_condition(lambda: served.state.counters.websockets == clients)
            go.set()
            await wait_for_condition(
                lambda: served.state.counters.slow_clients_closed == clients, timeout=20
            )
            await wait_for_condition(lambda: not served.state.connections)
            done.set()
            await watcher
        assert served.state.counters.websockets == clients
        assert len(app.outcomes) == clients
        assert all(isinstance(outcome, OSError) for outcome in app.outcomes)
        assert peak_buffered > clients * BUFFER // 2  # most were full at once ...
        assert peak_buffered <= bound  # ... and none went past its limit
        # The whole process: buffers, connections and app tasks, with room for the allocator.
        assert peak_rss - rss_before <= bound + clients * 64 * 1024
