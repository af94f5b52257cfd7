"""``python manage.py runserver`` with ``"roomcast"`` in INSTALLED_APPS: a real project, served
by the real command, asked by real clients (httpx, websockets) over real sockets.

Each test writes the small project of ``tests/django/project.py`` into its own directory and
runs ``manage.py`` there, as a developer does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.django.project import STATIC_TEXT, VIEW_V1, VIEW_V2, set_view_text, write_project
from tests.django.support import (
    STARTED,
    ManageProcess,
    free_port,
    group_is_gone,
    manage,
    project_env,
)
from tests.tls_support import self_signed_certificate

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "project")


def runserver(project: Path, *args: str, **env: str) -> ManageProcess:
    return ManageProcess(project, "runserver", *args, env=project_env(**env))


async def chat_pair(url: str) -> tuple[ClientConnection, ClientConnection]:
    one = await connect(url, open_timeout=10)
    two = await connect(url, open_timeout=10)
    return one, two


async def closed_with(websocket: ClientConnection, timeout: float = 30.0) -> int | None:
    await asyncio.wait_for(websocket.wait_closed(), timeout)
    return websocket.close_code


def port_is_closed(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> bool:
    """True once nothing accepts connections on the port any more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                pass
        except OSError:
            return True
        time.sleep(0.05)
    return False


def assert_no_traceback(process: ManageProcess) -> None:
    assert "Traceback" not in process.stderr, process.stderr
    assert "Traceback" not in process.stdout, process.stdout


# Serving --------------------------------------------------------------------------------


async def test_serves_the_page_a_websocket_chat_and_static_files(project: Path) -> None:
    port = free_port()
    with runserver(project, "--noreload", f"127.0.0.1:{port}") as server:
        url = server.wait_started()
        assert url == f"http://127.0.0.1:{port}/"
        assert (
            f"Starting roomcast ASGI server for mysite.asgi.application at {url}" in server.stdout
        )
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            page = await http.get("/")
            static = await http.get("/static/chat/hello.txt")
        assert (page.status_code, page.text) == (200, VIEW_V1)
        assert (static.status_code, static.text) == (200, STATIC_TEXT)  # DEBUG: staticfiles

        # Two clients in one room of the in-memory layer: each hears what the other says.
        one, two = await chat_pair(f"ws://127.0.0.1:{port}/ws/chat/")
        try:
            await one.send("hello from one")
            assert await asyncio.wait_for(two.recv(), 10) == "hello from one"
            assert await asyncio.wait_for(one.recv(), 10) == "hello from one"
            await two.send("hello from two")
            assert await asyncio.wait_for(one.recv(), 10) == "hello from two"
        finally:
            await one.close()
            await two.close()
        server.wait_for(r'"GET /static/chat/hello.txt HTTP/1.1" 200')  # the access log
        assert_no_traceback(server)


async def test_http2_by_prior_knowledge_in_cleartext(project: Path) -> None:
    port = free_port()
    with runserver(project, "--noreload", str(port)) as server:  # a port alone: 127.0.0.1
        url = server.wait_started()
        assert url == f"http://127.0.0.1:{port}/"
        async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as http:
            response = await http.get(f"{url}scheme/")
        assert response.http_version == "HTTP/2"
        assert response.text == "http"


