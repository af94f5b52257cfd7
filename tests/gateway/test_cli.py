"""The ``gateway`` command line: flags and ROOMCAST_* variables into Config, one-line errors."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from roomcast.gateway import cli
from roomcast.gateway.config import Config

from tests.gateway.apps import ROOT, GatewayProcess, free_port, one_error_line


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """Run the CLI in-process without serving: the Config it would serve is captured."""
    configs: list[Config] = []
    monkeypatch.setattr(cli, "serve", configs.append)
    return configs


def invoke(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli.main, args, env=env, catch_exceptions=False)


def test_help_shows_sections_flags_and_the_env_prefix() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roomcast.gateway", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    text = result.stdout
    for flag in (
        "--bind",
        "--port",
        "--unix-socket",
        "--fd",
        "--root-path",
        "--proxy-headers",
        "--forwarded-allow-ips",
        "--access-log",
        "--verbosity",
        "--ping-interval",
        "--ping-timeout",
        "--websocket-max-message-size",
        "--no-ws-per-message-deflate",
        "--websocket-write-buffer",
        "--websocket-write-timeout",
        "--application-close-timeout",
        "--server-name",
        "--no-server-name",
        "--workers",
        "--ssl-certfile",
        "--ssl-keyfile",
        "--ssl-keyfile-password",
        "--lifespan",
        "--timeout-keep-alive",
        "--timeout-request-headers",
        "--limit-concurrency",
        "--limit-request-body",
        "--limit-request-head",
        "--graceful-timeout",
        "--backlog",
        "--factory",
        "--http-timeout",
        "--websocket_timeout",
        "--websocket-timeout",
        "--websocket_connect_timeout",
        "--websocket-connect-timeout",
        "--proxy-headers-host",
        "--proxy-headers-port",
        "--log-fmt",
        "--endpoint",
        "--websocket-max-frame-size",
        "--ws-protocol",
        "--asgi-protocol",
        "--no-access-log",
        "--loop-lag-threshold",
        "--health-path",
        "--ready-path",
        "--reload",
        "--reload-dir",
        "--reload-include",
        "--reload-exclude",
    ):
        assert flag in text, flag
    assert "ROOMCAST_<OPTION>" in text
    assert "ROOMCAST_PORT" in text
    assert "ROOMCAST_WORKERS" in text
    for section in ("Where to listen:", "TLS:", "WebSocket:", "Logging:"):
        assert section in text
    assert "default: 8000" in text
    assert "default: 127.0.0.1" in text


def test_defaults_are_configs_defaults(captured: list[Config]) -> None:
    invoke(["tests.gateway.apps:hello"])
    assert captured == [Config(app="tests.gateway.apps:hello")]


def test_every_flag_reaches_config(captured: list[Config]) -> None:
    invoke(
        [
            *("-b", "::1", "-p", "9001", "--root-path", "/forum/"),
            *("--proxy-headers", "--forwarded-allow-ips", "10.0.0.0/8, 192.168.1.1"),
            *("--access-log", "-", "-v", "2", "--ping-interval", "5", "--ping-timeout", "7"),
            *("--websocket-max-message-size", "2048", "--no-ws-per-message-deflate"),
            *("--websocket-write-buffer", "4096", "--websocket-write-timeout", "3.5"),
            *("--application-close-timeout", "4", "--server-name", "edge", "--workers", "3"),
            *("--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem", "--ssl-keyfile-password", "pw"),
            *("--lifespan", "on", "--timeout-keep-alive", "6", "--timeout-request-headers", "8"),
            *("--limit-concurrency", "100", "--limit-request-body", "1000"),
            *("--limit-request-head", "2000", "--graceful-timeout", "9", "--backlog", "64"),
            *("--no-http2", "--h2-max-concurrent-streams", "16"),
            *("-t", "30", "--websocket_timeout", "600", "--websocket_connect_timeout", "2"),
            *("--proxy-headers-host", "X-Real-IP", "--proxy-headers-port", "X-Real-Port"),
            *("--log-fmt", "%(levelname)s %(message)s", "--loop-lag-threshold", "2.5"),
            *("-e", "tcp:9002", "-e", "unix:/tmp/gw-e.sock", "--websocket-max-frame-size", "512"),
            *("--ws-protocol", "chat", "--ws-protocol", "graphql-ws", "--asgi-protocol", "asgi3"),
            "--factory",
            "tests.gateway.apps:make_hello",
        ]
    )
    (config,) = captured
    assert config == Config(
        app="tests.gateway.apps:make_hello",
        host="::1",
        port=9001,
        root_path="/forum",
        proxy_headers=True,
        forwarded_allow_ips=["10.0.0.0/8", "192.168.1.1"],
        access_log="-",
        verbosity=2,
        ping_interval=5.0,
        ping_timeout=7.0,
        websocket_max_message_size=2048,
        websocket_per_message_deflate=False,
        websocket_write_buffer=4096,
        websocket_write_timeout=3.5,
        application_close_timeout=4.0,
        server_name="edge",
        workers=3,
        ssl_certfile="c.pem",
        ssl_keyfile="k.pem",
        ssl_keyfile_password="pw",
        lifespan="on",
        timeout_keep_alive=6.0,
        timeout_request_headers=8.0,
        limit_concurrency=100,
        limit_request_body=1000,
        limit_request_head=2000,
        graceful_timeout=9.0,
        factory=True,
        backlog=64,
        http2=False,
        h2_max_concurrent_streams=16,
        http_timeout=30.0,
        websocket_timeout=600.0,
        websocket_connect_timeout=2.0,
        proxy_headers_host="X-Real-IP",
        proxy_headers_port="X-Real-Port",
        log_fmt="%(levelname)s %(message)s",
        loop_lag_threshold=2.5,
        endpoints=["tcp:9002", "unix:/tmp/gw-e.sock"],
        listen_tcp=True,
        websocket_max_frame_size=512,
        ws_protocols=["chat", "graphql-ws"],
        asgi_protocol="asgi3",
    )


def test_environment_sets_every_kind_of_option(captured: list[Config]) -> None:
    env = {
        "ROOMCAST_APP": "tests.gateway.apps:hello",
        "ROOMCAST_UNIX_SOCKET": "/tmp/gw.sock",
        "ROOMCAST_WORKERS": "4",
        "ROOMCAST_PROXY_HEADERS": "true",
        "ROOMCAST_FORWARDED_ALLOW_IPS": "*",
        "ROOMCAST_WS_PER_MESSAGE_DEFLATE": "false",
        "ROOMCAST_NO_SERVER_NAME": "1",
        "ROOMCAST_GRACEFUL_TIMEOUT": "2.5",
        "ROOMCAST_LIFESPAN": "off",
        "ROOMCAST_HTTP_TIMEOUT": "30",
        "ROOMCAST_WEBSOCKET_TIMEOUT": "-1",
        "ROOMCAST_WEBSOCKET_CONNECT_TIMEOUT": "2",
        "ROOMCAST_PROXY_HEADERS_HOST": "X-Real-IP",
        "ROOMCAST_PROXY_HEADERS_PORT": "X-Real-Port",
        "ROOMCAST_LOG_FMT": "%(message)s",
    }
    invoke(["--graceful-timeout", "1"], env=env)  # the command line wins over the environment
    (config,) = captured
    assert config.app == "tests.gateway.apps:hello"
    assert config.uds == "/tmp/gw.sock"
    assert config.workers == 4
    assert config.proxy_headers is True
    assert config.forwarded_allow_ips == ["*"]
    assert config.websocket_per_message_deflate is False
    assert config.server_name is None
    assert config.graceful_timeout == 1.0
    assert config.lifespan == "off"
    assert config.http_timeout == 30.0
    assert config.websocket_timeout is None
    assert config.websocket_connect_timeout == 2.0
    assert (config.proxy_headers_host, config.proxy_headers_port) == ("X-Real-IP", "X-Real-Port")
    assert config.log_fmt == "%(message)s"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "70000", "a:b"], "must be from 0 to 65535"),
        (["--workers", "0", "a:b"], "must be at least 1"),
        (["--ping-interval", "soon", "a:b"], "not a valid float"),
        (["--lifespan", "maybe", "a:b"], "maybe"),
        (["--h2-max-concurrent-streams", "0", "a:b"], "not in the range 1<=x<=2147483647"),
        (["--asgi-protocol", "asgi4", "a:b"], "asgi4"),
        (["--websocket-max-frame-size", "-1", "a:b"], "must be at least 0"),
        ([], "Missing argument 'APP'"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str, captured: list[Config]) -> None:
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2
    assert message in result.output
    assert captured == []


@pytest.mark.parametrize(("loop", "module"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_loop_choice(loop: str, module: str) -> None:
    port = free_port()
    with GatewayProcess("tests.gateway.apps:loop_kind", "-p", str(port), "--loop", loop) as gateway:
        gateway.wait_listening()
        assert httpx.get(f"http://127.0.0.1:{port}/").text.startswith(module)


def test_env_var_sets_the_port() -> None:
    port = free_port()
    with GatewayProcess("tests.gateway.apps:hello", env={"ROOMCAST_PORT": str(port)}) as gateway:
        gateway.wait_listening()
        assert f"Listening on http://127.0.0.1:{port}" in gateway.stderr
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ("tests.gateway.no_such_module:app", "cannot import module 'tests.gateway.no_such_module'"),
        ("tests.gateway.apps:no_such_app", "has no attribute 'no_such_app'"),
        ("not-an-app-path", "must look like 'module:attribute'"),
    ],
)
def test_bad_app_path_is_one_line(app: str, expected: str) -> None:
    with GatewayProcess(app, "-p", str(free_port())) as gateway:
        status, stderr = gateway.finish()
    assert status == 1
    assert expected in one_error_line(stderr)


def test_an_app_that_raises_at_import_shows_its_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('typo in settings')\n")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}"}
    with GatewayProcess("broken_app:app", "-p", str(free_port()), env=env) as gateway:
        status, stderr = gateway.finish()
    assert status != 0
    assert "Traceback" in stderr
    assert "RuntimeError: typo in settings" in stderr


def test_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with GatewayProcess("tests.gateway.apps:hello", "-p", str(port)) as gateway:
            status, stderr = gateway.finish()
    assert status == 1
    assert f"127.0.0.1:{port}: address already in use" in one_error_line(stderr)


def test_bad_tls_files_are_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    for certfile in (str(tmp_path / "missing.pem"), str(bogus)):
        args = ("--ssl-certfile", certfile, "--ssl-keyfile", str(bogus))
        with GatewayProcess("tests.gateway.apps:hello", "-p", str(free_port()), *args) as gateway:
            status, stderr = gateway.finish()
        assert status == 1
        assert "cannot load TLS certificate" in one_error_line(stderr)


def test_certfile_without_keyfile_is_one_line() -> None:
    with GatewayProcess("tests.gateway.apps:hello", "--ssl-certfile", "c.pem") as gateway:
        status, stderr = gateway.finish()
    assert status == 1
    assert "--ssl-certfile and --ssl-keyfile go together" in one_error_line(stderr)


def test_lifespan_startup_failure_is_one_line_and_exit_3() -> None:
    with GatewayProcess("tests.gateway.apps:startup_fails", "-p", str(free_port())) as gateway:
        status, stderr = gateway.finish()
    assert status == 3
    assert one_error_line(stderr) == (
        "roomcast: error: application startup failed: database unreachable"
    )


def test_lifespan_on_with_an_app_without_lifespan_exits_3() -> None:
    args = ("--lifespan", "on", "-p", str(free_port()))
    with GatewayProcess("tests.gateway.apps:no_lifespan", *args) as gateway:
        status, stderr = gateway.finish()
    assert status == 3
    assert "ValueError: only HTTP is handled here" in stderr.strip().splitlines()[-1]
