"""The server: sockets of every kind, lifespan around serving, graceful drain, signals, workers.

In-process tests run ``Server.serve()`` on port 0 in the test's loop; process tests run
``python -m roomcast.gateway`` and talk to it over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from roomcast.gateway.config import ASGIApp, Config, ConfigError
from roomcast.gateway.logging import configure_logging, log_access
from roomcast.gateway.server import Server, bind_sockets, close_sockets

from tests.gateway import apps
from tests.gateway.apps import (
    MARKER_ENV,
    GatewayProcess,
    free_port,
    one_error_line,
    preserved_logging,
)
from tests.tls_support import self_signed_certificate


@asynccontextmanager
async def serving(app: ASGIApp, **settings: Any) -> AsyncIterator[tuple[Server, str]]:
    """A Server on a free port in this loop; yields it and its base URL, then stops it."""
    settings.setdefault("port", 0)
    settings.setdefault("verbosity", 0)
    server = Server(Config(app=app, **settings))
    server.install_signal_handlers = False
    task = asyncio.create_task(server.serve())
    started = asyncio.create_task(server.started.wait())
    await asyncio.wait([task, started], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises what went wrong
    assert server.started.is_set(), "server did not start"
    host, port = server.sockets[0].getsockname()[:2]
    scheme = "https" if settings.get("ssl_certfile") else "http"
    try:
        yield server, f"{scheme}://{host}:{port}"
    finally:
        server.exit()
        await asyncio.wait_for(task, 10)


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    with preserved_logging():
        yield


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "marker"
    monkeypatch.setenv(MARKER_ENV, str(path))
    return path


def marks(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


# In-process ---------------------------------------------------------------------------------


async def test_lifespan_state_reaches_requests_and_shutdown_runs(marker: Path) -> None:
    async with serving(apps.state) as (server, url), httpx.AsyncClient() as client:
        response = await client.get(url)
        assert response.json() == {"greeting": "hello from startup", "pid": os.getpid()}
        assert marks(marker) == ["startup"]
    assert marks(marker) == ["startup", "shutdown"]
    assert server.state.connections == set()


async def test_server_header_follows_server_name() -> None:
    async with serving(apps.hello) as (_, url), httpx.AsyncClient() as client:
        assert (await client.get(url)).headers["server"] == "roomcast"
    async with serving(apps.hello, server_name=None) as (_, url), httpx.AsyncClient() as client:
        assert "server" not in (await client.get(url)).headers


async def test_shutdown_lets_the_request_in_flight_finish(marker: Path) -> None:
    async with serving(apps.slow) as (server, url), httpx.AsyncClient() as client:
        request = asyncio.create_task(client.get(f"{url}/?delay=0.4"))
        await wait_until(lambda: server.state.active == 1)
        server.exit()
        response = await request
        assert response.status_code == 200
        assert response.text == "done after 0.40"
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            await client.get(url)
    assert marks(marker) == ["startup", "shutdown"]


async def test_idle_keep_alive_connections_do_not_delay_shutdown() -> None:
    served = serving(apps.hello, graceful_timeout=30)
    async with served as (server, url), httpx.AsyncClient() as client:
        await client.get(url)  # the connection stays open, idle
        assert len(server.state.connections) == 1
        started = time.monotonic()
        server.exit()
        await wait_until(lambda: not server.state.connections, timeout=2)
        assert time.monotonic() - started < 1


async def test_graceful_timeout_cuts_requests_that_take_too_long(marker: Path) -> None:
    served = serving(apps.slow, graceful_timeout=0.2)
    async with served as (server, url), httpx.AsyncClient() as client:
        request = asyncio.create_task(client.get(f"{url}/?delay=30"))
        await wait_until(lambda: server.state.active == 1)
        started = time.monotonic()
        server.exit()
        with pytest.raises(httpx.HTTPError):
            await request
        assert time.monotonic() - started < 3
    assert server.state.tasks == set() or all(t.done() for t in server.state.tasks)
    assert marks(marker) == ["startup", "shutdown"]


async def test_forced_exit_skips_waiting_and_lifespan_shutdown(marker: Path) -> None:
    served = serving(apps.slow, graceful_timeout=30)
    async with served as (server, url), httpx.AsyncClient() as client:
        request = asyncio.create_task(client.get(f"{url}/?delay=30"))
        await wait_until(lambda: server.state.active == 1)
        started = time.monotonic()
        server.exit()
        await asyncio.sleep(0.1)
        server.exit(force=True)
        with pytest.raises(httpx.HTTPError):
            await request
        assert time.monotonic() - started < 3
    assert marks(marker) == ["startup"]


@pytest.mark.parametrize(("restart", "code"), [(False, 1001), (True, 1012)])
async def test_websockets_are_closed_going_away_or_restarting(restart: bool, code: int) -> None:
    async with serving(apps.echo, graceful_timeout=5) as (server, url):
        ws_url = url.replace("http", "ws", 1)
        async with websockets.connect(ws_url, ping_interval=None) as ws:
            await ws.send("ping")
            assert await ws.recv() == "ping"
            server.exit(restart=restart)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == code


async def test_tls(tmp_path: Path) -> None:
    certfile, keyfile = self_signed_certificate(tmp_path)
    settings = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
    async with serving(apps.hello, **settings) as (_, url):
        assert url.startswith("https://")
        async with httpx.AsyncClient(verify=False) as client:
            assert (await client.get(url)).text == "hello"


async def test_ipv6_loopback() -> None:
    if not _ipv6_available():
        pytest.skip("no IPv6 loopback here")
    async with serving(apps.hello, host="::1") as (server, _):
        port = server.sockets[0].getsockname()[1]
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://[::1]:{port}/")).text == "hello"


def test_unix_socket_binding_replaces_stale_files_only(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    config = Config(app="unused:app", uds=str(path))
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays behind, nobody listens: stale
    sockets = bind_sockets(config)
    assert path.stat().st_mode & 0o777 == 0o666
    with pytest.raises(ConfigError, match="another server is listening"):
        bind_sockets(config)
    close_sockets(sockets, config)
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        bind_sockets(config)
    assert path.read_text() == "not a socket"


def test_bind_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"cannot listen on 203\.0\.113\.9:"):
        bind_sockets(Config(app="unused:app", host="203.0.113.9", port=free_port()))
    with pytest.raises(ConfigError, match="--fd 999: not a usable socket"):
        bind_sockets(Config(app="unused:app", fd=999))


def test_access_log_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "access.log"
    configure_logging(Config(app="unused:app", access_log=str(path)))
    log_access(("127.0.0.1", 5000), "GET", "/path", "1.1", 200, 12, 0.0008)
    log_access(("::1", 5001), "POST", "/", "1.0", 413, 0, 1.25)
    log_access(None, "GET", "/", "1.1", 200, 5, 0.0)
    lines = [line.split(" ", 2)[2] for line in path.read_text().splitlines()]  # after the date
    assert lines == [
        '127.0.0.1:5000 - "GET /path HTTP/1.1" 200 12 0.8ms',
        '[::1]:5001 - "POST / HTTP/1.0" 413 0 1250.0ms',
        '- - "GET / HTTP/1.1" 200 5 0.0ms',
    ]
    configure_logging(Config(app="unused:app", access_log="-"))
    log_access(("127.0.0.1", 5000), "GET", "/", "1.1", 204, 0, 0.001)
    assert capsys.readouterr().out.endswith('127.0.0.1:5000 - "GET / HTTP/1.1" 204 0 1.0ms\n')


def test_access_log_is_on_unless_turned_off_and_verbosity_sets_levels() -> None:
    configure_logging(Config(app="unused:app"))  # Daphne's default: stdout
    assert logging.getLogger("roomcast.gateway.access").isEnabledFor(logging.INFO)
    configure_logging(Config(app="unused:app", access_log=None))
    assert not logging.getLogger("roomcast.gateway.access").isEnabledFor(logging.CRITICAL)
    expected = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}
    for verbosity, level in expected.items():
        configure_logging(Config(app="unused:app", verbosity=verbosity))
        assert logging.getLogger("roomcast.gateway.error").getEffectiveLevel() == level
        # The server's lines go through the project logger's one handler: replaced, not stacked.
        assert len(logging.getLogger("roomcast").handlers) == 1


def test_access_log_unwritable_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open access log"):
        configure_logging(Config(app="unused:app", access_log=str(tmp_path / "no" / "log")))


async def test_requests_reach_the_access_log(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    async with serving(apps.hello, access_log=str(path)) as (_, url), httpx.AsyncClient() as client:
        await client.get(f"{url}/greet")
    (line,) = path.read_text().splitlines()
    assert re.search(r'127\.0\.0\.1:\d+ - "GET /greet HTTP/1\.1" 200 5 \d+\.\dms$', line), line


# Processes ----------------------------------------------------------------------------------


def test_sigterm_exits_0_after_lifespan_shutdown(marker: Path) -> None:
    port = free_port()
    with GatewayProcess("tests.gateway.apps:hello", "-p", str(port)) as gateway:
        gateway.wait_listening()
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"
        gateway.signal(signal.SIGTERM)
        assert gateway.wait() == 0
        assert "Application shutdown complete" in gateway.stderr
    assert marks(marker) == ["startup", "shutdown"]


def test_sigint_drains_and_a_second_signal_exits_at_once(marker: Path) -> None:
    port = free_port()
    with GatewayProcess("tests.gateway.apps:slow", "-p", str(port)) as gateway:
        gateway.wait_listening()
        # A request in flight: the first signal waits for it (up to --graceful-timeout 30 s).
        url = f"http://127.0.0.1:{port}/?delay=30&mark=1"
        with in_thread(httpx.get, url, timeout=60) as result:
            deadline = time.monotonic() + 15
            while "request" not in marks(marker):
                assert time.monotonic() < deadline, "the request never reached the app"
                time.sleep(0.02)
            gateway.signal(signal.SIGINT)
            gateway.wait_for("Shutting down")
            time.sleep(0.2)
            assert gateway.proc.poll() is None
            started = time.monotonic()
            gateway.signal(signal.SIGINT)
            assert gateway.wait(timeout=5) == 0
            assert time.monotonic() - started < 3
        assert isinstance(result[0], httpx.HTTPError)
    assert marks(marker) == ["startup", "request"]  # a forced exit skips the lifespan shutdown


def test_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sock"
    with GatewayProcess("tests.gateway.apps:hello", "-u", str(path)) as gateway:
        gateway.wait_listening()
        assert f"Listening on unix:{path}" in gateway.stderr
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport) as client:
            assert client.get("http://gateway/").text == "hello"
        gateway.signal(signal.SIGTERM)
        assert gateway.wait() == 0
    assert not path.exists()


def test_inherited_fd() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        fd = listener.fileno()
        with GatewayProcess("tests.gateway.apps:hello", "--fd", str(fd), pass_fds=[fd]) as gateway:
            gateway.wait_listening()
            assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"
            gateway.signal(signal.SIGTERM)
            assert gateway.wait() == 0


def test_workers_share_the_port_and_a_dead_worker_is_replaced(marker: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with GatewayProcess("tests.gateway.apps:pid", "-p", str(port), "--workers", "2") as gateway:
        gateway.wait_for(r"Listening on .* with 2 workers")
        first = pids_serving(url, want=2)
        assert len(first) == 2
        assert gateway.proc.pid not in first
        victim = first.pop()
        os.kill(victim, signal.SIGKILL)
        gateway.wait_for(rf"Worker \d \(pid {victim}\) was killed by SIGKILL; restarting")
        (replacement,) = gateway.wait_for(r"Started worker \d \(pid (\d+)\)")
        assert int(replacement) != victim
        seen = pids_serving(url, want=2, must_include={int(replacement)})
        assert int(replacement) in seen
        assert victim not in seen
        # Ctrl-C in a terminal reaches the whole process group: workers leave SIGINT to the
        # supervisor, which asks each of them once (twice would skip their lifespan shutdown).
        os.killpg(gateway.proc.pid, signal.SIGINT)
        assert gateway.wait() == 0
        assert "All workers stopped" in gateway.stderr
    record = marks(marker)
    assert record.count("startup") == 3
    assert record.count("shutdown") == 2  # the two live workers; the killed one could not


def test_workers_finish_requests_in_flight_and_refuse_new_ones() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with GatewayProcess("tests.gateway.apps:slow", "-p", str(port), "--workers", "2") as gateway:
        gateway.wait_for(r"Listening on .* with 2 workers")
        with in_thread(httpx.get, f"{url}/?delay=1", timeout=10) as result:
            time.sleep(0.3)
            gateway.signal(signal.SIGTERM)
            gateway.wait_for("Shutting down")
            with pytest.raises(httpx.ConnectError):
                httpx.get(url, timeout=2)
        assert result[0].status_code == 200
        assert result[0].text == "done after 1.00"
        assert gateway.wait() == 0


def test_workers_stop_when_their_supervisor_is_killed(marker: Path) -> None:
    args = ("-p", str(free_port()), "--workers", "2")
    with GatewayProcess("tests.gateway.apps:hello", *args) as gateway:
        (line,) = gateway.wait_for(r"Listening on .* \(pids (\d+), (\d+);")
        workers = [int(pid) for pid in line]
        gateway.proc.kill()
        gateway.wait()
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, "workers outlived their supervisor"
            time.sleep(0.05)
    assert marks(marker).count("shutdown") == 2  # they stopped gracefully


def test_workers_with_a_bad_app_path_report_one_line() -> None:
    args = ("-p", str(free_port()), "--workers", "2")
    with GatewayProcess("tests.gateway.apps:missing", *args) as gateway:
        status, stderr = gateway.finish()
    assert status == 1
    assert "has no attribute 'missing'" in one_error_line(stderr)


def test_workers_with_a_failing_startup_report_one_line() -> None:
    args = ("-p", str(free_port()), "--workers", "2")
    with GatewayProcess("tests.gateway.apps:startup_fails", *args) as gateway:
        status, stderr = gateway.finish()
    assert status == 3
    assert "database unreachable" in one_error_line(stderr)


def test_workers_that_die_during_the_first_start_up_stop_the_server() -> None:
    args = ("-p", str(free_port()), "--workers", "2")
    with GatewayProcess("tests.gateway.apps:startup_crashes", *args) as gateway:
        status, stderr = gateway.finish()
    assert status == 1
    line = one_error_line(stderr)
    assert re.fullmatch(r"roomcast: error: worker \d exited with code 7 during start-up", line)


def test_workers_that_keep_dying_stop_the_server(marker: Path) -> None:
    args = ("-p", str(free_port()), "--workers", "2")
    env = {"ROOMCAST_TEST_SIBLINGS": "2"}  # both first workers up before the first death
    with GatewayProcess("tests.gateway.apps:dies_soon", *args, env=env) as gateway:
        status, stderr = gateway.finish(timeout=30)
    assert status == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("roomcast: error: workers keep dying (5 exits within 10 s,"), last
    assert last.endswith("exited with code 7)")
    assert stderr.count("restarting it in") == 4


# Helpers ------------------------------------------------------------------------------------


def pids_serving(
    url: str, want: int, must_include: set[int] | None = None, timeout: float = 10.0
) -> set[int]:
    """The pids answering fresh connections to ``url``, until ``want`` were seen."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen.add(int(httpx.get(url, headers={"connection": "close"}).text))
        except httpx.TransportError:
            continue  # a connection the killed worker had accepted
        if len(seen) >= want and (must_include or set()) <= seen:
            break
    return seen


class in_thread:  # lower case: it reads like a function call in a with statement
    """Run a blocking call in a thread; ``result[0]`` is its return value or exception."""

    def __init__(self, func: Any, *args: Any, **kwargs: Any) -> None:
        self.result: list[Any] = [None]

        def target() -> None:
            try:
                self.result[0] = func(*args, **kwargs)
            except Exception as exc:
                self.result[0] = exc

        self.thread = threading.Thread(target=target, daemon=True)

    def __enter__(self) -> list[Any]:
        self.thread.start()
        return self.result

    def __exit__(self, *exc: object) -> None:
        self.thread.join(10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its new parent) counts as gone.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"
    return True


def _ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True
