"""HTTP/1.1 protocol behaviour, byte for byte, over real sockets to an in-process server."""

from __future__ import annotations

import asyncio
import socket
from email.utils import parsedate_to_datetime

import pytest
from roomcast.gateway.config import Message, Receive, Scope, Send
from roomcast.gateway.streams.http import BODY_HIGH_WATER

from .conftest import Serve
from .rawhttp import (
    TIMEOUT,
    chunked,
    close,
    exchange,
    feed_connection,
    is_closed,
    read_all,
    read_response,
    request,
)

pytestmark = pytest.mark.timeout(30)


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers ``hello`` with a Content-Length, after reading the whole request body."""
    while (await receive()).get("more_body"):
        pass
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello"})


async def echo_path(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the request's raw path (and query) as the body; ``/slow`` answers late."""
    if scope["path"] == "/slow":
        await asyncio.sleep(0.05)  # a later pipelined request must still wait its turn
    body = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    messages = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    return b"".join(m.get("body", b"") for m in messages), messages


async def respond(send: Send, body: bytes = b"ok", status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


# Scope ------------------------------------------------------------------------------------------


async def test_scope_has_every_field(serve: Serve) -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        scope["state"]["added_by_request"] = True  # must not leak into the server's state
        await respond(send)

    host, port, state = await serve(app, root_path="/mount")
    state.app_state["db"] = "pool"
    reader, writer = await asyncio.open_connection(host, port)
    client_port = writer.get_extra_info("sockname")[1]
    writer.write(
        b"GET /caf%C3%A9/a%20b/%2F?x=1&y=%20z HTTP/1.1\r\nHost: example.org\r\n"
        b"X-Custom-Header: Some Value\r\nACCEPT: */*\r\n\r\n"
    )
    response = await read_response(reader)
    await close(writer)

    assert response.status == 200
    (scope,) = scopes
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["asgi"]["spec_version"] in ("2.3", "2.4")
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/mount/café/a b//"
    assert scope["raw_path"] == b"/caf%C3%A9/a%20b/%2F"
    assert scope["query_string"] == b"x=1&y=%20z"
    assert scope["root_path"] == "/mount"
    assert scope["headers"] == [
        (b"host", b"example.org"),
        (b"x-custom-header", b"Some Value"),
        (b"accept", b"*/*"),
    ]
    assert all(isinstance(n, bytes) and isinstance(v, bytes) for n, v in scope["headers"])
    assert scope["client"] == ("127.0.0.1", client_port)
    assert scope["server"] == ("127.0.0.1", port)
    assert scope["state"] == {"db": "pool", "added_by_request": True}
    assert state.app_state == {"db": "pool"}  # each request gets a copy


async def test_scope_without_root_path_or_query(serve: Serve) -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await respond(send)

    _, port, _ = await serve(app)
    await exchange(port, request("DELETE", "/items/7", [("Connection", "close")]))
    (scope,) = scopes
    assert scope["method"] == "DELETE"
    assert scope["path"] == "/items/7"
    assert scope["raw_path"] == b"/items/7"
    assert scope["query_string"] == b""
    assert scope["root_path"] == ""
    assert scope["state"] == {}


@pytest.mark.parametrize(
    ("target", "raw_path", "query"),
    [
        ("http://example.com/items/7?x=1", b"/items/7", b"x=1"),
        ("http://example.com?x=1", b"/", b"x=1"),
        ("https://example.com", b"/", b""),
    ],
)
async def test_absolute_form_targets_become_their_path_and_query(
    serve: Serve, target: str, raw_path: bytes, query: bytes
) -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await respond(send)

    _, port, _ = await serve(app)
    await exchange(port, request("GET", target, [("Connection", "close")]))
    (scope,) = scopes
    assert (scope["raw_path"], scope["query_string"]) == (raw_path, query)
    assert scope["path"] == raw_path.decode()


async def test_http_10_scope_and_close(serve: Serve) -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})

    _, port, _ = await serve(app)
    data = await exchange(port, b"GET /old HTTP/1.0\r\n\r\n")  # returns once the server closes
    assert scopes[0]["http_version"] == "1.0"
    assert data.startswith(b"HTTP/1.1 200 ")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()  # an HTTP/1.0 client gets no chunks
    assert body == b"onetwo"


