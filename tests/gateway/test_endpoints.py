"""Daphne's ``-e/--endpoint`` strings: parsed as Twisted writes them, and every endpoint given
really listening (TCP, unix, TLS, an inherited fd; with -b/-p beside them only if given, as in
Daphne; with --workers too). Anything else is one ``roomcast: error:`` line naming the forms.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
from pathlib import Path

import httpx
import pytest
from roomcast.gateway.config import Config, ConfigError
from roomcast.gateway.endpoints import Endpoint, EndpointError, TLSFiles, parse_endpoint

from tests.gateway.apps import GatewayProcess, free_port, one_error_line
from tests.tls_support import self_signed_certificate

WAIT = 10.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp:8000", Endpoint("tcp", host="0.0.0.0", port=8000)),
        ("tcp:port=8000:interface=0.0.0.0", Endpoint("tcp", host="0.0.0.0", port=8000)),
        ("tcp:8000:interface=127.0.0.1:backlog=7", Endpoint("tcp", "127.0.0.1", 8000, backlog=7)),
        (r"tcp:port=8000:interface=\:\:1", Endpoint("tcp", host="::1", port=8000)),
        (r"tcp6:port=8000:interface=\:\:1", Endpoint("tcp", host="::1", port=8000)),
        ("tcp6:8000", Endpoint("tcp", host="::", port=8000)),
        ("unix:/run/app.sock", Endpoint("unix", path="/run/app.sock")),
        ("unix:path=/run/app.sock", Endpoint("unix", path="/run/app.sock")),
        ("unix:address=/run/app.sock:mode=660", Endpoint("unix", path="/run/app.sock", mode=0o660)),
        (r"unix:/tmp/with\:colon", Endpoint("unix", path="/tmp/with:colon")),
        (
            "ssl:443:privateKey=key.pem:certKey=cert.pem:interface=127.0.0.1",
            Endpoint("tcp", "127.0.0.1", 443, tls=TLSFiles("cert.pem", "key.pem")),
        ),
        (
            "ssl:443:privateKey=both.pem",
            Endpoint("tcp", "0.0.0.0", 443, tls=TLSFiles("both.pem", "both.pem")),
        ),
        ("fd:fileno=3", Endpoint("fd", fileno=3)),
        ("fd:3:domain=INET", Endpoint("fd", fileno=3)),
    ],
)
def test_endpoint_strings(text: str, expected: Endpoint) -> None:
    parsed = parse_endpoint(text)
    assert parsed == Endpoint(**{**expected.__dict__, "source": text})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("systemd:domain=INET:index=0", "is not supported: use tcp:PORT"),
        ("tcp", "no port"),
        ("tcp:http", "port 'http' is not a number"),
        ("tcp:70000", "out of range"),
        ("tcp:8000:reuse=1", "reuse not supported here"),
        ("unix:", "no socket path"),
        ("unix:/s:mode=rw", "mode 'rw' is not a number"),
        ("fd:fileno=-1", "must not be negative"),
        ("8000", "is not supported"),
        ("", "is not supported"),
        ("tcp:8000:port=9000", "port given twice"),
    ],
)
def test_bad_endpoint_strings_name_the_supported_forms(text: str, message: str) -> None:
    with pytest.raises(EndpointError) as raised:
        parse_endpoint(text)
    assert message in str(raised.value)
    assert "unix:PATH" in str(raised.value)
    assert "fd:fileno=N" in str(raised.value)
    with pytest.raises(ConfigError):
        Config(app="a:b", endpoints=[text])


def test_a_bad_endpoint_is_one_error_line() -> None:
    with GatewayProcess("tests.gateway.apps:hello", "-e", "systemd:domain=INET:index=0") as gw:
        status, stderr = gw.finish()
    assert status == 1
    line = one_error_line(stderr)
    assert "systemd:domain=INET:index=0" in line
    assert "ssl:PORT:privateKey=" in line


def test_which_listeners_as_daphne() -> None:
    """-b/-p only when given or when nothing else is; everything else is added."""

    def kinds(**settings: object) -> list[str]:
        return [e.describe() for e in Config(app="a:b", **settings).listeners()]  # type: ignore[arg-type]

    assert kinds() == ["http://127.0.0.1:8000"]
    assert kinds(endpoints=["tcp:9000"]) == ["http://0.0.0.0:9000"]
    assert kinds(uds="/s") == ["unix:/s"]
    assert kinds(uds="/s", listen_tcp=True, port=81) == ["http://127.0.0.1:81", "unix:/s"]
    assert kinds(fd=3, endpoints=["unix:/t"]) == ["fd://3", "unix:/t"]


def test_every_endpoint_given_is_listened_on(tmp_path: Path) -> None:
    certfile, keyfile = self_signed_certificate(tmp_path)
    tcp_a, tcp_b, tls_port, bind_port = free_port(), free_port(), free_port(), free_port()
    unix_a, unix_b = tmp_path / "a.sock", tmp_path / "b.sock"
    with socket.socket() as inherited:
        inherited.bind(("127.0.0.1", 0))
        inherited.listen()
        fd_port, fd = inherited.getsockname()[1], inherited.fileno()
        args = (
            *("tests.gateway.apps:hello", "-b", "127.0.0.1", "-p", str(bind_port)),
            *("-e", f"tcp:{tcp_a}", "-e", f"tcp:port={tcp_b}:interface=127.0.0.1"),
            *("-e", f"unix:{unix_a}", "-e", f"unix:path={unix_b}:mode=600"),
            *("-e", f"ssl:{tls_port}:privateKey={keyfile}:certKey={certfile}:interface=127.0.0.1"),
            *("-e", f"fd:fileno={fd}"),
        )
        with GatewayProcess(*args, pass_fds=[fd]) as gateway:
            lines = gateway.wait_for(r"Listening on \S+", count=7)
            for port in (bind_port, tcp_a, tcp_b, fd_port):
                assert httpx.get(f"http://127.0.0.1:{port}/", timeout=WAIT).text == "hello"
            for path in (unix_a, unix_b):
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(path))) as client:
                    assert client.get("http://gateway/", timeout=WAIT).text == "hello"
            assert unix_b.stat().st_mode & 0o777 == 0o600
            context = ssl.create_default_context(cafile=str(certfile))
            response = httpx.get(f"https://127.0.0.1:{tls_port}/", verify=context, timeout=WAIT)
            assert response.text == "hello"
            with pytest.raises(httpx.HTTPError):  # the TLS endpoint speaks only TLS
                httpx.get(f"http://127.0.0.1:{tls_port}/", timeout=WAIT)
            gateway.signal(signal.SIGTERM)
            assert gateway.wait() == 0
    assert f"Listening on https://127.0.0.1:{tls_port}" in lines
    assert not unix_a.exists()
    assert not unix_b.exists()


def test_endpoints_alone_replace_the_default_tcp_listener(tmp_path: Path) -> None:
    path = tmp_path / "only.sock"
    port = free_port()
    with GatewayProcess(
        "tests.gateway.apps:hello", "-e", f"unix:{path}", "-e", f"tcp:{port}"
    ) as gw:
        gw.wait_for("Listening on", count=2)
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=WAIT).text == "hello"
        gw.signal(signal.SIGTERM)
        status, stderr = gw.finish()
    assert status == 0
    assert len(re.findall("Listening on", stderr)) == 2, stderr
    assert ":8000" not in stderr


def test_unix_socket_and_port_together_listen_on_both(tmp_path: Path) -> None:
    path = tmp_path / "both.sock"
    port = free_port()
    with GatewayProcess("tests.gateway.apps:hello", "-u", str(path), "-p", str(port)) as gw:
        gw.wait_for("Listening on", count=2)
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=WAIT).text == "hello"
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path))) as client:
            assert client.get("http://gateway/", timeout=WAIT).text == "hello"
        gw.signal(signal.SIGTERM)
        assert gw.wait() == 0


def test_a_bind_failure_closes_the_endpoints_opened_before_it(tmp_path: Path) -> None:
    path = tmp_path / "first.sock"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ("-e", f"unix:{path}", "-e", f"tcp:port={port}:interface=127.0.0.1")
        with GatewayProcess("tests.gateway.apps:hello", *args) as gateway:
            status, stderr = gateway.finish()
    assert status == 1
    assert "address already in use" in one_error_line(stderr)
    assert not path.exists()


def test_workers_serve_every_endpoint(tmp_path: Path) -> None:
    certfile, keyfile = self_signed_certificate(tmp_path)
    path, tls_port = tmp_path / "w.sock", free_port()
    args = (
        *("tests.gateway.apps:pid", "--workers", "2", "-e", f"unix:{path}"),
        *("-e", f"ssl:{tls_port}:privateKey={keyfile}:certKey={certfile}:interface=127.0.0.1"),
    )
    with GatewayProcess(*args) as gateway:
        gateway.wait_for("Listening on", count=2, timeout=30)
        context = ssl.create_default_context(cafile=str(certfile))
        response = httpx.get(f"https://127.0.0.1:{tls_port}/", verify=context, timeout=WAIT)
        assert response.text.isdigit()
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path))) as client:
            assert client.get("http://gateway/", timeout=WAIT).text.isdigit()
        gateway.signal(signal.SIGTERM)
        assert gateway.wait(timeout=30) == 0
