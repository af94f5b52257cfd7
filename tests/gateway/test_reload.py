"""``roomcast serve --reload``: a real supervisor and its server process in a project folder
of the test's own. A change is served by a new process; a syntax error is one line and the
supervisor waits for the next good save; SIGTERM stops both; --workers is refused.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest
import websockets.sync.client
from click.testing import CliRunner
from roomcast.gateway import cli
from roomcast.gateway.reload import Watch, changed
from websockets.exceptions import ConnectionClosed

from tests.gateway.apps import GatewayProcess, free_port

WAIT = 20.0
APP = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({{"type": message["type"] + ".complete"}})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        await receive()
        await send({{"type": "websocket.accept"}})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    body = {body!r}
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": body}})
"""


def write_app(path: Path, body: bytes) -> None:
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(APP.format(body=body))
    while path.stat().st_mtime_ns == before:  # a coarse clock: make the change visible
        time.sleep(0.01)
        path.write_text(APP.format(body=body))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_change_is_served_a_syntax_error_waits_and_sigterm_stops_both(tmp_path: Path) -> None:
    module = tmp_path / "project_app.py"
    write_app(module, b"version one")
    port = free_port()
    args = ("project_app:app", "--reload", "-p", str(port), "--graceful-timeout", "5")
    with GatewayProcess(*args, cwd=tmp_path) as gateway:
        gateway.wait_for(r"Listening on \S+ \(server pid \d+", timeout=WAIT)
        base = f"http://127.0.0.1:{port}/"
        assert httpx.get(base, timeout=WAIT).text == "version one"

        with websockets.sync.client.connect(f"ws://127.0.0.1:{port}/") as ws:
            write_app(module, b"version two, longer")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=WAIT)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1012  # a restart, not a shutdown
        gateway.wait_for(r"Listening on \S+ \(server pid \d+", count=2, timeout=WAIT)
        assert "Change in project_app.py: restarting" in gateway.stderr
        assert httpx.get(base, timeout=WAIT).text == "version two, longer"

        module.write_text("async def app(scope, receive, send)\n    pass\n")  # no colon
        (line,) = gateway.wait_for(r"[^\n]*cannot import the application[^\n]*", timeout=WAIT)
        assert "project_app.py, line 1" in line
        assert "waiting for a change" in line
        assert "Traceback" not in gateway.stderr
        assert gateway.proc.poll() is None  # the supervisor stays

        write_app(module, b"version three")
        lines = gateway.wait_for(r"Listening on \S+ \(server pid (\d+)", count=3, timeout=WAIT)
        assert httpx.get(base, timeout=WAIT).text == "version three"
        assert len(re.findall("cannot import the application", gateway.stderr)) == 1

        server_pid = int(lines[-1])
        gateway.signal(signal.SIGTERM)
        assert gateway.wait(timeout=WAIT) == 0
    deadline = time.monotonic() + WAIT
    while alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(server_pid), "the server process outlived its supervisor"


def test_watch_globs_and_skipped_folders(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("x")
    (tmp_path / "page.html").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    for folder in (".git", "__pycache__", "node_modules", "venv", "build"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "mod.py").write_text("x")
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("x")
    (tmp_path / "pkg" / "test_mod.py").write_text("x")

    def names(**settings: tuple[str, ...]) -> list[str]:
        watch = Watch((tmp_path,), **settings)
        return sorted(str(Path(p).relative_to(tmp_path)) for p in watch.scan())

    assert names() == ["app.py", "build/mod.py", "pkg/mod.py", "pkg/test_mod.py"]
    assert names(includes=("*.py", "*.html"), excludes=("build", "test_*")) == [
        "app.py",
        "page.html",
        "pkg/mod.py",
    ]
    before = Watch((tmp_path,)).scan()
    (tmp_path / "pkg" / "new.py").write_text("x")
    (tmp_path / "app.py").unlink()
    assert changed(before, Watch((tmp_path,)).scan()) == [
        str(tmp_path / "app.py"),
        str(tmp_path / "pkg" / "new.py"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reload", "--workers", "2"], "--reload runs one server process"),
        (["--reload-dir", "."], "--reload-dir needs --reload"),
        (["--reload-include", "*.html"], "--reload-include needs --reload"),
        (["--reload", "--reload-dir", "/no/such/dir"], "is not a directory"),
    ],
)
def test_reload_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli.main, [*args, "a:b"])
    assert result.exit_code == 2
    assert message in result.output