# Request bodies -------------------------------------------------------------------------------


async def test_content_length_body(serve: Serve) -> None:
    seen: list[list[Message]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body, messages = await read_body(receive)
        seen.append(messages)
        await respond(send, body[::-1])

    host, port, _ = await serve(app)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request("POST", "/", body=b"0123456789"))
    response = await read_response(reader)
    await close(writer)
    assert response.body == b"9876543210"
    messages = seen[0]
    assert messages[-1] == {
        "type": "http.request",
        "body": messages[-1]["body"],
        "more_body": False,
    }
    assert all(type(m["body"]) is bytes for m in messages)  # bytes, not h11's bytearray


async def test_empty_body_is_one_final_message(serve: Serve) -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())
        await respond(send)

    _, port, _ = await serve(app)
    await exchange(port, request("GET", "/", [("Connection", "close")]))
    assert seen == [{"type": "http.request", "body": b"", "more_body": False}]


async def test_chunked_body_streams_in_pieces(serve: Serve) -> None:
    messages: asyncio.Queue[Message] = asyncio.Queue()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            await messages.put(message)
            if not message.get("more_body"):
                break
        await respond(send, b"done")

    host, port, _ = await serve(app)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request("POST", "/upload", [("Transfer-Encoding", "chunked")]))
    writer.write(b"5\r\nfirst\r\n")
    first = await asyncio.wait_for(messages.get(), TIMEOUT)
    assert first == {"type": "http.request", "body": b"first", "more_body": True}
    writer.write(b"6\r\nsecond\r\n")
    second = await asyncio.wait_for(messages.get(), TIMEOUT)
    assert second == {"type": "http.request", "body": b"second", "more_body": True}
    writer.write(b"0\r\n\r\n")
    last = await asyncio.wait_for(messages.get(), TIMEOUT)
    assert last == {"type": "http.request", "body": b"", "more_body": False}
    response = await read_response(reader)
    assert response.body == b"done"
    await close(writer)


async def test_body_above_high_water_pauses_reading_and_arrives_whole(serve: Serve) -> None:
    """The server stops reading while the app does not consume, then delivers every byte."""
    go = asyncio.Event()
    first_sizes: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await go.wait()
        body, messages = await read_body(receive)
        first_sizes.append(len(messages[0]["body"]))
        await respond(send, str(len(body)).encode() + b" " + body[-16:])

    host, port, state = await serve(app)
    size = 4 * BODY_HIGH_WATER
    payload = bytes(range(256)) * (size // 256)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request("PUT", "/big", body=payload))  # no drain: the server stops reading

    async with asyncio.timeout(TIMEOUT):
        while not any(getattr(c, "_read_paused", False) for c in state.connections):
            await asyncio.sleep(0.01)
    go.set()
    response = await read_response(reader)
    await close(writer)
    assert response.body == str(size).encode() + b" " + payload[-16:]
    # What was buffered before the pause: at most the high-water mark plus one socket read.
    assert first_sizes[0] <= BODY_HIGH_WATER + 256 * 1024


async def test_disconnect_mid_request(serve: Serve) -> None:
    messages: asyncio.Queue[Message] = asyncio.Queue()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            await messages.put(message)
            if message["type"] == "http.disconnect":
                return

    host, port, _ = await serve(app)
    _, writer = await asyncio.open_connection(host, port)
    writer.write(request("POST", "/", [("Content-Length", "100")]) + b"0123456789")
    first = await asyncio.wait_for(messages.get(), TIMEOUT)
    assert first == {"type": "http.request", "body": b"0123456789", "more_body": True}
    await close(writer)
    assert await asyncio.wait_for(messages.get(), TIMEOUT) == {"type": "http.disconnect"}


async def test_disconnect_while_app_waits_after_the_body(serve: Serve) -> None:
    """A long-poll app waiting on receive() learns that the client left."""
    messages: asyncio.Queue[Message] = asyncio.Queue()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await messages.put(await receive())
        await messages.put(await receive())  # blocks until the client goes away

    host, port, _ = await serve(app)
    _, writer = await asyncio.open_connection(host, port)
    writer.write(request("GET", "/poll"))
    first = await asyncio.wait_for(messages.get(), TIMEOUT)
    assert first["more_body"] is False
    await close(writer)
    assert await asyncio.wait_for(messages.get(), TIMEOUT) == {"type": "http.disconnect"}


async def test_disconnect_seen_with_a_pipelined_request_waiting(serve: Serve) -> None:
    """Reading pauses while a pipelined request waits its turn; a disconnect still gets in."""
    messages: asyncio.Queue[Message] = asyncio.Queue()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await messages.put(await receive())
        await messages.put(await receive())  # blocks until the client goes away

    host, port, _ = await serve(app)
    _, writer = await asyncio.open_connection(host, port)
    writer.write(request("GET", "/poll") + request("GET", "/next"))
    first = await asyncio.wait_for(messages.get(), TIMEOUT)
    assert first["more_body"] is False
    await close(writer)
    assert await asyncio.wait_for(messages.get(), TIMEOUT) == {"type": "http.disconnect"}


async def test_receive_after_response_is_disconnect(serve: Serve) -> None:
    after: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await respond(send)
        after.set_result(await receive())

    host, port, _ = await serve(app)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request())
    assert (await read_response(reader)).body == b"ok"
    # The connection is still open (keep-alive), yet the finished request sees a disconnect.
    assert await asyncio.wait_for(after, TIMEOUT) == {"type": "http.disconnect"}
    await close(writer)


