"""A misbehaving app cannot freeze the server (issue 12, point 4).

- After the disconnect was delivered, ``receive()`` waits instead of returning a new
  disconnect at once: on HTTP/1.1 and HTTP/2, for HTTP and WebSocket alike. Checked without
  timing: a second ``receive()`` is still pending after the loop has turned many times.
- ``--application-close-timeout`` cancels an app still running after its client left.
- Real processes: an app looping on ``receive()`` leaves other clients served and SIGTERM
  working; an app that never yields (``while True: pass``) gets a loop-lag warning, and SIGTERM
  still ends its process (after the graceful timeout, with one line saying why), on asyncio
  and on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets.asyncio.client
import websockets.sync.client
from roomcast.gateway.config import Message, Receive, Scope, Send
from roomcast.gateway.watchdog import EXIT_BLOCKED
from wsproto.events import CloseConnection

from tests.gateway.apps import MARKER_ENV, GatewayProcess, free_port, respond
from tests.gateway.conftest import Serve
from tests.gateway.h2_support import H2Client
from tests.gateway.h2ws_support import H2WebSocketClient
from tests.gateway.rawhttp import read_response, request
from tests.gateway.ws_support import close_frame, gateway_server

TURNS = 50  # loop iterations a blocking receive() must stay pending through
WAIT = 10.0


class SecondReceive:
    """Takes the disconnect, then calls ``receive()`` again and reports whether it is pending
    after the loop turned ``TURNS`` times (True: it blocks, as it must)."""

    def __init__(self, answer_first: bool = True) -> None:
        self.answer_first = answer_first  # HTTP: respond, then receive (response complete)
        self.pending: asyncio.Queue[bool] = asyncio.Queue()
        self.first: list[Message] = []
        self.started = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.started.set()
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while (message := await receive())["type"] != "websocket.disconnect":
                pass
        else:
            if self.answer_first:
                await receive()
                await respond(send, b"answered")
            message = await receive()
            while message["type"] != "http.disconnect":
                message = await receive()
        self.first.append(message)
        second = asyncio.ensure_future(receive())
        for _ in range(TURNS):
            await asyncio.sleep(0)
        self.pending.put_nowait(not second.done())
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await second


async def test_http1_receive_after_the_response_blocks(serve: Serve) -> None:
    app = SecondReceive()
    host, port, _ = await serve(app)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request())
    assert (await read_response(reader)).body == b"answered"
    assert await asyncio.wait_for(app.pending.get(), WAIT)
    assert app.first == [{"type": "http.disconnect"}]
    writer.close()


async def test_http1_receive_after_the_client_left_blocks(serve: Serve) -> None:
    app = SecondReceive(answer_first=False)
    host, port, _ = await serve(app)
    _, writer = await asyncio.open_connection(host, port)
    writer.write(request())
    await asyncio.wait_for(app.started.wait(), WAIT)
    writer.transport.abort()
    assert await asyncio.wait_for(app.pending.get(), WAIT)


async def test_http2_receive_after_the_response_blocks(serve: Serve) -> None:
    app = SecondReceive()
    host, port, _ = await serve(app)
    async with await H2Client.connect(host, port) as client:
        stream = client.request("GET", "/")
        assert await stream.body() == b"answered"
        assert await asyncio.wait_for(app.pending.get(), WAIT)


async def test_websocket_receive_after_the_disconnect_blocks() -> None:
    app = SecondReceive()
    async with gateway_server(app) as served:
        client = await served.raw_client()
        assert (await client.handshake()).status == 101
        await client.send(close_frame(1000))
        assert await asyncio.wait_for(app.pending.get(), WAIT)
        assert app.first[0]["type"] == "websocket.disconnect"


async def test_http2_websocket_receive_after_the_disconnect_blocks(serve: Serve) -> None:
    app = SecondReceive()
    host, port, _ = await serve(app)
    async with await H2WebSocketClient.connect(host, port) as client:
        ws = await client.websocket("/")
        ws.send(CloseConnection(code=1000))
        assert await asyncio.wait_for(app.pending.get(), WAIT)
        assert app.first[0]["code"] == 1000


class Lingering:
    """Keeps calling ``receive()`` after the disconnect; records being cancelled."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope["type"] == "websocket":
                await receive()
                await send({"type": "websocket.accept"})
            else:
                await receive()
                await respond(send, b"answered")
            while True:
                await receive()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@contextlib.asynccontextmanager
async def lingering_server(**overrides: float) -> AsyncIterator[tuple[Lingering, int]]:
    app = Lingering()
    async with gateway_server(app, **overrides) as served:
        yield app, served.port


