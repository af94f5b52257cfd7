"""Process titles: ``ps`` shows each gateway process's role (setproctitle, in the dev extra).

Read from /proc/<pid>/cmdline, which setproctitle rewrites on Linux. Without setproctitle the
gateway serves as before, under its command line.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from roomcast.gateway.config import Config
from roomcast.gateway.proctitle import title

from tests.gateway.apps import GatewayProcess, free_port

WAIT = 20.0
APP = "tests.gateway.apps:pid"


def cmdline(pid: int) -> str:
    raw = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def titles_of(pids: list[int]) -> set[str]:
    return {cmdline(pid) for pid in pids}


def wait_titles(pids: object, wanted: set[str]) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        seen = titles_of(pids())  # type: ignore[operator]
        if wanted <= seen:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"titles {seen}, wanted {wanted}")
        time.sleep(0.05)


def test_title_names_the_role_and_the_app_module() -> None:
    config = Config(app="myproject.asgi:application", workers=4)
    assert title("worker 2 of 4", config) == "roomcast: worker 2 of 4 [myproject.asgi]"


def test_a_single_server_is_titled_server() -> None:
    port = free_port()
    with GatewayProcess(APP, "-p", str(port)) as gateway:
        gateway.wait_listening()
        assert cmdline(gateway.proc.pid) == "roomcast: server [tests.gateway.apps]"


def test_supervisor_and_workers_are_titled() -> None:
    port = free_port()
    with GatewayProcess(APP, "-p", str(port), "--workers", "2") as gateway:
        gateway.wait_listening(timeout=WAIT)
        supervisor = gateway.proc.pid
        assert cmdline(supervisor) == "roomcast: supervisor [tests.gateway.apps]"
        workers = {
            "roomcast: worker 1 of 2 [tests.gateway.apps]",
            "roomcast: worker 2 of 2 [tests.gateway.apps]",
        }
        wait_titles(lambda: children(supervisor), workers)
        served = int(httpx.get(f"http://127.0.0.1:{port}/").text)
        assert cmdline(served) in workers


def test_the_reloader_and_its_server_are_titled(tmp_path: Path) -> None:
    port = free_port()
    args = ("-p", str(port), "--reload", "--reload-dir", str(tmp_path))
    with GatewayProcess(APP, *args) as gateway:
        gateway.wait_listening(timeout=WAIT)
        assert cmdline(gateway.proc.pid) == "roomcast: reloader [tests.gateway.apps]"
        wanted = {"roomcast: server (reloading) [tests.gateway.apps]"}
        wait_titles(lambda: children(gateway.proc.pid), wanted)


def test_without_setproctitle_the_gateway_serves_under_its_command_line(tmp_path: Path) -> None:
    fake = tmp_path / "setproctitle"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('setproctitle is not installed')\n")
    port = free_port()
    env = {"PYTHONPATH": str(tmp_path)}
    with GatewayProcess(APP, "-p", str(port), env=env) as gateway:
        gateway.wait_listening()
        assert httpx.get(f"http://127.0.0.1:{port}/").text.isdigit()
        assert "roomcast.gateway" in cmdline(gateway.proc.pid)
        assert not cmdline(gateway.proc.pid).startswith("roomcast:")