async def test_send_after_disconnect_raises_oserror(serve: Serve) -> None:
    raised: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        except BaseException as exc:
            raised.set_result(exc)
            raise
        raised.set_result(None)

    host, port, _ = await serve(app)
    _, writer = await asyncio.open_connection(host, port)
    writer.write(request("GET", "/"))
    await asyncio.sleep(0.01)
    await close(writer)
    error = await asyncio.wait_for(raised, TIMEOUT)
    assert isinstance(error, OSError)


# Keep-alive, pipelining, framing ------------------------------------------------------------


async def test_keep_alive_serves_several_requests_on_one_connection(serve: Serve) -> None:
    host, port, state = await serve(echo_path)
    reader, writer = await asyncio.open_connection(host, port)
    for index in range(5):
        writer.write(request("GET", f"/n/{index}?q={index}"))
        response = await read_response(reader)
        assert response.status == 200
        assert response.body == f"/n/{index}?q={index}".encode()
        assert response.header(b"connection") != b"close"
    assert state.counters.requests == 5
    assert len(state.connections) == 1
    await close(writer)


async def test_pipelined_requests_answered_in_order(serve: Serve) -> None:
    host, port, _ = await serve(echo_path)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        request("GET", "/slow")
        + request("POST", "/second", body=b"payload")
        + request("GET", "/third?x=3")
    )
    bodies = [(await read_response(reader)).body for _ in range(3)]
    assert bodies == [b"/slow", b"/second", b"/third?x=3"]
    await close(writer)


async def test_empty_lines_before_a_request_are_ignored(serve: Serve) -> None:
    """RFC 9112 §2.2; some clients send a CRLF after a POST body."""
    host, port, _ = await serve(echo_path)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"\r\n\r\n" + request("GET", "/first"))
    assert (await read_response(reader)).body == b"/first"
    writer.write(request("POST", "/post", body=b"abc") + b"\r\n" + request("GET", "/pipelined"))
    assert (await read_response(reader)).body == b"/post"
    assert (await read_response(reader)).body == b"/pipelined"
    writer.write(b"\r\n")
    await asyncio.sleep(0.01)
    writer.write(b"\n" + request("GET", "/later"))
    assert (await read_response(reader)).body == b"/later"
    await close(writer)


