"""Logs: text and JSON for every project logger, escaping, --log-config, SIGHUP reopening.

Every test but the formatter units runs a real ``python -m roomcast.gateway`` process and reads
what it wrote to stdout, stderr or its files, as an operator's log shipper would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from roomcast.gateway.config import Config, ConfigError
from roomcast.gateway.logging import (
    JSONFormatter,
    TextFormatter,
    configure_logging,
    escape_controls,
    logging_config,
)

from tests.gateway.apps import GatewayProcess, free_port

APP = "tests.gateway.ops_apps:project_loggers"
WAIT = 15.0
# A path that decodes to a fake log line after a newline, with a terminal escape in it.
FORGING_PATH = "/boom%0A2030-01-01%2000:00:00,000%20CRITICAL%20forged%1b[31m"


def wait_until(predicate: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as a JSON object (asserted: a line that is not one fails)."""
    entries = []
    for line in text.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


async def websocket_session(port: int) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/chat/?room=1") as ws:
        for text in ("one", "two"):
            await ws.send(text)
            assert await asyncio.wait_for(ws.recv(), WAIT) == text


# Units ------------------------------------------------------------------------------------


def record(message: str, *args: Any, **extra: Any) -> logging.LogRecord:
    entry = logging.LogRecord("roomcast.test", logging.WARNING, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(entry, key, value)
    return entry


def test_escape_controls_writes_each_control_character_as_hex() -> None:
    assert escape_controls("plain é text") == "plain é text"
    assert escape_controls("a\nb\rc\x1b[31m\x00\x7f\x9b\u2028") == (
        "a\\x0ab\\x0dc\\x1b[31m\\x00\\x7f\\x9b\\u2028"
    )
    assert escape_controls("line\nnext\tx\x1b", keep_newlines=True) == "line\nnext\tx\\x1b"


def test_text_formatter_escapes_the_message_not_the_traceback_lines() -> None:
    formatter = TextFormatter("%(levelname)s %(message)s")
    assert (
        formatter.format(record("path %s", "/a\nFORGED\x1b")) == "WARNING path /a\\x0aFORGED\\x1b"
    )
    try:
        raise ValueError("bad\x1b")
    except ValueError:
        failing = record("failed")
        failing.exc_info = sys.exc_info()
    text = formatter.format(failing)
    assert text.startswith("WARNING failed\nTraceback")
    assert "ValueError: bad\\x1b" in text


def test_json_formatter_one_line_every_field_and_control_characters_escaped() -> None:
    line = JSONFormatter().format(record("GET %s", "/a\n\x1b\x9b", method="GET", status=200))
    assert "\n" not in line
    assert "\x1b" not in line
    assert "\x9b" not in line
    entry = json.loads(line)
    assert entry["message"] == "GET /a\n\x1b\x9b"  # reads back as what was logged
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "roomcast.test"
    assert (entry["method"], entry["status"]) == ("GET", 200)
    assert entry["time"][10] == "T"
    assert entry["time"][-6] in "+-"


def test_logging_config_is_a_dictconfig_for_every_project_logger() -> None:
    config = logging_config(Config(app="a:b", log_format="json", access_log="-"))
    assert config["version"] == 1
    assert config["disable_existing_loggers"] is False
    assert config["loggers"]["roomcast"]["handlers"] == ["roomcast.server"]
    assert config["handlers"]["roomcast.server"]["formatter"] == "roomcast.json"
    assert config["handlers"]["roomcast.access"]["formatter"] == "roomcast.json"


def test_bad_log_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="log_format must be text or json"):
        Config(app="a:b", log_format="xml")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cannot open log file"):
        configure_logging(Config(app="a:b", log_file=str(tmp_path / "no" / "such.log")))
    with pytest.raises(ConfigError, match="no such file"):
        configure_logging(Config(app="a:b", log_config=str(tmp_path / "missing.json")))
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}')
    with pytest.raises(ConfigError, match="not a usable logging configuration"):
        configure_logging(Config(app="a:b", log_config=str(broken)))
    not_a_mapping = tmp_path / "list.json"
    not_a_mapping.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        configure_logging(Config(app="a:b", log_config=str(not_a_mapping)))


# Real processes ------------------------------------------------------------------------------