async def test_tls_serves_https_http2_by_alpn_and_wss(project: Path, tmp_path: Path) -> None:
    certfile, keyfile = self_signed_certificate(tmp_path)
    port = free_port()
    args = ("--noreload", "--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile))
    with runserver(project, *args, f"127.0.0.1:{port}") as server:
        url = server.wait_started()
        assert url == f"https://127.0.0.1:{port}/"
        trust = ssl.create_default_context(cafile=str(certfile))
        async with httpx.AsyncClient(http2=True, verify=trust, timeout=10) as http:
            response = await http.get(f"{url}scheme/")
            static = await http.get(f"{url}static/chat/hello.txt")
        assert response.http_version == "HTTP/2"  # chosen by ALPN
        assert response.text == "https"  # Django sees the scheme
        assert (static.http_version, static.text) == ("HTTP/2", STATIC_TEXT)
        # A context of its own: httpx offered h2 by ALPN on the one it was given.
        trust = ssl.create_default_context(cafile=str(certfile))
        async with connect(f"wss://127.0.0.1:{port}/ws/chat/", ssl=trust) as websocket:
            await websocket.send("over TLS")
            assert await asyncio.wait_for(websocket.recv(), 10) == "over TLS"


@pytest.mark.parametrize("how", ["-6", "[::1]"])
async def test_ipv6(project: Path, how: str) -> None:
    port = free_port()
    args = ("-6", str(port)) if how == "-6" else (f"[::1]:{port}",)
    with runserver(project, "--noreload", *args) as server:
        url = server.wait_started()
        assert url == f"http://[::1]:{port}/"
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(url)
        assert response.text == VIEW_V1


@pytest.mark.parametrize(
    ("debug", "flags", "status"),
    [
        ("1", (), 200),
        ("1", ("--nostatic",), 404),
        ("0", (), 404),
        ("0", ("--insecure",), 200),
    ],
    ids=["debug", "debug-nostatic", "no-debug", "no-debug-insecure"],
)
async def test_static_files_follow_debug_nostatic_and_insecure(
    project: Path, debug: str, flags: tuple[str, ...], status: int
) -> None:
    port = free_port()
    with runserver(project, "--noreload", *flags, f"127.0.0.1:{port}", TEST_DEBUG=debug) as server:
        url = server.wait_started()
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            static = await http.get("/static/chat/hello.txt")
            page = await http.get("/")
        assert static.status_code == status
        if status == 200:
            assert static.text == STATIC_TEXT
        assert page.text == VIEW_V1  # the application is served either way


# The autoreloader -------------------------------------------------------------------------


async def get_text(url: str) -> str | None:
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            return (await http.get(url)).text
    except httpx.HTTPError:
        return None  # restarting


def touch(path: Path) -> None:
    """Move the file's modification time forward, as a new edit of it would."""
    stamp = time.time() + 2
    os.utime(path, (stamp, stamp))


async def until(path: Path, done: Callable[[], Awaitable[bool]], timeout: float = 60) -> bool:
    """Touch ``path`` once a second until ``done()``: the reloader compares modification times
    once a second, and an edit made before it first looked at the file would go unseen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        touch(path)
        await asyncio.sleep(1)
        if await done():
            return True
    return False


async def test_an_edited_view_is_served_after_the_reload(project: Path) -> None:
    port = free_port()
    with runserver(project, f"127.0.0.1:{port}") as server:
        url = server.wait_started()
        assert await get_text(url) == VIEW_V1
        websocket = await connect(f"ws://127.0.0.1:{port}/ws/chat/", open_timeout=10)
        set_view_text(project, VIEW_V2)

        async def new_view() -> bool:
            return await get_text(url) == VIEW_V2

        assert await until(project / "chat" / "views.py", new_view), server.stdout + server.stderr
        assert server.wait_started(count=2) == url  # a new server process, same address
        assert "views.py changed, reloading." in server.stderr
        assert await closed_with(websocket) == 1012  # "service restart": clients reconnect
        server.signal(signal.SIGTERM)
        assert server.finish() == 0
        assert_no_traceback(server)


async def test_a_broken_module_shows_its_traceback_and_the_reloader_waits_for_the_fix(
    project: Path,
) -> None:
    consumers = project / "chat" / "consumers.py"
    good = consumers.read_text()
    consumers.write_text(good + "\nraise RuntimeError('a bug in the project')\n")
    port = free_port()
    with runserver(project, f"127.0.0.1:{port}") as server:
        server.wait_for_stderr(r"RuntimeError: a bug in the project")
        assert "Traceback" in server.stderr  # the user needs it
        assert server.proc.poll() is None  # still watching the files
        consumers.write_text(good)

        async def started() -> bool:
            return "Starting roomcast" in server.stdout

        assert await until(consumers, started), server.stdout + server.stderr
        assert await get_text(server.wait_started()) == VIEW_V1


# Stopping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reload", "sig", "to_group"),
    [
        (False, signal.SIGINT, False),
        (False, signal.SIGTERM, False),
        (True, signal.SIGINT, True),  # a terminal's Ctrl-C reaches the parent and the child
        (True, signal.SIGTERM, False),  # a process manager signals the parent only
        (True, signal.SIGINT, False),
    ],
    ids=["noreload-SIGINT", "noreload-SIGTERM", "reload-ctrl-c", "reload-SIGTERM", "reload-SIGINT"],
)
async def test_a_signal_ends_it_cleanly(
    project: Path, reload: bool, sig: signal.Signals, to_group: bool
) -> None:
    port = free_port()
    flags = () if reload else ("--noreload",)
    with runserver(project, *flags, f"127.0.0.1:{port}") as server:
        server.wait_started()
        websocket = await connect(f"ws://127.0.0.1:{port}/ws/chat/", open_timeout=10)
        if to_group:
            server.signal_group(sig)
        else:
            server.signal(sig)
        assert await closed_with(websocket) == 1001  # going away: drained, not dropped
        assert server.finish() == 0
        assert group_is_gone(server.proc.pid)  # no server process left behind
        assert port_is_closed(port)
        assert_no_traceback(server)


def child_pids(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


async def test_the_server_process_stops_when_the_reloader_is_killed(project: Path) -> None:
    port = free_port()
    with runserver(project, f"127.0.0.1:{port}") as server:
        server.wait_started()
        websocket = await connect(f"ws://127.0.0.1:{port}/ws/chat/", open_timeout=10)
        server.proc.kill()  # kill -9 of the process the developer started
        server.finish()
        assert await closed_with(websocket) == 1001  # the orphan stopped by itself
        assert port_is_closed(port)


def test_a_killed_server_process_ends_the_reloader_with_one_line(project: Path) -> None:
    port = free_port()
    with runserver(project, f"127.0.0.1:{port}") as server:
        server.wait_started()
        [child] = child_pids(server.proc.pid)
        os.kill(child, signal.SIGKILL)
        assert server.finish() == 128 + signal.SIGKILL
        assert "The server process was killed by SIGKILL." in server.stderr
        assert_no_traceback(server)


# Mistakes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reload", [False, True], ids=["noreload", "reload"])
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("no_application", "ASGI_APPLICATION is not set"),
        ("not_dotted", "ASGI_APPLICATION = 'application' is not a dotted path"),
        (
            "missing_module",
            "ASGI_APPLICATION = 'mysite.nosuch.application': cannot import module 'mysite.nosuch'",
        ),
        (
            "missing_attribute",
            "ASGI_APPLICATION = 'mysite.asgi.applicaton': module 'mysite.asgi' has no "
            "attribute 'applicaton'",
        ),
        ("not_callable", "ASGI_APPLICATION = 'mysite.settings.SECRET_KEY' is a str, not an"),
    ],
)
def test_a_bad_asgi_application_is_one_line(
    project: Path, settings: str, message: str, reload: bool
) -> None:
    flags = () if reload else ("--noreload",)
    done = manage(
        project, "runserver", *flags, f"--settings=mysite.settings_{settings}", str(free_port())
    )
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith(f"CommandError: {message}"), done.stderr
    assert "Traceback" not in done.stderr
    assert "Starting roomcast" not in done.stdout


@pytest.mark.parametrize("reload", [False, True], ids=["noreload", "reload"])
def test_a_port_in_use_is_one_line(project: Path, reload: bool) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags = () if reload else ("--noreload",)
        done = manage(project, "runserver", *flags, f"127.0.0.1:{port}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"CommandError: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_tls_mistakes_are_one_line(project: Path, tmp_path: Path) -> None:
    certfile, keyfile = self_signed_certificate(tmp_path)
    alone = manage(project, "runserver", "--noreload", "--ssl-certfile", str(certfile))
    assert alone.returncode == 1
    assert alone.stderr.strip() == (
        "CommandError: --ssl-certfile and --ssl-keyfile go together: give both"
    )
    missing = manage(
        project,
        "runserver",
        "--noreload",
        "--ssl-certfile",
        str(tmp_path / "nosuch.pem"),
        "--ssl-keyfile",
        str(keyfile),
    )
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"CommandError: --ssl-certfile {str(tmp_path / 'nosuch.pem')!r}: no such file"
    )
    swapped = manage(  # files that exist but are not a certificate and its key
        project,
        "runserver",
        "--noreload",
        "--ssl-certfile",
        str(keyfile),
        "--ssl-keyfile",
        str(certfile),
        str(free_port()),
    )
    assert swapped.returncode == 1
    assert swapped.stderr.strip().startswith("CommandError: cannot load TLS certificate")
    assert "Traceback" not in swapped.stderr


def test_bad_timeouts_are_usage_errors(project: Path) -> None:
    done = manage(project, "runserver", "--noreload", "--http_timeout", "0")
    assert done.returncode == 2
    assert "argument --http_timeout/--http-timeout: '0': must be above 0" in done.stderr


def test_roomcast_after_staticfiles_is_a_system_check_error(project: Path) -> None:
    done = manage(project, "check", "--settings=mysite.settings_staticfiles_first")
    assert done.returncode == 1
    assert "(roomcast.E001) 'roomcast' must be listed before 'django.contrib.staticfiles'" in (
        done.stderr
    )
    fine = manage(project, "check")
    assert fine.returncode == 0, fine.stderr


def test_help_lists_runserver_flags_and_ours(project: Path) -> None:
    done = manage(project, "help", "runserver")
    assert done.returncode == 0, done.stderr
    for flag in (
        "--noreload",
        "--nostatic",
        "--insecure",
        "--ipv6",
        "--skip-checks",
        "--ssl-certfile",
        "--ssl-keyfile",
        "--http_timeout",
        "--websocket_handshake_timeout",
    ):
        assert flag in done.stdout, flag
    assert "roomcast" in done.stdout


def test_skip_checks_skips_them(project: Path) -> None:
    port = free_port()
    with runserver(project, "--noreload", "--skip-checks", f"127.0.0.1:{port}") as server:
        server.wait_for(STARTED)
        assert "Performing system checks" not in server.stdout
