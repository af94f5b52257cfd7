"""--health-path and --ready-path, answered by the gateway before the app (issue 17).

Each readiness flip with real processes: before the lifespan start-up completed, while a
part of the app reports through roomcast.readiness, and after SIGTERM while a WebSocket is
still open (readiness 503, liveness 200, until the process exits). HTTP/1.1 and HTTP/2.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from roomcast.gateway.config import Config, ConfigError, Receive, Scope, Send

from tests.gateway.apps import RELEASE_ENV, GatewayProcess, free_port, respond
from tests.gateway.conftest import Serve
from tests.gateway.rawhttp import read_response, request
from tests.gateway.ws_support import RawClient, close_frame

WAIT = 10.0
PROBES = ("--health-path", "/healthz", "--ready-path", "/readyz")


def get(port: int, path: str, http2: bool = False, method: str = "GET") -> httpx.Response:
    with httpx.Client(http1=not http2, http2=http2, timeout=WAIT) as client:
        return client.request(method, f"http://127.0.0.1:{port}{path}")


# In-process: what a probe answers --------------------------------------------------------


class Held:
    """An app that never answers: fills --limit-concurrency."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        if scope["path"] == "/hold":
            await asyncio.Event().wait()
        await respond(send, b"app")


async def test_probes_are_answered_before_the_app_whatever_the_load(serve: Serve) -> None:
    app = Held()
    host, port, _ = await serve(
        app, health_path="/healthz", ready_path="/readyz", limit_concurrency=1
    )
    _, held = await asyncio.open_connection(host, port)
    held.write(request(target="/hold"))
    await held.drain()
    for _ in range(100):
        if app.calls:
            break
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request(target="/"))
    assert (await read_response(reader)).status == 503  # the app is at its limit
    for target, body in (("/healthz", b'"alive"'), ("/readyz?probe=1", b'"ready"')):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request(target=target))
        response = await read_response(reader)
        assert response.status == 200
        assert body in response.body
        assert response.header(b"content-type") == b"application/json"
        assert response.header(b"cache-control") == b"no-store"
        writer.close()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request("POST", "/healthz", body=b"x"))
    response = await read_response(reader)
    assert (response.status, response.header(b"allow")) == (405, b"GET, HEAD")
    writer.write(request("HEAD", "/readyz"))
    response = await read_response(reader, head_request=True)
    assert (response.status, response.body) == (200, b"")
    assert app.calls == 1  # the probes never reached the app
    held.close()


@pytest.mark.parametrize(
    "settings",
    [
        {"health_path": "healthz"},
        {"ready_path": "/readyz?x=1"},
        {"health_path": "/same", "ready_path": "/same"},
    ],
)
def test_bad_probe_paths_are_config_errors(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Config(app="a:b", **settings)


# Real processes: each flip ---------------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True])
def test_readiness_follows_what_the_app_reports_through_roomcast_readiness(
    http2: bool,
) -> None:
    port = free_port()
    env = {"ROOMCAST_READY_PATH": "/readyz"}  # the environment works as the flag does
    args = ("tests.gateway.apps:readiness_reporter", "-p", str(port), "--health-path", "/hz")
    with GatewayProcess(*args, env=env) as gateway:
        gateway.wait_listening()
        assert get(port, "/readyz", http2).json()["status"] == "ready"
        assert get(port, "/not-ready?key=channel+layer+default&reason=redis+down", http2)
        response = get(port, "/readyz", http2)
        assert response.status_code == 503
        assert response.json()["reasons"] == {"channel layer default": "redis down"}
        assert get(port, "/hz", http2).status_code == 200  # alive all the same
        assert get(port, "/", http2).text == "hello"  # and the app still served
        get(port, "/ready?key=channel+layer+default", http2)
        assert get(port, "/readyz", http2).status_code == 200
        gateway.signal(signal.SIGTERM)
        assert gateway.wait() == 0


def test_not_ready_until_the_lifespan_startup_completed(tmp_path: Path) -> None:
    release = tmp_path / "release"
    port = free_port()
    args = ("tests.gateway.apps:slow_startup", "-p", str(port), *PROBES)
    with GatewayProcess(*args, env={RELEASE_ENV: str(release)}) as gateway:
        gateway.wait_accepting(port)
        response = get(port, "/readyz")
        assert response.status_code == 503
        assert response.json()["reasons"] == {"lifespan": "application startup not complete"}
        assert get(port, "/readyz", http2=True).status_code == 503
        assert get(port, "/healthz").status_code == 200
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            early = pool.submit(get, port, "/")  # waits for the start-up, is not refused
            assert get(port, "/healthz").status_code == 200
            assert not early.done()
            assert "Listening on" not in gateway.stderr
            release.touch()
            assert early.result(timeout=WAIT).text == "hello after startup"
        gateway.wait_listening()
        assert get(port, "/readyz").status_code == 200
        gateway.signal(signal.SIGTERM)
        assert gateway.wait() == 0


def test_sigterm_makes_readiness_503_while_liveness_stays_200_until_exit() -> None:
    port = free_port()
    args = ("tests.gateway.apps:readiness_reporter", "-p", str(port), *PROBES)
    with GatewayProcess(*args) as gateway:
        gateway.wait_listening()
        asyncio.run(_drain_with_a_websocket_open(gateway, port))
        assert gateway.wait() == 0
    with pytest.raises(httpx.ConnectError):  # gone: nothing answers any more
        get(port, "/healthz")


async def _drain_with_a_websocket_open(gateway: GatewayProcess, port: int) -> None:
    client = await RawClient.connect(port)
    assert (await client.handshake("/chat")).status == 101
    gateway.signal(signal.SIGTERM)
    assert (await client.expect_close()).code == 1001
    # The client holds its half of the closing handshake: the server drains, still up.
    assert gateway.proc.poll() is None
    async with httpx.AsyncClient(timeout=WAIT) as http:
        ready = await http.get(f"http://127.0.0.1:{port}/readyz")
        alive = await http.get(f"http://127.0.0.1:{port}/healthz")
        other = await http.get(f"http://127.0.0.1:{port}/")
    async with httpx.AsyncClient(http1=False, http2=True, timeout=WAIT) as http:
        ready_h2 = await http.get(f"http://127.0.0.1:{port}/readyz")
    assert gateway.proc.poll() is None, "the probes were answered during the drain"
    assert (ready.status_code, ready.json()["reasons"]) == (503, {"server": "shutting down"})
    assert ready_h2.status_code == 503
    assert alive.status_code == 200
    assert (other.status_code, other.headers["connection"]) == (503, "close")
    await client.send(close_frame(1001))
    assert await client.at_eof()
    client.close()
