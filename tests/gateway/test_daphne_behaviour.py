"""What Daphne's flags do, in real gateway processes: --websocket-max-frame-size (1009),
the Daphne-Root-Path header (only from trusted proxies, on HTTP/1.1, HTTP/2 and WebSocket),
--ws-protocol, --asgi-protocol, and the access log (on by default; WebSocket lines parsed
back). Endpoints (-e) are in test_endpoints.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets.sync.client
from roomcast.gateway.connections.websocket import FrameSizeGuard
from wsproto.events import CloseConnection, TextMessage

from tests.gateway.apps import GatewayProcess, free_port
from tests.gateway.h2ws_support import H2WebSocketClient
from tests.gateway.ws_support import OP_CONT, OP_TEXT, RawClient, close_frame, frame

WAIT = 10.0


@dataclass
class Run:
    port: int
    stdout: str = ""  # what the process wrote, once it has exited
    stderr: str = ""


@contextlib.contextmanager
def serving(*args: str, app: str = "tests.gateway.apps:scope_echo") -> Iterator[Run]:
    """A gateway process on a free port; after the block, SIGTERM, exit 0 and its output."""
    run = Run(free_port())
    with GatewayProcess(app, "-p", str(run.port), *args) as gateway:
        gateway.wait_accepting(run.port)
        yield run
        gateway.signal(signal.SIGTERM)
        status, run.stderr = gateway.finish()
        run.stdout = gateway.stdout
        assert status == 0, run.stderr


# --websocket-max-frame-size --------------------------------------------------------------


def test_the_frame_guard_reads_headers_split_anywhere() -> None:
    stream = frame(OP_TEXT, b"a" * 100) + frame(OP_TEXT, b"b" * 300) + frame(OP_TEXT, b"c" * 70000)
    for cut in range(1, 12):  # split inside the first and second headers, byte by byte
        guard = FrameSizeGuard(400)
        pieces = [stream[:cut], stream[cut : cut + 105], stream[cut + 105 : 420], stream[420:]]
        results = [guard.feed(piece) for piece in pieces if piece]
        assert results[-1] is False, cut  # the 70000-byte frame
        assert all(results[:-1]), cut  # and only it
    assert FrameSizeGuard(70000).feed(stream)


async def test_an_oversized_frame_closes_1009_while_a_large_message_in_small_frames_passes() -> (
    None
):
    port = free_port()
    args = ("tests.gateway.apps:echo", "-p", str(port), "--websocket-max-frame-size", "1000")
    with GatewayProcess(*args, "--websocket-max-message-size", "100000") as gateway:
        gateway.wait_listening()
        client = await RawClient.connect(port)
        assert (await client.handshake()).status == 101
        # 3000 bytes in three frames of 1000: under both limits frame by frame.
        await client.send(frame(OP_TEXT, b"x" * 1000, fin=False))
        await client.send(frame(OP_CONT, b"y" * 1000, fin=False))
        await client.send(frame(OP_CONT, b"z" * 1000))
        assert await client.receive_message() == "x" * 1000 + "y" * 1000 + "z" * 1000
        # One frame of 1001 bytes: over the frame limit, far under the message limit.
        await client.send(frame(OP_TEXT, b"x" * 1001))
        close = await client.expect_close()
        assert (close.code, close.reason) == (1009, "frame too big")
        assert await client.at_eof()
        client.close()
        async with httpx.AsyncClient(timeout=WAIT) as http:
            assert (await http.get(f"http://127.0.0.1:{port}/")).text == "hello"


def test_zero_means_no_frame_or_message_limit() -> None:
    args = ("--websocket-max-frame-size", "0", "--websocket-max-message-size", "0")
    with serving(*args, app="tests.gateway.apps:echo") as run:
        big = "x" * (3 * 1024 * 1024)  # over both defaults (1 MiB)
        with websockets.sync.client.connect(f"ws://127.0.0.1:{run.port}/", max_size=None) as ws:
            ws.send(big)
            assert ws.recv(timeout=WAIT) == big


# Daphne-Root-Path -----------------------------------------------------------------------


ROOT_HEADER = {"Daphne-Root-Path": "/mount%20point"}


def http_scope(port: int, http2: bool = False) -> dict[str, Any]:
    with httpx.Client(http1=not http2, http2=http2, timeout=WAIT) as client:
        response = client.get(f"http://127.0.0.1:{port}/page", headers=ROOT_HEADER)
        assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        seen: dict[str, Any] = response.json()
        return seen


def ws_scope(port: int) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}/socket"
    with websockets.sync.client.connect(url, additional_headers=ROOT_HEADER) as ws:
        seen: dict[str, Any] = json.loads(ws.recv(timeout=WAIT))
        return seen


async def h2_ws_scope(port: int) -> dict[str, Any]:
    async with await H2WebSocketClient.connect("127.0.0.1", port) as client:
        ws = await client.websocket("/socket", headers=[(b"daphne-root-path", b"/mount%20point")])
        message = await ws.expect(TextMessage)
        ws.send(CloseConnection(code=1000))
        await ws.expect(CloseConnection)
        seen: dict[str, Any] = json.loads(message.data)
        return seen


def all_scopes(port: int) -> list[dict[str, Any]]:
    return [
        http_scope(port),
        http_scope(port, http2=True),
        ws_scope(port),
        asyncio.run(h2_ws_scope(port)),
    ]


def test_daphne_root_path_from_a_trusted_proxy_sets_root_path_and_is_not_passed() -> None:
    with serving("--proxy-headers", "--forwarded-allow-ips", "127.0.0.1") as run:
        for seen in all_scopes(run.port):
            assert seen["root_path"] == "/mount point", seen
            assert seen["path"].startswith("/mount point/"), seen
            assert "daphne-root-path" not in seen["headers"], seen


@pytest.mark.parametrize(
    "args",
    [
        ("--proxy-headers", "--forwarded-allow-ips", "10.1.2.3"),  # 127.0.0.1 is not a proxy
        ("--forwarded-allow-ips", "127.0.0.1"),  # without --proxy-headers nothing is believed
    ],
)
def test_daphne_root_path_from_anyone_else_is_an_ordinary_header(args: tuple[str, ...]) -> None:
    with serving(*args, "--root-path", "/configured") as run:
        for seen in all_scopes(run.port):
            assert seen["root_path"] == "/configured", seen
            assert "daphne-root-path" in seen["headers"], seen


# --ws-protocol ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "offered", "path", "answered"),
    [
        (["--ws-protocol", "v2", "--ws-protocol", "chat"], ["other", "chat", "v2"], "/", "chat"),
        (["--ws-protocol", "v2", "chat"], ["v2"], "/", "v2"),  # Daphne's nargs spelling
        (["--ws-protocol", "v2"], ["other"], "/", None),  # none in common: no subprotocol
        (["--ws-protocol", "v2"], ["mine", "v2"], "/pick", "mine"),  # the app's choice wins
        ([], ["v2"], "/", None),  # no --ws-protocol: the app decides alone
    ],
)
def test_ws_protocol_answers_the_first_offered_the_server_supports(
    flags: list[str], offered: list[str], path: str, answered: str | None
) -> None:
    app = "tests.gateway.apps:websockets_for_the_log"
    with serving(*flags, app=app) as run:
        url = f"ws://127.0.0.1:{run.port}{path}"
        with websockets.sync.client.connect(url, subprotocols=offered) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == answered


# --asgi-protocol --------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--asgi-protocol", "auto"], ["--asgi-protocol", "asgi2"]])
def test_an_asgi2_application_is_served(flags: list[str]) -> None:
    with serving(*flags, app="tests.gateway.apps:Asgi2Hello") as run:
        response = httpx.get(f"http://127.0.0.1:{run.port}/", timeout=WAIT)
        assert response.text == "hello from ASGI 2"


def test_asgi3_forced_on_an_asgi2_application_fails_its_requests() -> None:
    port = free_port()
    args = ("tests.gateway.apps:Asgi2Hello", "-p", str(port), "--asgi-protocol", "asgi3")
    with GatewayProcess(*args, "--lifespan", "off") as gateway:
        gateway.wait_listening()
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=WAIT).status_code == 500
        gateway.wait_for("Exception in ASGI application")


# The access log ---------------------------------------------------------------------------

LINE = re.compile(
    r'^\S+ \S+ (?P<peer>\S+) - "(?P<event>WS\w+) (?P<target>\S+)" (?P<status>\S+) - ?'
    r"(?:(?P<ms>[\d.]+)ms)?(?: (?P<by>client|app|server) in=(?P<in>\d+) out=(?P<out>\d+))?$"
)


def ws_lines(text: str) -> list[dict[str, str]]:
    found = []
    for line in text.splitlines():
        if '"WS' in line:
            match = LINE.match(line)
            assert match, line
            found.append({k: v for k, v in match.groupdict().items() if v is not None})
    return found


def test_websocket_lines_in_the_access_log(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    app = "tests.gateway.apps:websockets_for_the_log"
    with serving("--access-log", str(log), app=app) as run:
        base = f"ws://127.0.0.1:{run.port}"
        with websockets.sync.client.connect(f"{base}/chat?room=1") as ws:
            for text in ("one", "two"):
                ws.send(text)
                assert ws.recv(timeout=WAIT) == text
        with pytest.raises(websockets.exceptions.InvalidStatus):
            websockets.sync.client.connect(f"{base}/reject")
        with (
            websockets.sync.client.connect(f"{base}/app-close") as ws,
            pytest.raises(websockets.exceptions.ConnectionClosed),
        ):
            ws.recv(timeout=WAIT)
        asyncio.run(raw_client_leaves(run.port))
    lines = ws_lines(log.read_text())
    events = [(line["event"], line["target"], line["status"]) for line in lines]
    assert events == [
        ("WSCONNECTING", "/chat?room=1", "-"),
        ("WSCONNECT", "/chat?room=1", "101"),
        ("WSDISCONNECT", "/chat?room=1", "1000"),
        ("WSCONNECTING", "/reject", "-"),
        ("WSREJECT", "/reject", "403"),
        ("WSCONNECTING", "/app-close", "-"),
        ("WSCONNECT", "/app-close", "101"),
        ("WSDISCONNECT", "/app-close", "4001"),
        ("WSCONNECTING", "/gone", "-"),
        ("WSCONNECT", "/gone", "101"),
        ("WSDISCONNECT", "/gone", "1006"),
    ]
    by_close = {line["target"]: line for line in lines if line["event"] == "WSDISCONNECT"}
    assert (by_close["/chat?room=1"]["by"], by_close["/chat?room=1"]["in"]) == ("client", "2")
    assert by_close["/chat?room=1"]["out"] == "2"
    assert by_close["/app-close"]["by"] == "app"
    assert by_close["/gone"]["by"] == "client"
    assert all(line["peer"].startswith("127.0.0.1:") for line in lines)
    assert all(float(line["ms"]) >= 0 for line in lines if "ms" in line)


async def raw_client_leaves(port: int) -> None:
    """A client that drops its connection without a Close frame: 1006."""
    client = await RawClient.connect(port)
    assert (await client.handshake("/gone")).status == 101
    client.close()


def test_server_closes_are_logged_as_the_servers(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    app = "tests.gateway.apps:websockets_for_the_log"
    port = free_port()
    args = (app, "-p", str(port), "--access-log", str(log), "--websocket-max-message-size", "10")
    with GatewayProcess(*args) as gateway:
        gateway.wait_listening()
        asyncio.run(too_big_then_close(port))
        gateway.signal(signal.SIGTERM)
        assert gateway.wait() == 0
    (end,) = [line for line in ws_lines(log.read_text()) if line["event"] == "WSDISCONNECT"]
    assert (end["status"], end["by"]) == ("1009", "server")


async def too_big_then_close(port: int) -> None:
    client = await RawClient.connect(port)
    assert (await client.handshake("/")).status == 101
    await client.send(frame(OP_TEXT, b"x" * 11))
    assert (await client.expect_close()).code == 1009
    await client.send(close_frame(1009))
    assert await client.at_eof()
    client.close()


@pytest.mark.parametrize(
    ("flags", "logged"),
    [
        ([], True),
        (["--no-access-log"], False),
        (["-v", "0"], False),
        (["-v", "0", "--access-log", "-"], True),
    ],
)
def test_the_access_log_is_on_by_default_on_stdout(flags: list[str], logged: bool) -> None:
    with serving(*flags, app="tests.gateway.apps:hello") as run:
        assert httpx.get(f"http://127.0.0.1:{run.port}/x", timeout=WAIT).text == "hello"
    # Read once the process has exited: every line it would write is written.
    assert ('"GET /x HTTP/1.1" 200 5' in run.stdout) is logged, run.stdout
