"""docs/daphne.md's table covers every Daphne flag, and ``roomcast serve`` accepts each.

The table is parsed: its first column must name exactly Daphne's flags (the list below, read
from Daphne's cli.py), and each row's example runs through the real ``roomcast`` command
group (``roomcast serve EXAMPLE APP``) with serving replaced by capturing the Config, which
must differ from the default one (the flag did something). A Daphne-style Procfile line with
most flags at once is then served by a real ``roomcast serve`` process. What the flags do is
tested in test_daphne_flags.py and test_endpoints.py.
"""

from __future__ import annotations

import re
import shlex
import signal
from pathlib import Path

import httpx
import pytest
import websockets.sync.client
from click.testing import CliRunner
from roomcast.gateway import cli
from roomcast.gateway.config import Config

from roomcast import cli as roomcast_cli
from tests.gateway.apps import ROOT, GatewayProcess, free_port

TABLE = ROOT / "docs" / "daphne.md"
APP = "tests.gateway.apps:hello"

# Daphne 4.2.2's daphne/cli.py, plus --ws-protocol (1.0-3.0) and --asgi-protocol (2.x).
DAPHNE_FLAGS = {
    *("-p", "--port", "-b", "--bind", "-u", "--unix-socket", "--fd", "-e", "--endpoint"),
    *("--websocket_timeout", "--websocket_connect_timeout", "-v", "--verbosity"),
    *("-t", "--http-timeout", "--access-log", "--log-fmt", "--ping-interval", "--ping-timeout"),
    *("--websocket-max-message-size", "--websocket-max-frame-size"),
    *("--application-close-timeout", "--root-path", "--proxy-headers", "--proxy-headers-host"),
    *("--proxy-headers-port", "-s", "--server-name", "--no-server-name", "-h", "--help"),
    *("--ws-protocol", "--asgi-protocol", "application"),
}


def table_rows() -> list[tuple[list[str], list[str]]]:
    """(flags, example arguments) of each row of the table under "Every Daphne flag"."""
    text = TABLE.read_text(encoding="utf-8")
    section = text.split("## Every Daphne flag", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("Daphne", "---"):
            continue
        flags = re.findall(r"`([^`]+)`", cells[0])
        (example,) = re.findall(r"`([^`]+)`", cells[2])
        rows.append((flags, shlex.split(example)))
    return rows


ROWS = table_rows()


def test_the_table_names_every_daphne_flag_once() -> None:
    named = [flag for flags, _ in ROWS for flag in flags]
    assert sorted(named) == sorted(DAPHNE_FLAGS)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    configs: list[Config] = []
    monkeypatch.setattr(cli, "serve", configs.append)
    return configs


@pytest.mark.parametrize(("flags", "example"), ROWS, ids=[flags[-1] for flags, _ in ROWS])
def test_roomcast_serve_accepts_the_flag(
    flags: list[str], example: list[str], captured: list[Config]
) -> None:
    args = ["serve", *example] if flags == ["application"] else ["serve", *example, APP]
    result = CliRunner().invoke(roomcast_cli.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    if "--help" in flags:
        assert "Usage:" in result.output
        assert captured == []
        return
    (config,) = captured
    if flags == ["application"]:
        assert config.app == APP
    else:
        assert config != Config(app=APP), f"{example} changed nothing"
        assert any(flag in example for flag in flags), "the example uses the row's flag"


def test_a_daphne_procfile_line_is_served_by_roomcast_serve(tmp_path: Path) -> None:
    """``daphne ...`` → ``roomcast serve ...`` with Daphne's flags, in a real process."""
    port = free_port()
    line = (
        f"-b 127.0.0.1 -p {port} --proxy-headers -s edge -v 1 --access-log {tmp_path / 'a.log'}"
        " --ping-interval 15 --ping-timeout 25 --websocket_timeout 600"
        " --websocket_connect_timeout 9 --application-close-timeout 4 -t 30"
        " --websocket-max-message-size 65536 --websocket-max-frame-size 16384"
        " --log-fmt '%(levelname)s %(message)s' tests.gateway.apps:echo --ws-protocol chat v2"
    )
    command = ("-m", "roomcast", "serve")
    with GatewayProcess(*shlex.split(line), command=command) as gateway:
        gateway.wait_listening()
        response = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert (response.text, response.headers["server"]) == ("hello", "edge")
        url = f"ws://127.0.0.1:{port}/"
        with websockets.sync.client.connect(url, subprotocols=["v2"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "v2"
            ws.send("hi")
            assert ws.recv(timeout=10) == "hi"
        gateway.signal(signal.SIGTERM)
        status, stderr = gateway.finish()
    assert status == 0, stderr
    assert "INFO Listening on" in stderr  # --log-fmt
    assert '"GET / HTTP/1.1" 200' in (tmp_path / "a.log").read_text()
