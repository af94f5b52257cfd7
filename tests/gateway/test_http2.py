"""HTTP/2 served by the gateway, seen from real clients: httpx, h2, curl and h2load.

The ways in (TLS with ALPN ``h2``, cleartext prior knowledge, ``Upgrade: h2c``) and the way
out when HTTP/2 is off; the scope an app sees; many streams on one connection; flow control
both ways (a slow stream stalls only itself); trailers; graceful shutdown and the idle timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from hyperframe.frame import GoAwayFrame
from roomcast.gateway.config import Receive, Scope, Send

from tests.e2e.deploy_support import find_tool
from tests.gateway import apps
from tests.gateway.apps import GatewayProcess, free_port
from tests.gateway.conftest import Serve, ServeTLS
from tests.gateway.h2_support import (
    CANCEL,
    NO_ERROR,
    REFUSED_STREAM,
    WAIT,
    Gate,
    H2Client,
    background,
    tls_client_context,
)
from tests.tls_support import self_signed_certificate

CURL = find_tool("curl")
H2LOAD = find_tool("h2load", "/usr/bin/h2load")
MIB = 1024 * 1024


def require(tool: str, path: str | None, package: str) -> str:
    """The tool's path; a test that needs a missing one fails and says how to get it."""
    if path is None:
        pytest.fail(f"{tool} is not installed: `apt-get install {package}` (`make test` does)")
    return path


def pattern(size: int) -> bytes:
    """``size`` bytes that are not all alike (so a lost or repeated chunk changes the hash)."""
    block = b"".join(i.to_bytes(4, "big") for i in range(16384))  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def query(scope: Scope) -> dict[str, str]:
    pairs = scope["query_string"].decode().split("&")
    return dict(pair.partition("=")[::2] for pair in pairs if pair)


async def read_body(receive: Receive) -> bytes:
    return await apps.drain_body(receive)


async def send_all(send: Send, body: bytes, status: int = 200, chunk: int = 256 * 1024) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    for at in range(0, len(body), chunk):
        piece = body[at : at + chunk]
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


class Recorder:
    """An app that answers every request with its scope's fields as JSON, and keeps them."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.scopes.append(scope)
        body = await read_body(receive)
        seen = {
            "http_version": scope["http_version"],
            "method": scope["method"],
            "scheme": scope["scheme"],
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query_string": scope["query_string"].decode("latin-1"),
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
            "client": list(scope["client"]),
            "server": list(scope["server"]),
            "extensions": sorted(scope.get("extensions", {})),
            "body": body.decode("latin-1"),
        }
        await apps.respond(send, json.dumps(seen).encode(), content_type=b"application/json")


async def router(scope: Scope, receive: Receive, send: Send) -> None:
    """``/big?size=N`` N bytes of pattern; ``/echo`` streams the body back; else ``hello``."""
    path = scope["path"]
    if path == "/big":
        await read_body(receive)
        await send_all(send, pattern(int(query(scope)["size"])))
    elif path == "/echo":
        headers = [(b"content-type", b"application/octet-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        while True:
            message = await receive()
            assert message["type"] == "http.request"
            await send({"type": "http.response.body", "body": message["body"], "more_body": True})
            if not message["more_body"]:
                break
        await send({"type": "http.response.body", "body": b""})
    elif path == "/port":
        await read_body(receive)
        await apps.respond(send, str(scope["client"][1]).encode())
    else:
        await read_body(receive)
        await apps.respond(send, b"hello")


def header_map(headers: list[list[str]]) -> dict[str, str]:
    return {name: value for name, value in headers}


def assert_seen(seen: dict[str, Any], **expected: Any) -> None:
    """The Recorder's fields are as ``expected``, each one."""
    for name, value in expected.items():
        assert seen[name] == value, (name, seen[name], value)


# The ways in ------------------------------------------------------------------------------------


