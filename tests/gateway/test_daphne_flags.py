"""Daphne's remaining flags, with Daphne's meaning: --http-timeout, --websocket_timeout,
--websocket_connect_timeout, --proxy-headers-host/-port and --log-fmt.

Timeouts are small (0.2 s) and every wait is bounded; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from roomcast.gateway import cli
from roomcast.gateway.config import Config, ConfigError, Message, Receive, Scope, Send
from wsproto.events import CloseConnection

from tests.gateway.apps import GatewayProcess, free_port, respond
from tests.gateway.conftest import Serve
from tests.gateway.h2_support import H2Client
from tests.gateway.h2ws_support import H2WebSocketClient
from tests.gateway.rawhttp import close, read_response, request
from tests.gateway.ws_support import gateway_server

SHORT = 0.2  # the timeout under test
WAIT = 5.0  # the bound on waiting for its effect


class Recorder:
    """An app whose HTTP response starts after ``delay`` and whose body then trickles out."""

    def __init__(self, delay: float = 0.0, trickle: int = 0) -> None:
        self.delay = delay
        self.trickle = trickle
        self.cancelled = asyncio.Event()
        self.received: list[Message] = []
        self.done = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope["type"] == "websocket":
                await self._websocket(receive, send)
                return
            await asyncio.sleep(self.delay)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(self.trickle):
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
                await asyncio.sleep(SHORT)
            await send({"type": "http.response.body", "body": b"end"})
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.done.set()

    async def _websocket(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "websocket.connect"
        if self.delay:  # never answers in time: the connect timeout's case
            self.received.append(await receive())
            return
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "websocket.disconnect":
                return


# --http-timeout --------------------------------------------------------------------------


async def test_http_timeout_answers_503_and_cancels_a_slow_app_http1(serve: Serve) -> None:
    app = Recorder(delay=60)
    host, port, _ = await serve(app, http_timeout=SHORT)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request())
        response = await read_response(reader, timeout=WAIT)
        assert response.status == 503
        assert response.body == b"Service Unavailable"
        await asyncio.wait_for(app.cancelled.wait(), WAIT)
    finally:
        await close(writer)


async def test_http_timeout_answers_503_and_cancels_a_slow_app_http2(serve: Serve) -> None:
    app = Recorder(delay=60)
    host, port, _ = await serve(app, http_timeout=SHORT)
    async with await H2Client.connect(host, port) as client:
        stream = client.request("GET", "/")
        assert await stream.response(timeout=WAIT) == 503
        assert await stream.body(timeout=WAIT) == b"Service Unavailable"
        await asyncio.wait_for(app.cancelled.wait(), WAIT)
        # The connection serves on: the next stream of a prompt app is fine.
        app.delay = 0
        second = client.request("GET", "/")
        assert await second.response(timeout=WAIT) == 200


async def test_http_timeout_spares_an_app_that_started_in_time(serve: Serve) -> None:
    """Only the start of the response is timed: a body slower than the timeout is fine."""
    app = Recorder(trickle=3)  # 3 x SHORT of body after a prompt http.response.start
    host, port, _ = await serve(app, http_timeout=SHORT)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request())
        response = await read_response(reader, timeout=WAIT)
        assert response.status == 200
        assert response.body == b"xxxend"
        assert not app.cancelled.is_set()
    finally:
        await close(writer)


async def test_no_http_timeout_by_default(serve: Serve) -> None:
    app = Recorder(delay=3 * SHORT)
    host, port, _ = await serve(app)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request())
        assert (await read_response(reader, timeout=WAIT)).status == 200
    finally:
        await close(writer)


# --websocket_timeout and --websocket_connect_timeout -----------------------------------


async def test_websocket_timeout_closes_an_idle_websocket_with_1000() -> None:
    app = Recorder()
    async with gateway_server(app, websocket_timeout=SHORT) as served:
        client = await served.raw_client()
        assert (await client.handshake()).status == 101
        event = await client.expect_close()
        assert isinstance(event, CloseConnection)
        assert event.code == 1000
        await asyncio.wait_for(app.done.wait(), WAIT)
        assert app.received[-1]["type"] == "websocket.disconnect"
        assert app.received[-1]["code"] == 1000


async def test_websocket_connect_timeout_denies_an_unanswered_handshake() -> None:
    app = Recorder(delay=60)
    async with gateway_server(app, websocket_connect_timeout=SHORT) as served:
        client = await served.raw_client()
        response = await client.handshake()
        assert response.status == 503
        await asyncio.wait_for(app.done.wait(), WAIT)
        assert [m["type"] for m in app.received] == ["websocket.disconnect"]


async def test_websocket_connect_timeout_spares_an_accepted_websocket() -> None:
    """Accepting in time stops the connect timer: the session outlives it."""
    app = Recorder()
    async with gateway_server(app, websocket_connect_timeout=SHORT) as served:
        client = await served.raw_client()
        assert (await client.handshake()).status == 101
        with pytest.raises(TimeoutError):
            await client.next_event(timeout=3 * SHORT)  # no Close frame comes
        assert app.received == []


async def test_websocket_timeouts_over_http2(serve: Serve) -> None:
    """The same stream code runs WebSockets over extended CONNECT: both timeouts apply."""
    idle = Recorder()
    host, port, _ = await serve(idle, websocket_timeout=SHORT)
    async with await H2WebSocketClient.connect(host, port) as client:
        ws = await client.websocket("/")
        close = await ws.expect(CloseConnection, timeout=WAIT)
        assert close.code == 1000
        await asyncio.wait_for(idle.done.wait(), WAIT)
        assert idle.received[-1]["code"] == 1000

    mute = Recorder(delay=60)
    host, port, _ = await serve(mute, websocket_connect_timeout=SHORT)
    async with await H2WebSocketClient.connect(host, port) as client:
        await client.websocket("/", expect=503)
        await asyncio.wait_for(mute.done.wait(), WAIT)
        assert [m["type"] for m in mute.received] == ["websocket.disconnect"]


# --proxy-headers-host / --proxy-headers-port ----------------------------------------------


async def client_of(app_scope: list[Scope], port: int, headers: list[tuple[str, str]]) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request(headers=headers))
        assert (await read_response(reader, timeout=WAIT)).status == 200
    finally:
        await close(writer)
    return app_scope[-1]["client"]


@pytest.fixture
def scopes() -> list[Scope]:
    return []


def scope_app(scopes: list[Scope]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await respond(send, b"ok")

    return app


PROXY_HEADERS = [("X-Real-IP", "203.0.113.7"), ("X-Client-Port", "4711")]


async def test_custom_proxy_headers_set_the_client_from_a_trusted_proxy(
    serve: Serve, scopes: list[Scope]
) -> None:
    _, port, _ = await serve(
        scope_app(scopes),
        proxy_headers=True,
        proxy_headers_host="X-Real-IP",
        proxy_headers_port="X-Client-Port",
    )
    assert await client_of(scopes, port, PROXY_HEADERS) == ("203.0.113.7", 4711)
    # X-Forwarded-For is not the configured header any more.
    client = await client_of(scopes, port, [("X-Forwarded-For", "198.51.100.1")])
    assert client[0] == "127.0.0.1"


async def test_default_port_header_is_x_forwarded_port(serve: Serve, scopes: list[Scope]) -> None:
    _, port, _ = await serve(scope_app(scopes), proxy_headers=True)
    headers = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Port", "8443")]
    assert await client_of(scopes, port, headers) == ("203.0.113.7", 8443)
    bad_port = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Port", "https")]
    assert await client_of(scopes, port, bad_port) == ("203.0.113.7", 0)
    # A port alone does not move the client: it goes with a forwarded address only.
    client = await client_of(scopes, port, [("X-Forwarded-Port", "8443")])
    assert client[0] == "127.0.0.1"
    assert client[1] != 8443


async def test_proxy_headers_are_ignored_from_an_untrusted_peer(
    serve: Serve, scopes: list[Scope]
) -> None:
    _, port, _ = await serve(
        scope_app(scopes),
        proxy_headers=True,
        forwarded_allow_ips=["10.0.0.1"],
        proxy_headers_host="X-Real-IP",
        proxy_headers_port="X-Client-Port",
    )
    client = await client_of(scopes, port, PROXY_HEADERS)
    assert client[0] == "127.0.0.1"
    assert client[1] != 4711


async def test_custom_proxy_headers_over_http2(serve: Serve, scopes: list[Scope]) -> None:
    host, port, _ = await serve(
        scope_app(scopes),
        proxy_headers=True,
        proxy_headers_host="X-Real-IP",
        proxy_headers_port="X-Client-Port",
    )
    async with await H2Client.connect(host, port) as client:
        headers = [(b"x-real-ip", b"203.0.113.7"), (b"x-client-port", b"4711")]
        stream = client.request("GET", "/", headers=headers)
        assert await stream.response(timeout=WAIT) == 200
    assert scopes[-1]["client"] == ("203.0.113.7", 4711)


# --log-fmt -------------------------------------------------------------------------------


def test_log_fmt_formats_the_servers_lines() -> None:
    port = free_port()
    args = ("-p", str(port), "--log-fmt", "GW|%(levelname)s|%(name)s|%(message)s")
    with GatewayProcess("tests.gateway.apps:hello", *args) as gateway:
        gateway.wait_listening()
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"
        line = next(ln for ln in gateway.stderr.splitlines() if "Listening on" in ln)
    pattern = r"GW\|INFO\|roomcast\.gateway\.error\|Listening on http://127\.0\.0\.1:\d+"
    assert re.fullmatch(pattern, line)


# The command line ------------------------------------------------------------------------


def test_daphne_spellings_and_aliases_reach_config(monkeypatch: pytest.MonkeyPatch) -> None:
    configs: list[Config] = []
    monkeypatch.setattr(cli, "serve", configs.append)
    for args in (
        ["-t", "30", "--websocket_timeout", "60", "--websocket_connect_timeout", "2"],
        ["--http-timeout", "30", "--websocket-timeout", "60", "--websocket-connect-timeout", "2"],
    ):
        result = CliRunner().invoke(cli.main, [*args, "a:b"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    first, second = configs
    assert first == second
    assert (first.http_timeout, first.websocket_timeout, first.websocket_connect_timeout) == (
        30.0,
        60.0,
        2.0,
    )


def test_minus_one_means_no_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    configs: list[Config] = []
    monkeypatch.setattr(cli, "serve", configs.append)
    args = ["-t", "-1", "--websocket_timeout", "-1", "--websocket_connect_timeout", "-1", "a:b"]
    CliRunner().invoke(cli.main, args, catch_exceptions=False)
    (config,) = configs
    assert config.http_timeout is None
    assert config.websocket_timeout is None
    assert config.websocket_connect_timeout is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-t", "0"], "above 0, or -1 for no limit"),
        (["--http-timeout", "soon"], "not a valid float"),
        (["--websocket_timeout", "-5"], "above 0, or -1 for no limit"),
        (["--websocket-connect-timeout", "nan"], "above 0, or -1 for no limit"),
        (["--proxy-headers", "--proxy-headers-host", "X Real IP"], "not an HTTP header name"),
        (["--proxy-headers", "--proxy-headers-port", ""], "not an HTTP header name"),
        (["--proxy-headers-host", "X-Real-IP"], "--proxy-headers-host needs --proxy-headers"),
        (["--proxy-headers-port", "X-Port"], "--proxy-headers-port needs --proxy-headers"),
        (["--log-fmt", "no fields"], "is not a logging format"),
        (["--log-fmt", "%(nosuchfield)s"], "is not a logging format"),
    ],
)
def test_bad_values_are_usage_errors(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs: list[Config] = []
    monkeypatch.setattr(cli, "serve", configs.append)
    result = CliRunner().invoke(cli.main, [*args, "a:b"])
    assert result.exit_code == 2
    assert message in result.output
    assert configs == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"http_timeout": 0},
        {"websocket_timeout": -1},
        {"proxy_headers_host": "bad header"},
        {"log_fmt": "%(nosuchfield)s"},
    ],
)
def test_config_refuses_bad_values(overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Config(app="a:b", **overrides)