async def test_chunked_response_without_content_length(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"hel", b"", b"lo ", b"world"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    host, port, _ = await serve(app)
    reader, writer = await asyncio.open_connection(host, port)
    for _ in range(2):  # and the connection stays usable after a chunked response
        writer.write(request())
        response = await read_response(reader)
        assert response.chunked
        assert response.header(b"content-length") is None
        assert response.body == b"hello world"
    await close(writer)


async def test_content_length_response_is_not_chunked(serve: Serve) -> None:
    host, port, _ = await serve(hello)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request())
    response = await read_response(reader)
    assert not response.chunked
    assert response.header(b"content-length") == b"5"
    assert response.body == b"hello"
    await close(writer)


@pytest.mark.parametrize("with_length", [True, False])
async def test_head_sends_headers_without_body(serve: Serve, with_length: bool) -> None:
    methods: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        methods.append(scope["method"])
        headers = [(b"content-length", b"11")] if with_length else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"hello world"})

    host, port, _ = await serve(app)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request("HEAD", "/") + request("GET", "/"))
    head = await read_response(reader, head_request=True)
    assert head.status == 200
    if with_length:
        assert head.header(b"content-length") == b"11"
    # Had any body bytes followed the HEAD response, this would not parse as the next response.
    following = await read_response(reader)
    assert following.status == 200
    assert following.body == b"hello world"
    assert methods == ["HEAD", "GET"]
    await close(writer)


async def test_expect_100_continue_sent_when_the_app_reads(serve: Serve) -> None:
    reading = asyncio.Event()
    go = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reading.set()
        await go.wait()
        body, _ = await read_body(receive)
        await respond(send, body.upper())

    host, port, _ = await serve(app)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request("POST", "/", [("Expect", "100-continue"), ("Content-Length", "5")]))
    await asyncio.wait_for(reading.wait(), TIMEOUT)
    with pytest.raises(TimeoutError):  # the app has not asked for the body yet: no 100
        await asyncio.wait_for(reader.read(1), 0.1)
    go.set()
    interim = await read_response(reader)
    assert (interim.status, interim.body) == (100, b"")
    writer.write(b"hello")
    final = await read_response(reader)
    assert (final.status, final.body) == (200, b"HELLO")
    await close(writer)


async def test_expect_100_continue_not_sent_when_app_refuses(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, b"too big", status=417)

    host, port, _ = await serve(app)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request("PUT", "/", [("Expect", "100-continue"), ("Content-Length", "99999")]))
    response = await read_response(reader)
    assert response.status == 417
    assert response.body == b"too big"
    # The body was never sent, so the connection cannot be reused: it is closed.
    assert await is_closed(reader)
    await close(writer)


async def test_date_and_server_headers(serve: Serve) -> None:
    host, port, state = await serve(hello)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request())
    response = await read_response(reader)
    date = response.header(b"date")
    assert date is not None
    assert parsedate_to_datetime(date.decode()).tzinfo is not None
    assert response.all(b"server") == [b"roomcast"]

    state.server_header = None
    writer.write(request())
    response = await read_response(reader)
    assert response.header(b"server") is None
    assert response.header(b"date") is not None
    await close(writer)


async def test_app_server_header_replaces_ours(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"Server", b"mine"), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body"})

    host, port, _ = await serve(app)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request())
    response = await read_response(reader)
    assert response.status == 204
    assert response.all(b"server") == [b"mine"]
    await close(writer)


async def test_connection_close_request_ends_the_connection(serve: Serve) -> None:
    host, port, _ = await serve(echo_path)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request("GET", "/only", [("Connection", "close")]) + request("GET", "/ignored"))
    response = await read_response(reader)
    assert response.body == b"/only"
    assert response.header(b"connection") == b"close"
    assert await is_closed(reader)  # the pipelined request after it is not answered
    await close(writer)


async def test_http_10_post_with_a_trailing_crlf(serve: Serve) -> None:
    """Old clients add CRLF after a POST body; it must not turn the answer into a 400."""
    _, port, _ = await serve(echo_path)
    data = await exchange(port, b"POST /old HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc\r\n")
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b"\r\n\r\n/old")