async def test_httpx_over_tls_negotiates_h2_by_alpn(serve_tls: ServeTLS) -> None:
    app = Recorder()
    host, port, _, cafile = await serve_tls(app)
    verify = ssl.create_default_context(cafile=cafile)
    async with httpx.AsyncClient(http2=True, verify=verify) as client:
        response = await client.get(
            f"https://{host}:{port}/some%20where/x?a=1&b=%20", headers={"x-token": "abc"}
        )
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"
    seen = response.json()
    assert_seen(
        seen,
        http_version="2",
        method="GET",
        scheme="https",
        path="/some where/x",
        raw_path="/some%20where/x",
        query_string="a=1&b=%20",
    )
    headers = header_map(seen["headers"])
    assert headers["host"] == f"{host}:{port}"
    assert headers["x-token"] == "abc"
    assert not any(name.startswith(":") for name, _ in seen["headers"])
    assert seen["client"][0] == "127.0.0.1"
    assert seen["server"] == [host, port]
    assert seen["extensions"] == ["http.response.trailers"]
    assert response.headers["server"] == "roomcast"
    assert "date" in response.headers


async def test_httpx_prior_knowledge_on_cleartext(serve: Serve) -> None:
    app = Recorder()
    host, port, _ = await serve(app)
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        response = await client.post(
            f"http://{host}:{port}/form?q=%C3%A9", content=b"a=1", headers={"X-Up": "Case"}
        )
    assert response.http_version == "HTTP/2"
    seen = response.json()
    assert_seen(
        seen,
        http_version="2",
        method="POST",
        scheme="http",
        path="/form",
        query_string="q=%C3%A9",
        body="a=1",
    )
    headers = header_map(seen["headers"])
    assert headers["host"] == f"{host}:{port}"
    assert headers["x-up"] == "Case"
    assert headers["content-length"] == "3"
    client_host, client_port = seen["client"]
    assert client_host == "127.0.0.1"
    assert client_port > 0
    assert seen["server"] == [host, port]


async def test_h2_client_over_tls_and_scope_client_is_the_peer(serve_tls: ServeTLS) -> None:
    app = Recorder()
    host, port, _, cafile = await serve_tls(app)
    async with await H2Client.connect(host, port, tls=tls_client_context(cafile)) as client:
        stream = client.request("GET", "/tls")
        seen = json.loads(await stream.body())
        local_port = client.writer.get_extra_info("sockname")[1]
    assert seen["scheme"] == "https"
    assert seen["client"] == ["127.0.0.1", local_port]


async def test_many_concurrent_streams_share_one_connection(serve: Serve) -> None:
    host, port, state = await serve(router)
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        responses = await asyncio.gather(
            *(client.get(f"http://{host}:{port}/port?i={i}") for i in range(50))
        )
    assert all(response.status_code == 200 for response in responses)
    assert all(response.http_version == "HTTP/2" for response in responses)
    ports = {response.text for response in responses}
    assert len(ports) == 1, ports  # one TCP connection served all fifty
    assert state.counters.requests == 50


async def test_streams_are_answered_concurrently_not_in_turn(serve: Serve) -> None:
    """Stream 1's app waits for stream 3's to have run: both are in flight at once."""
    second_arrived = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        if scope["path"] == "/first":
            await asyncio.wait_for(second_arrived.wait(), WAIT)
        else:
            second_arrived.set()
        await apps.respond(send, scope["path"].encode())

    host, port, _ = await serve(app)
    async with await H2Client.connect(host, port) as client:
        first = client.request("GET", "/first")
        second = client.request("GET", "/second")
        assert await first.body() == b"/first"
        assert await second.body() == b"/second"


# Flow control -----------------------------------------------------------------------------------


async def test_large_upload_is_echoed_intact(serve: Serve) -> None:
    host, port, _ = await serve(router)
    body = pattern(6 * MIB + 123)
    async with httpx.AsyncClient(http1=False, http2=True, timeout=30) as client:
        response = await client.post(f"http://{host}:{port}/echo", content=body)
    assert response.http_version == "HTTP/2"
    assert len(response.content) == len(body)
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(body).digest()


async def test_large_upload_echoed_through_the_h2_client(serve: Serve) -> None:
    host, port, _ = await serve(router)
    body = pattern(3 * MIB + 7)
    async with await H2Client.connect(host, port) as client:
        stream = client.upload("POST", "/echo")
        sent = await asyncio.wait_for(client.send_body(stream.sid, body), 30)
        assert sent == len(body)
        echoed = await stream.body(timeout=30)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(body).digest()


