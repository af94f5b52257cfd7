"""Bad input and limits: every refusal has its status, closes, and harms no other client."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from roomcast.gateway.config import Message, Receive, Scope, Send

from .conftest import Serve
from .rawhttp import TIMEOUT, chunked, close, exchange, is_closed, read_response, request

pytestmark = pytest.mark.timeout(30)


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the request body (or the path when there is none)."""
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        parts.append(message["body"])
        if not message["more_body"]:
            break
    body = b"".join(parts) or scope["path"].encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:80]
    return int(data[9:12])


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nNo colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 requires Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\r\n\r\n",  # TLS
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_malformed_request_is_400_and_closed(serve: Serve, data: bytes) -> None:
    _, port, state = await serve(echo)
    answer = await exchange(port, data)  # returns once the server closes
    assert status_of(answer) == 400
    assert b"connection: close" in answer.lower()
    assert state.counters.bad_requests == 1


async def test_malformed_request_after_a_good_one_on_the_same_connection(serve: Serve) -> None:
    host, port, _ = await serve(echo)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request("GET", "/good") + b"NOT HTTP AT ALL\r\n\r\n")
    good = await read_response(reader)
    assert (good.status, good.body) == (200, b"/good")
    bad = await read_response(reader)
    assert bad.status == 400
    assert await is_closed(reader)
    await close(writer)


async def test_head_over_the_limit_is_431(serve: Serve) -> None:
    _, port, _ = await serve(echo, limit_request_head=1024)
    ok = await exchange(port, request("GET", "/", [("X-Fill", "a" * 800), ("Connection", "close")]))
    assert status_of(ok) == 200
    too_big = await exchange(port, request("GET", "/", [("X-Fill", "a" * 2000)]))
    assert status_of(too_big) == 431
    many = [(f"X-{index}", "b" * 20) for index in range(100)]
    assert status_of(await exchange(port, request("GET", "/", many))) == 431


async def test_long_request_line_is_431(serve: Serve) -> None:
    _, port, _ = await serve(echo, limit_request_head=1024)
    answer = await exchange(port, request("GET", "/" + "p" * 4000))
    assert status_of(answer) == 431


async def test_head_over_the_limit_without_an_end_is_431(serve: Serve) -> None:
    """A head that never ends is refused once it passes the limit, not buffered forever."""
    host, port, _ = await serve(echo, limit_request_head=1024)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET / HTTP/1.1\r\nX-Endless: " + b"a" * 4096)
    response = await read_response(reader)
    assert response.status == 431
    assert await is_closed(reader)
    await close(writer)


async def test_declared_body_over_the_limit_is_413(serve: Serve) -> None:
    called: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope)
        await echo(scope, receive, send)

    _, port, _ = await serve(app, limit_request_body=1000)
    ok = await exchange(port, request("POST", "/", [("Connection", "close")], body=b"x" * 1000))
    assert status_of(ok) == 200
    # Only the head: the server refuses before any body is sent (the 100-continue case too).
    too_big = await exchange(port, request("POST", "/", [("Content-Length", "1001")]))
    assert status_of(too_big) == 413
    assert len(called) == 1  # the refused request never reached the app


async def test_chunked_body_growing_over_the_limit_is_413(serve: Serve) -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect" or not message["more_body"]:
                break
        if seen[-1]["type"] == "http.request":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"all read"})

    _, port, _ = await serve(app, limit_request_body=1000)
    body = chunked(b"a" * 600, b"b" * 600)
    answer = await exchange(port, request("POST", "/", [("Transfer-Encoding", "chunked")], body))
    assert status_of(answer) == 413
    assert b"all read" not in answer
    received = sum(len(m.get("body", b"")) for m in seen)
    assert received <= 1000  # the app never saw more than the limit
    async with asyncio.timeout(TIMEOUT):  # and it was told the client is gone
        while not seen or seen[-1]["type"] != "http.disconnect":
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
        [("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
        [("Content-Length", "5"), ("Transfer-Encoding", "gzip, chunked")],
    ],
)
async def test_content_length_with_transfer_encoding_is_400(
    serve: Serve, headers: list[tuple[str, str]]
) -> None:
    called: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope)

    _, port, _ = await serve(app)
    answer = await exchange(port, request("POST", "/", headers) + b"5\r\nhello\r\n0\r\n\r\n")
    assert status_of(answer) in (400, 501)  # gzip, chunked: h11 refuses the coding first
    if "gzip" not in str(headers):
        assert status_of(answer) == 400
    assert called == []


@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Length", "5"), ("Content-Length", "6")],
        [("Content-Length", "5, 6")],
        [("Content-Length", "5"), ("Content-Length", "")],
    ],
)
async def test_conflicting_content_lengths_are_400(
    serve: Serve, headers: list[tuple[str, str]]
) -> None:
    _, port, _ = await serve(echo)
    answer = await exchange(port, request("POST", "/", headers) + b"hello!")
    assert status_of(answer) == 400


@pytest.mark.parametrize("second", ["Content-Length", "content-length", "CoNtEnT-LeNgTh"])
async def test_identical_duplicate_content_lengths_are_refused(serve: Serve, second: str) -> None:
    """h11 would merge them; a smuggling shape all the same, so 400, whatever the casing."""
    _, port, _ = await serve(echo)
    answer = await exchange(port, request("POST", "/", [("Content-Length", "5"), (second, "5")]))
    assert status_of(answer) == 400


