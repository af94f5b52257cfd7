"""Properties over arbitrary input: a response or a clean close, never a crash or a leak.

One server runs for the whole module, in a thread with its own event loop, so each hypothesis
example costs two socket round trips and not a server start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from roomcast.gateway.config import Config, Receive, Scope, Send
from roomcast.gateway.connections.http2 import PREFACE as H2_PREFACE

from tests.gateway.threaded_server import ThreadedServer

from .rawhttp import chunked, feed_connection, request

pytestmark = pytest.mark.timeout(120)

READ_TIMEOUT = 5.0
FRAME_SETTINGS = 0x4  # RFC 9113 §6.5: the first frame a server sends


async def token_app(scope: Scope, receive: Receive, send: Send) -> None:
    """HTTP: answers with the raw path (a good client puts its token there). WebSocket: echo."""
    if scope["type"] == "websocket":
        message = await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({**message, "type": "websocket.send"})
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message["body"])
        if not message["more_body"]:
            break
    body = b"path=" + scope["raw_path"] + b" size=%d" % size
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class FuzzServer(ThreadedServer):
    """The gateway on a free port in a background thread; records every error it logs."""

    def __init__(self) -> None:
        config = Config(
            app=token_app,
            limit_request_head=8 * 1024,
            limit_request_body=64 * 1024,
            timeout_request_headers=3.0,
        )
        super().__init__(token_app, config, "fuzz-server", logging.ERROR)

    def errors(self) -> list[str]:
        found = [str(context.get("message")) for context in self.loop_errors]
        found += [record.getMessage() for record in self.records]
        return found


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[FuzzServer]:
    server = FuzzServer().start()
    yield server
    server.stop()


def read_until_closed(sock: socket.socket) -> bytes:
    """All the server sends until it closes; a reset counts as a close. Bounded."""
    sock.settimeout(READ_TIMEOUT)
    data = bytearray()
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            raise AssertionError(
                f"the server neither answered nor closed: {bytes(data)!r}"
            ) from None
        if not piece:
            break
        data += piece
    return bytes(data)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# Strategies -------------------------------------------------------------------------------------

VALID = [
    request("GET", "/path?q=1", [("Accept", "*/*")]),
    request("POST", "/form", [("Content-Type", "x-www-form-urlencoded")], body=b"a=1&b=2"),
    request("PUT", "/up", [("Transfer-Encoding", "chunked")], body=chunked(b"hello", b"world")),
    request("HEAD", "/h", version="1.0"),
    request("POST", "/e", [("Expect", "100-continue")], body=b"12345"),
    request("GET", "/a") + request("GET", "/b") + request("POST", "/c", body=b"cc"),
    request(
        "GET",
        "/ws",
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    ),
    request("OPTIONS", "*"),
    request("GET", "http://example.org/abs?x=%C3%A9"),
]

# Bytes that matter to an HTTP parser, more likely to be inserted than random ones.
SPECIAL = st.sampled_from(
    [
        *(
            b"\r\n",
            b"\n",
            b"\r",
            b":",
            b" ",
            b"\t",
            b"\x00",
            b"0",
            b"-1",
            b"%",
            b"%ZZ",
            b",",
            b"\xff",
        ),
        *(b"chunked", b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b"\r\n\r\n"),
    ]
)


@st.composite
def mutated_request(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if kind == "insert":
            data[at:at] = draw(st.one_of(SPECIAL, st.binary(min_size=1, max_size=8)))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 40))]
        elif kind == "truncate":
            del data[at:]
    return bytes(data)


@st.composite
def request_like(draw: st.DrawFn) -> bytes:
    """Request-shaped input with arbitrary parts: method, target, version, header lines."""
    token = st.binary(min_size=0, max_size=12)
    method = draw(st.one_of(st.sampled_from([b"GET", b"POST", b"HEAD", b"PRI"]), token))
    target = draw(st.one_of(st.sampled_from([b"/", b"*", b"/%C3%A9?x", b"//x"]), token))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.10", b""]))
    lines = [method + b" " + target + b" " + version]
    names = st.one_of(
        st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection"]), token
    )
    for _ in range(draw(st.integers(0, 6))):
        lines.append(draw(names) + b": " + draw(token))
    end = draw(st.sampled_from([b"\r\n\r\n", b"\n\n", b"\r\n", b""]))
    return b"\r\n".join(lines) + end + draw(st.binary(max_size=64))


ANY_INPUT = st.one_of(st.binary(max_size=512), mutated_request(), request_like())


# Properties ---------------------------------------------------------------------------------


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=ANY_INPUT)
@example(data=H2_PREFACE)  # found by hypothesis: h2c by prior knowledge answers with frames
@example(data=H2_PREFACE + b"\x00\x00\x00garbage")
def test_any_bytes_get_a_response_or_a_clean_close(fuzz_server: FuzzServer, data: bytes) -> None:
    token = uuid.uuid4().hex
    good_request = request("GET", f"/good/{token}", [("Connection", "close")])
    good = connect(fuzz_server.port)
    fuzzed = connect(fuzz_server.port)
    try:
        # The good request straddles the fuzzed input, so both are in the server at once.
        good.sendall(good_request[:20])
        with contextlib.suppress(OSError):  # the server may refuse and close early
            fuzzed.sendall(data)
            fuzzed.shutdown(socket.SHUT_WR)
        good.sendall(good_request[20:])
        answer = read_until_closed(fuzzed)
        good_answer = read_until_closed(good)
    finally:
        fuzzed.close()
        good.close()

    if data.startswith(H2_PREFACE):  # h2c by prior knowledge: HTTP/2 frames, then GOAWAY
        assert answer == b"" or answer[3] == FRAME_SETTINGS, answer[:200]
    else:
        assert answer == b"" or answer.startswith(b"HTTP/1.1 "), answer[:200]
    assert token.encode() not in answer  # never another connection's data
    assert good_answer.startswith(b"HTTP/1.1 200 "), good_answer[:200]
    assert good_answer.endswith(b"path=/good/" + token.encode() + b" size=0")
    assert fuzz_server.errors() == []


@settings(max_examples=100, deadline=None)
@given(data=st.one_of(mutated_request(), request_like()), cuts=st.lists(st.integers(0, 600)))
def test_same_events_however_the_input_is_split(data: bytes, cuts: list[int]) -> None:
    """Whole, or cut at arbitrary points: the app and the client see the same things."""
    points = sorted({cut for cut in cuts if 0 < cut < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    whole = asyncio.run(feed_connection([data], eof=True))
    split = asyncio.run(feed_connection(pieces, eof=True))
    assert split.requests == whole.requests
    assert split.written == whole.written
    assert split.closed == whole.closed


def test_server_still_serves_after_the_fuzzing(fuzz_server: FuzzServer) -> None:
    sock = connect(fuzz_server.port)
    try:
        sock.sendall(request("GET", "/still-alive", [("Connection", "close")]))
        answer = read_until_closed(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"path=/still-alive size=0")
    assert fuzz_server.errors() == []