async def test_a_stream_not_read_by_its_client_stalls_only_itself(serve: Serve) -> None:
    host, port, _ = await serve(router)
    big = 4 * MIB
    async with await H2Client.connect(host, port) as client:
        slow = client.request("GET", f"/big?size={big}", ack=False)
        # The server fills the stream's window (65535 by default) and waits.
        await slow.wait(lambda: slow.received >= 65535)
        fast = client.request("GET", f"/big?size={2 * MIB}")
        fast_body = await fast.body(timeout=30)
        assert fast_body == pattern(2 * MIB)
        assert slow.received == 65535  # not one byte past the window it was given
        assert not slow.done
        client.acknowledge(slow)
        slow_body = await slow.body(timeout=30)
    assert hashlib.sha256(slow_body).digest() == hashlib.sha256(pattern(big)).digest()


async def test_an_app_not_reading_its_body_stalls_only_that_upload(serve: Serve) -> None:
    release = asyncio.Event()
    upload_size = 2 * MIB

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/hold":
            await release.wait()  # not reading: the body buffers, then the window closes
            body = await read_body(receive)
            await apps.respond(send, hashlib.sha256(body).hexdigest().encode())
        else:
            await router(scope, receive, send)

    host, port, _ = await serve(app)
    async with await H2Client.connect(host, port) as client:
        held = client.upload("POST", "/hold")
        async with background(client.send_body(held.sid, pattern(upload_size))) as upload:
            # The upload runs until the stream's window is shut (256 KiB buffered, 64 KiB more).
            await client.wait(lambda: client.stream_window(held.sid) == 0, timeout=10)
            other = client.upload("POST", "/echo")
            sent = await client.send_body(other.sid, pattern(MIB))
            assert sent == MIB
            assert await other.body(timeout=30) == pattern(MIB)
            assert not upload.done()
            assert client.stream_window(held.sid) == 0  # still shut: the server kept it so
            release.set()
            assert await asyncio.wait_for(upload, 30) == upload_size
            digest = await held.body(timeout=30)
    assert digest == hashlib.sha256(pattern(upload_size)).hexdigest().encode()


# Trailers ---------------------------------------------------------------------------------------


async def trailers_app(scope: Scope, receive: Receive, send: Send) -> None:
    await read_body(receive)
    offered = "http.response.trailers" in scope.get("extensions", {})
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"trailer", b"x-checksum, x-count")],
            "trailers": offered,
        }
    )
    await send({"type": "http.response.body", "body": b"part one, ", "more_body": True})
    await send({"type": "http.response.body", "body": b"part two"})
    if offered:
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"x-checksum", b"abc123")],
                "more_trailers": True,
            }
        )
        await send({"type": "http.response.trailers", "headers": [(b"X-Count", b"2")]})


async def test_trailers_reach_an_h2_client(serve: Serve) -> None:
    host, port, _ = await serve(trailers_app)
    async with await H2Client.connect(host, port) as client:
        stream = client.request("GET", "/t")
        assert await stream.body() == b"part one, part two"
        assert stream.trailers == [(b"x-checksum", b"abc123"), (b"x-count", b"2")]
        assert stream.status == 200