def test_json_logs_one_object_per_line_for_each_kind() -> None:
    port = free_port()
    with GatewayProcess(APP, "-p", str(port), "--log-format", "json") as gateway:
        gateway.wait_listening()
        assert httpx.get(f"http://127.0.0.1:{port}/hello?x=1").text == "hello"
        assert httpx.get(f"http://127.0.0.1:{port}{FORGING_PATH}").status_code == 500
        asyncio.run(websocket_session(port))
        wait_until(lambda: "WSDISCONNECT" in gateway.stdout, "the WebSocket's last line")
        gateway.signal(signal.SIGTERM)
        assert gateway.wait() == 0
        access, server = json_lines(gateway.stdout), json_lines(gateway.stderr)

    # The server's own lines, the layer's and the consumer's: the same shape.
    by_logger = {entry["logger"]: entry for entry in server}
    assert by_logger["roomcast.layers.redis.test"]["message"] == "layer line: Redis unreachable"
    assert by_logger["roomcast.consumers.test"]["level"] == "WARNING"
    assert any(entry["message"].startswith("Listening on") for entry in server)
    (failure,) = [entry for entry in server if "Exception in ASGI application" in entry["message"]]
    assert failure["level"] == "ERROR"
    assert "/boom\n2030-01-01 00:00:00,000 CRITICAL forged\x1b[31m" in failure["message"]
    assert "RuntimeError: boom on purpose" in failure["exception"]
    for entry in server:
        assert set(entry) >= {"time", "level", "logger", "message"}

    requests = [entry for entry in access if "method" in entry]
    hello = next(entry for entry in requests if entry["path"] == "/hello?x=1")
    assert hello["logger"] == "roomcast.gateway.access"
    assert (hello["method"], hello["status"], hello["bytes"]) == ("GET", 200, 5)
    assert hello["protocol"] == "HTTP/1.1"
    assert hello["client"].startswith("127.0.0.1:")
    assert isinstance(hello["duration"], float)
    assert hello["duration"] >= 0
    events = {entry["event"]: entry for entry in access if "event" in entry}
    assert set(events) == {"WSCONNECTING", "WSCONNECT", "WSDISCONNECT"}
    assert events["WSCONNECTING"]["path"] == "/chat/?room=1"
    assert events["WSCONNECT"]["status"] == 101
    end = events["WSDISCONNECT"]
    assert (end["status"], end["closed_by"]) == (1000, "client")
    assert (end["messages_in"], end["messages_out"]) == (2, 2)
    assert end["duration"] > 0


def test_text_logs_have_time_and_level_for_every_project_logger_and_cannot_be_forged() -> None:
    port = free_port()
    with GatewayProcess(APP, "-p", str(port)) as gateway:
        gateway.wait_listening()
        assert httpx.get(f"http://127.0.0.1:{port}{FORGING_PATH}").status_code == 500
        wait_until(lambda: "Exception in ASGI application" in gateway.stderr, "the error line")
        stderr = gateway.stderr
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    lines = stderr.splitlines()
    layer = next(line for line in lines if "layer line" in line)
    consumer = next(line for line in lines if "consumer line" in line)
    for line in (layer, consumer):
        assert re.match(stamp + r"WARNING ", line), line
    assert "\x1b" not in stderr
    assert not any(line.startswith("2030-01-01") for line in lines), "a forged line"
    error = next(line for line in lines if "Exception in ASGI application" in line)
    assert "/boom\\x0a2030-01-01 00:00:00,000 CRITICAL forged\\x1b[31m" in error


def test_log_config_files_replace_the_configuration(tmp_path: Path) -> None:
    formats = {
        "json": json.dumps(
            {
                "version": 1,
                "formatters": {"mine": {"format": "MINE-JSON %(name)s | %(message)s"}},
                "handlers": {"err": {"class": "logging.StreamHandler", "formatter": "mine"}},
                "loggers": {"roomcast": {"handlers": ["err"], "level": "INFO"}},
            }
        ),
        "yaml": (
            "version: 1\n"
            "formatters: {mine: {format: 'MINE-YAML %(name)s | %(message)s'}}\n"
            "handlers: {err: {class: logging.StreamHandler, formatter: mine}}\n"
            "loggers: {roomcast: {handlers: [err], level: INFO}}\n"
        ),
        "ini": (
            "[loggers]\nkeys=root,roomcast\n\n[handlers]\nkeys=err\n\n"
            "[formatters]\nkeys=mine\n\n[logger_root]\nlevel=WARNING\nhandlers=\n\n"
            "[logger_roomcast]\nlevel=INFO\nhandlers=err\nqualname=roomcast\npropagate=0\n\n"
            "[handler_err]\nclass=StreamHandler\nformatter=mine\nargs=(sys.stderr,)\n\n"
            "[formatter_mine]\nformat=MINE-INI %(name)s | %(message)s\n"
        ),
    }
    for suffix, text in formats.items():
        path = tmp_path / f"logging.{suffix}"
        path.write_text(text)
        port = free_port()
        with GatewayProcess(APP, "-p", str(port), "--log-config", str(path)) as gateway:
            gateway.wait_listening()
            stderr = gateway.stderr
        mark = f"MINE-{suffix.upper()} "
        assert f"{mark}roomcast.gateway.error | Listening on" in stderr, stderr
        assert f"{mark}roomcast.layers.redis.test | layer line" in stderr, stderr