async def test_slow_reader_blocks_the_app_instead_of_buffering(serve: Serve) -> None:
    """Write backpressure: send() waits while the client is not reading."""
    chunk = b"x" * (256 * 1024)
    total = 64  # 16 MiB, far more than the socket buffers hold
    sent: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for index in range(total):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent.append(index)
        await send({"type": "http.response.body", "body": b""})

    host, port, state = await serve(app)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request())
    async with asyncio.timeout(TIMEOUT):  # the server's transport is told to stop writing
        while not any(getattr(c, "_write_paused", False) for c in state.connections):
            await asyncio.sleep(0.01)
    (connection,) = state.connections
    transport = connection.transport  # type: ignore[attr-defined]
    assert len(sent) < total  # the app waits ...
    assert transport.get_write_buffer_size() <= 2 * len(chunk) + 64 * 1024  # ... nothing piles up
    response = await read_response(reader, timeout=20)
    assert len(response.body) == total * len(chunk)
    await close(writer)


async def test_shutdown_closes_idle_and_lets_in_flight_finish(serve: Serve) -> None:
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await respond(send, b"finished")

    host, port, state = await serve(app)
    idle_reader, idle_writer = await asyncio.open_connection(host, port)
    busy_reader, busy_writer = await asyncio.open_connection(host, port)
    busy_writer.write(request())
    async with asyncio.timeout(TIMEOUT):
        while state.active < 1 or len(state.connections) < 2:
            await asyncio.sleep(0.01)
    for connection in list(state.connections):
        connection.shutdown()
    assert await is_closed(idle_reader)
    release.set()
    response = await read_response(busy_reader)
    assert response.body == b"finished"
    assert response.header(b"connection") == b"close"
    assert await is_closed(busy_reader)
    await close(idle_writer)
    await close(busy_writer)


# App faults -------------------------------------------------------------------------------