async def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """Run curl without blocking the loop the in-process server runs on."""
    binary = require("curl", CURL, "curl")
    process = await asyncio.create_subprocess_exec(
        binary, "--silent", "--show-error", "--max-time", "20", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return subprocess.CompletedProcess(list(args), process.returncode, out, err)


async def test_trailers_reach_curl(serve: Serve, tmp_path: Path) -> None:
    host, port, _ = await serve(trailers_app)
    dump = tmp_path / "headers"
    result = await curl(
        "--http2-prior-knowledge", "--dump-header", str(dump), f"http://{host}:{port}/t"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"part one, part two"
    headers = dump.read_text().lower()
    assert headers.startswith("http/2 200")
    assert "x-checksum: abc123" in headers
    assert "x-count: 2" in headers


async def test_no_trailers_offered_over_http1(serve: Serve) -> None:
    host, port, _ = await serve(trailers_app)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://{host}:{port}/t")
    assert response.http_version == "HTTP/1.1"
    assert response.text == "part one, part two"


# curl: h2c upgrade and prior knowledge ----------------------------------------------------------


async def test_curl_h2c_upgrade_for_a_get(serve: Serve) -> None:
    app = Recorder()
    host, port, _ = await serve(app)
    result = await curl(
        "--http2", "--verbose", "--write-out", "\n%{http_version}", f"http://{host}:{port}/up?x=1"
    )
    assert result.returncode == 0, result.stderr
    verbose = result.stderr.decode()
    assert re.search(r"< HTTP/1.1 101", verbose), verbose
    assert re.search(r"< HTTP/2 200", verbose), verbose
    body, _, version = result.stdout.rpartition(b"\n")
    assert version == b"2"
    seen = json.loads(body)
    assert_seen(seen, http_version="2", method="GET", path="/up", query_string="x=1")
    names = [name for name, _ in seen["headers"]]
    assert "host" in names
    assert seen["extensions"] == ["http.response.trailers"]
    assert len(app.scopes) == 1  # the upgraded request ran once, as stream 1


async def test_curl_h2c_upgrade_then_more_requests_on_the_connection(serve: Serve) -> None:
    host, port, _ = await serve(router)
    url = f"http://{host}:{port}/port"
    out = ("--http2", "--write-out", " %{http_version}\n")
    result = await curl(*out, url, "--next", *out, url)
    assert result.returncode == 0, result.stderr
    # Both requests over HTTP/2 on one connection (the same client port).
    first, second = result.stdout.decode().splitlines()
    assert first.endswith(" 2")
    assert second.endswith(" 2")
    assert first == second


async def test_curl_h2c_upgrade_with_a_body_stays_http1(serve: Serve) -> None:
    app = Recorder()
    host, port, _ = await serve(app)
    result = await curl(
        "--http2",
        "--verbose",
        "--data-binary",
        "payload",
        "--write-out",
        "\n%{http_version}",
        f"http://{host}:{port}/post",
    )
    assert result.returncode == 0, result.stderr
    assert "101" not in result.stderr.decode()
    body, _, version = result.stdout.rpartition(b"\n")
    assert version == b"1.1"
    seen = json.loads(body)
    assert seen["http_version"] == "1.1"
    assert seen["body"] == "payload"


async def test_curl_prior_knowledge(serve: Serve) -> None:
    app = Recorder()
    host, port, _ = await serve(app)
    result = await curl(
        "--http2-prior-knowledge",
        "--write-out",
        "\n%{http_version}",
        "--data-binary",
        "x" * 100_000,
        f"http://{host}:{port}/pk",
    )
    assert result.returncode == 0, result.stderr
    body, _, version = result.stdout.rpartition(b"\n")
    assert version == b"2"
    seen = json.loads(body)
    assert seen["http_version"] == "2"
    assert seen["body"] == "x" * 100_000


async def test_curl_over_tls_with_alpn(serve_tls: ServeTLS) -> None:
    app = Recorder()
    host, port, _, cafile = await serve_tls(app)
    result = await curl(
        "--http2", "--cacert", cafile, "--write-out", "\n%{http_version}", f"https://{host}:{port}/"
    )
    assert result.returncode == 0, result.stderr
    body, _, version = result.stdout.rpartition(b"\n")
    assert version == b"2"
    assert json.loads(body)["scheme"] == "https"


# HTTP/2 turned off ------------------------------------------------------------------------------


async def test_no_http2_prior_knowledge_preface_is_a_bad_http1_request(serve: Serve) -> None:
    app = Recorder()
    host, port, _ = await serve(app, http2=False)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\0\0\0\4\0\0\0\0\0")
        answer = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
    # Not HTTP/2 here, and no HTTP/1.x request either: 400 (or 505, RFC 9112 §2.6), no app.
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 505 ")), answer[:200]
    assert app.scopes == []


async def test_no_http2_tls_alpn_picks_http1(serve_tls: ServeTLS) -> None:
    host, port, _, cafile = await serve_tls(apps.hello, http2=False)
    context = tls_client_context(cafile, alpn=("h2", "http/1.1"))
    _, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
    finally:
        writer.close()
    verify = ssl.create_default_context(cafile=cafile)
    async with httpx.AsyncClient(http2=True, verify=verify) as client:
        response = await client.get(f"https://{host}:{port}/")
    assert response.http_version == "HTTP/1.1"
    assert response.text == "hello"


async def test_no_http2_ignores_h2c_upgrade(serve: Serve) -> None:
    app = Recorder()
    host, port, _ = await serve(app, http2=False)
    result = await curl("--http2", "--verbose", "--write-out", "\n%{http_version}",
                        f"http://{host}:{port}/")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "101" not in result.stderr.decode()
    body, _, version = result.stdout.rpartition(b"\n")
    assert version == b"1.1"
    assert json.loads(body)["http_version"] == "1.1"


# h2load against the gateway process ----------------------------------------------------------


def h2load(url: str, *args: str) -> str:
    binary = require("h2load", H2LOAD, "nghttp2-client")
    result = subprocess.run(
        [binary, *args, url], capture_output=True, text=True, timeout=90, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def assert_all_succeeded(report: str, total: int) -> None:
    found = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        report,
    )
    assert found, report
    counts = [int(value) for value in found.groups()]
    assert counts == [total, total, total, total, 0, 0, 0], report
    assert re.search(rf"status codes: {total} 2xx, 0 3xx, 0 4xx, 0 5xx", report), report


def test_h2load_cleartext_prior_knowledge() -> None:
    port = free_port()
    with GatewayProcess("tests.gateway.apps:hello", "-p", str(port)) as gateway:
        gateway.wait_listening()
        report = h2load(f"http://127.0.0.1:{port}/", "-n", "2000", "-c", "4", "-m", "10")
        assert "Traceback" not in gateway.stderr
    assert "Application protocol: h2c" in report, report
    assert_all_succeeded(report, 2000)


def test_h2load_over_tls(tmp_path: Path) -> None:
    certfile, keyfile = self_signed_certificate(tmp_path)
    port = free_port()
    tls = ("--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile))
    with GatewayProcess("tests.gateway.apps:hello", "-p", str(port), *tls) as gateway:
        gateway.wait_listening()
        report = h2load(f"https://127.0.0.1:{port}/", "-n", "2000", "-c", "4", "-m", "10")
        assert "Traceback" not in gateway.stderr
    assert "Application protocol: h2" in report, report
    assert_all_succeeded(report, 2000)


def test_h2load_with_request_bodies(tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    upload.write_bytes(pattern(100_000))  # past the stream window: WINDOW_UPDATEs are needed
    port = free_port()
    with GatewayProcess("tests.gateway.apps:hello", "-p", str(port)) as gateway:
        gateway.wait_listening()
        report = h2load(
            f"http://127.0.0.1:{port}/", "-n", "400", "-c", "2", "-m", "20", "-d", str(upload)
        )
        assert "Traceback" not in gateway.stderr
    assert_all_succeeded(report, 400)


# Shutdown and idleness --------------------------------------------------------------------------


async def test_graceful_shutdown_finishes_streams_in_flight(serve: Serve) -> None:
    app = Gate(b"finished")
    host, port, state = await serve(app)
    async with await H2Client.connect(host, port) as client:
        slow = client.request("GET", "/slow")
        await asyncio.wait_for(app.started.wait(), WAIT)
        for connection in list(state.connections):
            connection.shutdown()
        goaway = await client.wait_goaway()
        assert goaway.error_code == NO_ERROR
        assert goaway.last_stream_id >= slow.sid
        # A stream opened after the GOAWAY is refused; the one in flight is not disturbed.
        late = client.request("GET", "/late")
        await late.finished()
        assert late.reset_code == REFUSED_STREAM
        assert not client.closed
        assert not slow.done
        app.release.set()
        assert await slow.body() == b"finished"
        assert slow.status == 200
        await client.wait_closed()
    assert not state.connections


async def test_graceful_shutdown_of_an_idle_connection_closes_it(serve: Serve) -> None:
    host, port, state = await serve(apps.hello)
    async with await H2Client.connect(host, port) as client:
        stream = client.request("GET", "/")
        assert await stream.body() == b"hello"
        for connection in list(state.connections):
            connection.shutdown()
        goaway = await client.goaway_and_close()
        assert goaway.error_code == NO_ERROR
        assert goaway.last_stream_id == stream.sid


async def test_sigterm_finishes_an_h2_stream_in_flight() -> None:
    port = free_port()
    with GatewayProcess("tests.gateway.apps:slow", "-p", str(port)) as gateway:
        gateway.wait_listening()
        async with await H2Client.connect("127.0.0.1", port) as client:
            slow = client.request("GET", "/?delay=1.0")
            # Frames are handled in order: once the PING is answered, the request has started.
            await client.ping_answered()
            gateway.signal(signal.SIGTERM)
            goaway = await client.wait_goaway()
            assert goaway.error_code == NO_ERROR
            assert goaway.last_stream_id >= slow.sid
            assert await slow.body() == b"done after 1.00"
            await client.wait_closed()
        assert gateway.wait() == 0


async def test_idle_connection_gets_goaway_and_is_closed(serve: Serve) -> None:
    host, port, _ = await serve(apps.hello, timeout_keep_alive=0.2)
    async with await H2Client.connect(host, port) as client:
        stream = client.request("GET", "/")
        assert await stream.body() == b"hello"
        goaway = await client.goaway_and_close()
    assert goaway.error_code == NO_ERROR
    assert goaway.last_stream_id == stream.sid


async def test_connection_without_requests_is_closed_after_the_head_timeout(serve: Serve) -> None:
    host, port, _ = await serve(apps.hello, timeout_keep_alive=0.2, timeout_request_headers=0.3)
    async with await H2Client.connect(host, port) as client:
        goaway = await client.goaway_and_close()
    assert goaway.error_code == NO_ERROR
    assert goaway.last_stream_id == 0


async def test_idle_timer_waits_for_streams_in_flight(serve: Serve) -> None:
    app = Gate(b"late but fine")
    host, port, _ = await serve(app, timeout_keep_alive=0.1, timeout_request_headers=0.1)
    async with await H2Client.connect(host, port) as client:
        stream = client.request("GET", "/")
        await asyncio.sleep(0.4)  # past both timeouts: a stream is open, nothing is closed
        assert not client.goaways
        app.release.set()
        assert await stream.body() == b"late but fine"
        await client.goaway_and_close()


# More of the protocol ---------------------------------------------------------------------------


@pytest.mark.parametrize("pipeline", [False, True], ids=["preface-after-101", "pipelined"])
async def test_h2c_upgrade_by_an_h2_client(serve: Serve, pipeline: bool) -> None:
    app = Recorder()
    host, port, _ = await serve(app)
    client, head = await H2Client.upgrade(host, port, "/upgraded?x=1", pipeline=pipeline)
    async with client:
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert b"upgrade: h2c" in head.lower()
        seen = json.loads(await client.streams[1].body())
        assert seen["http_version"] == "2"
        assert seen["path"] == "/upgraded"
        # The connection goes on as HTTP/2: stream 3.
        more = client.request("GET", "/three")
        assert json.loads(await more.body())["path"] == "/three"
    assert [scope["path"] for scope in app.scopes] == ["/upgraded", "/three"]


async def test_head_request_gets_headers_only(serve: Serve) -> None:
    host, port, _ = await serve(apps.hello)
    async with await H2Client.connect(host, port) as client:
        stream = client.request("HEAD", "/")
        assert await stream.body() == b""
        assert stream.status == 200
        assert stream.header(b"content-length") == b"5"


async def test_app_exception_is_a_500_on_its_stream_only(
    serve: Serve, error_log: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        await apps.hello(scope, receive, send)

    host, port, _ = await serve(app)
    async with await H2Client.connect(host, port) as client:
        boom = client.request("GET", "/boom")
        fine = client.request("GET", "/fine")
        assert await boom.body() == b"Internal Server Error"
        assert boom.status == 500
        assert boom.header(b"connection") is None  # no HTTP/1.1 connection header in HTTP/2
        assert await fine.body() == b"hello"
        assert not client.goaways
    assert any("Exception in ASGI application" in r.getMessage() for r in error_log.records)


async def test_request_trailers_end_the_body(serve: Serve) -> None:
    host, port, _ = await serve(router)
    async with await H2Client.connect(host, port) as client:
        stream = client.upload("POST", "/echo", headers=[(b"te", b"trailers")])
        await client.send_body(stream.sid, b"body before trailers", end=False)
        client.conn.send_headers(stream.sid, [(b"x-checksum", b"1234")], end_stream=True)
        client.flush()
        assert await stream.body() == b"body before trailers"


async def test_cookie_fields_are_joined_for_the_app(serve: Serve) -> None:
    """RFC 9113 §8.2.3: split ``cookie`` fields are one "; "-joined field for an application."""
    app = Recorder()
    host, port, _ = await serve(app)
    async with await H2Client.connect(host, port) as client:
        stream = client.request("GET", "/", headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2")])
        seen = json.loads(await stream.body())
    cookies = [value for name, value in seen["headers"] if name == "cookie"]
    assert cookies == ["a=1; b=2"]


async def test_client_goaway_lets_its_streams_in_flight_finish(serve: Serve) -> None:
    """RFC 9113 §6.8: a client's GOAWAY(NO_ERROR) promises no new streams; the ones it opened
    are still answered (its last_stream_id is about server-initiated streams)."""
    app = Gate(b"still answered")
    host, port, _ = await serve(app)
    async with await H2Client.connect(host, port) as client:
        stream = client.request("GET", "/")
        await asyncio.wait_for(app.started.wait(), WAIT)
        client.send_raw(GoAwayFrame(0, last_stream_id=0, error_code=NO_ERROR).serialize())
        await client.drain()
        app.release.set()
        await stream.finished()
        assert stream.ended, client.describe()
        assert bytes(stream.data) == b"still answered"


async def test_early_responses_do_not_leak_the_connection_window(serve: Serve) -> None:
    """Streams answered before their upload ended are reset (NO_ERROR); the DATA still in
    flight for them is credited to the connection, so uploads on it keep flowing."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/early":
            await apps.respond(send, b"no thanks")  # the body is never read
        else:
            await router(scope, receive, send)

    host, port, _ = await serve(app, h2_max_concurrent_streams=2)  # a 196605-byte window
    async with await H2Client.connect(host, port) as client:
        for _ in range(8):
            early = client.upload("POST", "/early")
            await client.send_body(early.sid, pattern(300_000))
            assert await early.body() == b"no thanks"
        upload = client.upload("POST", "/echo")
        assert await client.send_body(upload.sid, pattern(MIB)) == MIB
        assert await upload.body(timeout=30) == pattern(MIB)


@pytest.mark.parametrize("ending", ["app-answers-unread", "client-resets"])
async def test_paused_streams_do_not_leak_the_connection_window(serve: Serve, ending: str) -> None:
    """A stream paused with body unacknowledged (its app was behind), then ended without the
    app reading that body, must give the body back to the connection window: else a few such
    streams shut the connection's window and no upload on it moves again."""
    releases: list[asyncio.Event] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/slow":
            release = asyncio.Event()
            releases.append(release)
            await release.wait()  # behind: the stream pauses, then its window shuts
            await apps.respond(send, b"answered without reading")
        else:
            await router(scope, receive, send)

    host, port, _ = await serve(app, h2_max_concurrent_streams=2)  # a 196605-byte window
    async with await H2Client.connect(host, port) as client:
        for round_ in range(6):
            slow = client.upload("POST", "/slow")
            async with background(client.send_body(slow.sid, pattern(MIB))) as sending:
                # One paused stream holds back at most its own window (65535): that window
                # shuts, the connection's (196605) does not.
                try:
                    await client.wait(lambda s=slow: client.stream_window(s.sid) == 0, timeout=10)
                except TimeoutError:
                    raise AssertionError(
                        f"round {round_}: the connection window is stuck at "
                        f"{client.conn.outbound_flow_control_window}, the stream's at "
                        f"{client.stream_window(slow.sid)}"
                    ) from None
                await client.wait(lambda: len(releases) == 1)
                if ending == "client-resets":
                    client.reset(slow.sid, CANCEL)
                    slow.reset_code = CANCEL
                releases.pop().set()
                await slow.finished()
                await asyncio.wait_for(sending, WAIT)
        upload = client.upload("POST", "/echo")
        sent = await asyncio.wait_for(client.send_body(upload.sid, pattern(MIB)), 10)
        assert sent == MIB
        assert await upload.body(timeout=30) == pattern(MIB)