async def test_application_close_timeout_cancels_an_app_left_running(
    error_log: pytest.LogCaptureFixture,
) -> None:
    async with lingering_server(application_close_timeout=0.2) as (app, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request())
        assert (await read_response(reader)).body == b"answered"
        await asyncio.wait_for(app.cancelled.wait(), WAIT)
        writer.close()
    assert "after its client left, on GET /: cancelled" in error_log.text


async def test_application_close_timeout_cancels_a_websocket_app_left_running(
    error_log: pytest.LogCaptureFixture,
) -> None:
    async with lingering_server(application_close_timeout=0.2) as (app, port):
        async with websockets.asyncio.client.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.close()
        await asyncio.wait_for(app.cancelled.wait(), WAIT)
    assert "after WebSocket /ws closed: cancelled" in error_log.text


# Real processes ----------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_app_looping_on_receive_leaves_the_server_working(tmp_path: Path, loop: str) -> None:
    """Before the fix such an app spun without yielding: nobody else got an answer."""
    marker = tmp_path / "marks"
    port = free_port()
    args = ("tests.gateway.apps:receive_forever", "-p", str(port), "--loop", loop)
    args += ("--application-close-timeout", "60")
    with GatewayProcess(*args, env={MARKER_ENV: str(marker)}) as gateway:
        gateway.wait_listening()
        base = f"http://127.0.0.1:{port}"
        with websockets.sync.client.connect(f"ws://127.0.0.1:{port}/") as ws:
            ws.send("bye")
        assert httpx.get(f"{base}/loop", timeout=WAIT).text == "looping"
        with httpx.Client(http1=False, http2=True, timeout=WAIT) as h2:
            assert h2.get(f"{base}/loop").text == "looping"
        asyncio.run(_h2_websocket_then_leave(port))
        # Four apps now sit in receive() after their disconnect; others are still served.
        for _ in range(3):
            assert httpx.get(f"{base}/", timeout=WAIT).text == "hello"
        with httpx.Client(http1=False, http2=True, timeout=WAIT) as h2:
            assert h2.get(f"{base}/").text == "hello"
        gateway.signal(signal.SIGTERM)
        status, stderr = gateway.finish(timeout=WAIT + 5)
    assert status == 0, stderr
    assert "Traceback" not in stderr


async def _h2_websocket_then_leave(port: int) -> None:
    async with await H2WebSocketClient.connect("127.0.0.1", port) as client:
        ws = await client.websocket("/")
        ws.send(CloseConnection(code=1000))
        await ws.expect(CloseConnection)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_loop_burning_app_is_noticed_and_sigterm_still_ends_it(loop: str) -> None:
    port = free_port()
    graceful = 2.0
    args = (
        *("tests.gateway.apps:spin", "-p", str(port), "--loop", loop),
        *("--loop-lag-threshold", "0.5", "--graceful-timeout", str(graceful)),
    )
    with GatewayProcess(*args) as gateway:
        gateway.wait_listening()
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=WAIT).text == "hello"
        with contextlib.suppress(httpx.TimeoutException):
            httpx.get(f"http://127.0.0.1:{port}/spin", timeout=0.5)
        (line,) = gateway.wait_for(r"event loop blocked for [\d.]+s[^\n]*")
        assert "without yielding" in line
        gateway.signal(signal.SIGTERM)
        # The loop never turns again: the watchdog ends the process past the graceful timeout.
        status, stderr = gateway.finish(timeout=graceful + 30)
    assert status == EXIT_BLOCKED, stderr
    exits = re.findall(r"exiting without a graceful shutdown", stderr)
    assert len(exits) == 1, stderr
    assert "Traceback" not in stderr


def test_a_second_signal_ends_a_blocked_process_at_once() -> None:
    port = free_port()
    args = ("tests.gateway.apps:spin", "-p", str(port), "--graceful-timeout", "3600")
    with GatewayProcess(*args) as gateway:
        gateway.wait_listening()
        with contextlib.suppress(httpx.TimeoutException):
            httpx.get(f"http://127.0.0.1:{port}/spin", timeout=0.5)
        gateway.wait_for(r"event loop blocked")
        gateway.signal(signal.SIGTERM)
        gateway.wait_for(r"stop signal received while the event loop is blocked")
        gateway.signal(signal.SIGTERM)
        status, stderr = gateway.finish(timeout=30)  # far below the graceful timeout
    assert status == EXIT_BLOCKED, stderr