def test_a_bad_log_config_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "logging.json"
    path.write_text('{"version": 1, "formatters": {"x": {"()": "no.such.Formatter"}}}')
    with GatewayProcess(APP, "-p", str(free_port()), "--log-config", str(path)) as gateway:
        status, stderr = gateway.finish()
    assert status == 1
    (line,) = stderr.strip().splitlines()
    assert line.startswith("roomcast: error: --log-config")
    assert "not a usable" in line


def test_log_format_comes_from_the_environment() -> None:
    port = free_port()
    env = {"ROOMCAST_LOG_FORMAT": "json"}
    with GatewayProcess(APP, "-p", str(port), env=env) as gateway:
        gateway.wait_listening()
        entries = json_lines(gateway.stderr)
    assert any(entry["message"].startswith("Listening on") for entry in entries)


# SIGHUP ----------------------------------------------------------------------------------------


def rotate_and_hup(gateway: GatewayProcess, port: int, files: list[Path], path: str) -> None:
    """Rename each file to .1, HUP the gateway, and wait until a new request is logged anew."""
    for file in files:
        file.rename(file.with_name(file.name + ".1"))
    gateway.signal(signal.SIGHUP)
    # The reopening is announced in the new server log; then a request lands in the new one.
    wait_until(lambda: files[-1].exists() and "reopened" in files[-1].read_text(), "reopen")
    assert httpx.get(f"http://127.0.0.1:{port}{path}").text == "hello"
    wait_until(lambda: files[0].exists() and path in files[0].read_text(), "the new line")


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reopens_rotated_log_files_and_keeps_serving(tmp_path: Path, workers: int) -> None:
    access, server = tmp_path / "access.log", tmp_path / "server.log"
    port = free_port()
    args = ["-p", str(port), "--access-log", str(access), "--log-file", str(server)]
    args += ["--workers", str(workers)]
    with GatewayProcess(APP, *args) as gateway:
        wait_until(lambda: server.exists() and "Listening on" in server.read_text(), "listening")
        pid = gateway.proc.pid
        assert httpx.get(f"http://127.0.0.1:{port}/before").text == "hello"
        wait_until(lambda: "/before" in access.read_text(), "the first access line")

        rotate_and_hup(gateway, port, [access, server], "/after")
        assert gateway.proc.poll() is None
        assert gateway.proc.pid == pid
        # Every worker reopened its files: each one's next request goes to the new file.
        if workers > 1:
            wait_until(
                lambda: server.read_text().count("reopened") >= workers + 1,
                "every process reopening",
            )
            for i in range(8):
                assert httpx.get(f"http://127.0.0.1:{port}/many{i}").text == "hello"
            wait_until(lambda: access.read_text().count("/many") == 8, "the later lines")
        old_access = (tmp_path / "access.log.1").read_text()
        assert "/before" in old_access
        assert "/after" not in old_access
        assert "/many" not in old_access
        assert "/after" in access.read_text()
        assert "/before" not in access.read_text()

        # A second rotation works the same way.
        for file in (access, server):
            file.with_name(file.name + ".1").unlink()
        rotate_and_hup(gateway, port, [access, server], "/again")
        gateway.signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
    assert "Traceback" not in server.read_text()


def test_sighup_without_log_files_is_harmless() -> None:
    port = free_port()
    with GatewayProcess(APP, "-p", str(port)) as gateway:
        gateway.wait_listening()
        gateway.signal(signal.SIGHUP)
        gateway.wait_for("reopened 0 log file")
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"
        assert gateway.proc.poll() is None