async def test_exception_before_start_is_500_without_details(
    serve: Serve, error_log: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("secret-database-password")

    _, port, _ = await serve(app)
    data = await exchange(port, request())  # the 500 closes the connection
    assert data.startswith(b"HTTP/1.1 500 ")
    assert b"secret" not in data
    assert b"Traceback" not in data
    assert b"RuntimeError" not in data
    assert "Exception in ASGI application" in error_log.text
    assert "secret-database-password" in error_log.text  # the log has it, the client not


async def test_exception_after_body_started_closes_connection(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom")

    _, port, _ = await serve(app)
    data = await exchange(port, request())
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"partial" in data
    assert not data.endswith(b"0\r\n\r\n")  # the chunked body never ends: the client can tell
    assert b"boom" not in data


async def test_exception_after_start_before_any_body_is_still_500(serve: Serve) -> None:
    """The head is held until the first body message, so nothing reached the client yet."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
        raise RuntimeError("boom")

    _, port, _ = await serve(app)
    data = await exchange(port, request())
    assert data.startswith(b"HTTP/1.1 500 ")
    assert b"x-a" not in data


async def test_app_returning_without_response_is_500(
    serve: Serve, error_log: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    _, port, _ = await serve(app)
    data = await exchange(port, request())
    assert data.startswith(b"HTTP/1.1 500 ")
    assert "without a response" in error_log.text


async def test_app_returning_mid_response_closes_connection(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"half", "more_body": True})

    _, port, _ = await serve(app)
    data = await exchange(port, request())
    assert b"half" in data
    assert not data.endswith(b"0\r\n\r\n")


@pytest.mark.parametrize(
    ("messages", "logged"),
    [
        ([{"type": "http.response.body", "body": b"x"}], "'http.response.body'"),
        (
            [
                {"type": "http.response.start", "status": 200, "headers": []},
                {"type": "http.response.start", "status": 201, "headers": []},
            ],
            "'http.response.start'",
        ),
        ([{"type": "http.response.bogus"}], "'http.response.bogus'"),
        (
            [
                {"type": "http.response.start", "status": 200, "headers": []},
                {"type": "http.response.body", "body": b"a", "more_body": True},
                {"type": "websocket.send", "text": "x"},
            ],
            "'websocket.send'",
        ),
        (
            [
                {"type": "http.response.start", "status": 200, "headers": []},
                {"type": "http.response.body", "body": b"a"},
                {"type": "http.response.body", "body": b"b"},
            ],
            "'http.response.body' sent after the response was complete",
        ),
    ],
    ids=["body-before-start", "start-twice", "unknown-type", "wrong-type-mid-body", "after-end"],
)
async def test_illegal_message_order_is_logged_and_closes(
    serve: Serve,
    error_log: pytest.LogCaptureFixture,
    messages: list[Message],
    logged: str,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        for message in messages:
            await send(message)

    host, port, _ = await serve(app)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request())
    data = await read_all(reader)  # returns only once the server has closed the connection
    await close(writer)
    assert "protocol violation" in error_log.text
    assert logged in error_log.text
    if messages[0]["type"] != "http.response.start" or len(messages) == 2:
        assert data.startswith(b"HTTP/1.1 500 ")  # nothing had gone out yet


@pytest.mark.parametrize(
    "header",
    [
        (b"x-evil", b"ok\r\nSet-Cookie: injected=1"),
        (b"x-evil", b"ok\nSet-Cookie: injected=1"),
        (b"x-evil", b"ok\rinjected"),
        (b"x-evil\r\nSet-Cookie: injected", b"1"),
    ],
)
async def test_cr_lf_in_app_header_refused(serve: Serve, header: tuple[bytes, bytes]) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"4"), header]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"body"})

    _, port, _ = await serve(app)
    data = await exchange(port, request())
    assert data.startswith(b"HTTP/1.1 500 ")
    assert b"injected" not in data
    assert b"x-evil" not in data


async def test_invalid_header_name_refused(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"bad header", b"1")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"body"})

    _, port, _ = await serve(app)
    data = await exchange(port, request())
    assert data.startswith(b"HTTP/1.1 500 ")
    assert b"bad header" not in data


async def test_body_longer_than_content_length_closes(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"3")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"def"})

    _, port, _ = await serve(app)
    data = await exchange(port, request())  # closed, never a response longer than declared
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b"\r\n\r\nabc")


# Whole or byte by byte -------------------------------------------------------------------------


REQUESTS = [
    request("GET", "/a%20b?x=1", [("X-One", "1")]),
    request("POST", "/form", [("Content-Type", "text/plain")], body=b"some body bytes"),
    request("PUT", "/chunks", [("Transfer-Encoding", "chunked")], body=chunked(b"ab", b"cdef")),
    request("GET", "/last", [("Connection", "close")]),
]


async def test_same_events_whole_or_byte_by_byte() -> None:
    data = b"".join(REQUESTS)
    whole = await feed_connection([data])
    bytewise = await feed_connection([data[i : i + 1] for i in range(len(data))])
    assert len(whole.requests) == len(REQUESTS)
    assert bytewise.requests == whole.requests
    assert bytewise.written == whole.written
    assert whole.closed  # the last request said Connection: close
    assert bytewise.closed
    assert [body for _, body, _ in whole.requests] == [b"", b"some body bytes", b"abcdef", b""]
    assert all(last == "http.request" for _, _, last in whole.requests)
    assert whole.written.count(b"HTTP/1.1 200 OK") == len(REQUESTS)


async def test_byte_by_byte_over_a_real_socket(serve: Serve) -> None:
    seen: list[tuple[Scope, bytes]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body, _ = await read_body(receive)
        seen.append((scope, body))
        await respond(send, body)

    host, port, _ = await serve(app)
    data = request(
        "POST", "/x%C3%A9?q=1", [("Content-Type", "application/octet-stream")], body=b"ab\r\ncd"
    )
    responses = []
    for slow in (False, True):
        reader, writer = await asyncio.open_connection(host, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if slow:
            for index in range(len(data)):
                writer.write(data[index : index + 1])
                await writer.drain()
                await asyncio.sleep(0)
        else:
            writer.write(data)
        responses.append(await read_response(reader))
        await close(writer)
    (scope_whole, body_whole), (scope_slow, body_slow) = seen
    for scope in (scope_whole, scope_slow):
        scope.pop("client")
    assert scope_slow == scope_whole
    assert scope_whole["path"] == "/xé"
    assert body_slow == body_whole == b"ab\r\ncd"
    assert responses[0].body == responses[1].body == b"ab\r\ncd"