async def test_duplicate_content_length_in_a_pipelined_request_is_refused(serve: Serve) -> None:
    """The check follows each head, also one that arrived behind the previous request, and is
    not fooled by a body that looks like headers."""
    host, port, _ = await serve(echo)
    reader, writer = await asyncio.open_connection(host, port)
    body = b"x\ncontent-length: 1\r\n"
    writer.write(request("POST", "/one", [("Content-Length", str(len(body)))]) + body)
    writer.write(request("POST", "/two", [("Content-Length", "1"), ("Content-Length", "1")]) + b"z")
    assert (await read_response(reader)).body == body
    assert status_of(await reader.read()) == 400
    await close(writer)


async def test_repeated_transfer_encoding_is_refused(serve: Serve) -> None:
    _, port, _ = await serve(echo)
    headers = [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")]
    answer = await exchange(port, request("POST", "/", headers) + chunked(b"x"))
    assert status_of(answer) == 501


@pytest.mark.parametrize("coding", ["gzip", "identity", "chunked, gzip", "deflate"])
async def test_unsupported_transfer_encoding_is_501(serve: Serve, coding: str) -> None:
    _, port, _ = await serve(echo)
    answer = await exchange(port, request("POST", "/", [("Transfer-Encoding", coding)]))
    assert status_of(answer) == 501


async def test_slowloris_head_is_closed(serve: Serve) -> None:
    host, port, state = await serve(echo, timeout_request_headers=0.5)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET / HTTP/1.1\r\n")

    async def trickle() -> None:
        with contextlib.suppress(OSError):
            for index in range(100):  # 10 s of trickling, far past the 0.5 s allowed
                writer.write(b"X-%d: v\r\n" % index)
                await writer.drain()
                await asyncio.sleep(0.1)

    trickler = asyncio.create_task(trickle())
    try:
        assert await is_closed(reader, timeout=TIMEOUT)  # closed, and no response sent
    finally:
        trickler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trickler
        await close(writer)
    assert state.counters.requests == 0


async def test_silent_connection_is_closed(serve: Serve) -> None:
    host, port, _ = await serve(echo, timeout_request_headers=0.3)
    reader, writer = await asyncio.open_connection(host, port)
    assert await is_closed(reader)
    await close(writer)


async def test_idle_keep_alive_is_closed(serve: Serve) -> None:
    host, port, _ = await serve(echo, timeout_keep_alive=0.3)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request("GET", "/one"))
    assert (await read_response(reader)).body == b"/one"
    assert await is_closed(reader)
    await close(writer)


async def test_keep_alive_timeout_does_not_cut_a_slow_app(serve: Serve) -> None:
    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0.4)  # longer than both timeouts
        await echo(scope, receive, send)

    host, port, _ = await serve(slow, timeout_keep_alive=0.1, timeout_request_headers=0.1)
    reader, writer = await asyncio.open_connection(host, port)
    for path in ("/a", "/b"):
        writer.write(request("GET", path))
        assert (await read_response(reader)).body == path.encode()
    await close(writer)


async def test_over_concurrency_limit_is_503(serve: Serve) -> None:
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/hold":
            await release.wait()
        await echo(scope, receive, send)

    host, port, state = await serve(app, limit_concurrency=1)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request("GET", "/hold"))
    async with asyncio.timeout(TIMEOUT):
        while state.active < 1:
            await asyncio.sleep(0.01)

    refused = await exchange(port, request("GET", "/other"))
    assert status_of(refused) == 503
    assert state.counters.rejected_overload == 1
    assert state.counters.bad_requests == 0  # the refused request itself was fine

    release.set()
    assert (await read_response(reader)).body == b"/hold"
    async with asyncio.timeout(TIMEOUT):
        while state.active:
            await asyncio.sleep(0.01)
    accepted = await exchange(port, request("GET", "/other", [("Connection", "close")]))
    assert status_of(accepted) == 200
    assert state.counters.rejected_overload == 1
    await close(writer)


BAD_INPUTS = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 5000 + b"\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"z" * 3000),
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc",  # then EOF
    b"\xff\xfe\x00\x01" * 64,
]


async def test_bad_input_never_affects_another_connection(serve: Serve) -> None:
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"].startswith("/good"):
            await release.wait()  # in flight while every bad client is refused
        await echo(scope, receive, send)

    host, port, state = await serve(app, limit_request_head=2048, limit_request_body=2048)
    good = [await asyncio.open_connection(host, port) for _ in range(3)]
    for index, (_, writer) in enumerate(good):
        writer.write(request("POST", f"/good/{index}", body=f"good body {index}".encode()))
    async with asyncio.timeout(TIMEOUT):
        while state.active < len(good):
            await asyncio.sleep(0.01)

    answers = await asyncio.gather(*(exchange(port, data, eof=True) for data in BAD_INPUTS))
    for data, answer in zip(BAD_INPUTS, answers, strict=True):
        assert status_of(answer) in (400, 413, 431), data[:40]
        assert b"good body" not in answer

    release.set()
    for index, (reader, writer) in enumerate(good):
        response = await read_response(reader)
        assert (response.status, response.body) == (200, f"good body {index}".encode())
        writer.write(request("GET", f"/again/{index}"))  # and the good ones stay usable
        assert (await read_response(reader)).body == f"/again/{index}".encode()
        await close(writer)
