"""The test communicators (consumers/testing.py): Channels' signatures and return values.

Driven against plain ASGI functions, so what is tested is the communicator, not a consumer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from roomcast.consumers.testing import (
    ApplicationCommunicator,
    HttpCommunicator,
    WebsocketCommunicator,
)

Message = dict[str, Any]


def scope_reporter(first: Message) -> Any:
    """An app that answers ``websocket.connect`` with ``first`` and echoes frames."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        app.scope = scope  # type: ignore[attr-defined]
        while True:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send(first)
            elif message["type"] == "websocket.receive":
                if message.get("text") == "as json":
                    await send({"type": "websocket.send", "text": '{"a": [1, 2]}'})
                elif message.get("text") == "wrong":
                    await send({"type": "websocket.close"})
                elif message.get("text") == "crash":
                    raise RuntimeError("crashed")
                elif message.get("text") == "silence":
                    pass
                else:
                    await send({**message, "type": "websocket.send"})
            elif message["type"] == "websocket.disconnect":
                app.code = message["code"]  # type: ignore[attr-defined]
                return

    return app


ACCEPT = {"type": "websocket.accept", "subprotocol": "v1", "headers": [(b"x-a", b"1")]}


async def test_websocket_scope() -> None:
    app = scope_reporter(ACCEPT)
    communicator = WebsocketCommunicator(
        app,
        "/ws/a%20b/?room=1",
        headers=[("Origin", "http://example.com"), (b"cookie", b"k=v")],
        subprotocols=["v1", "v2"],
        spec_version="2.3",
    )
    await communicator.connect()
    scope = app.scope  # type: ignore[attr-defined]
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/ws/a b/"
    assert scope["raw_path"] == b"/ws/a%20b/"
    assert scope["query_string"] == b"room=1"
    assert scope["root_path"] == ""
    assert scope["headers"] == [(b"origin", b"http://example.com"), (b"cookie", b"k=v")]
    assert scope["subprotocols"] == ["v1", "v2"]
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.3"}
    assert scope["spec_version"] == "2.3"  # where Channels puts it
    await communicator.disconnect()


def test_websocket_path_must_be_str() -> None:
    with pytest.raises(TypeError, match="Expected str"):
        WebsocketCommunicator(scope_reporter(ACCEPT), b"/ws/")  # type: ignore[arg-type]


async def test_connect_accepted() -> None:
    communicator = WebsocketCommunicator(scope_reporter(ACCEPT), "/")
    assert await communicator.connect() == (True, "v1")
    assert communicator.response_headers == [(b"x-a", b"1")]
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("answer", "result"),
    [
        ({"type": "websocket.close"}, (False, 1000)),
        ({"type": "websocket.close", "code": 4003}, (False, 4003)),
        ({"type": "websocket.http.response.start", "status": 401, "headers": []}, (False, 401)),
    ],
)
async def test_connect_refused(answer: Message, result: tuple[bool, int]) -> None:
    communicator = WebsocketCommunicator(scope_reporter(answer), "/")
    assert await communicator.connect() == result


async def test_frames_both_ways() -> None:
    communicator = WebsocketCommunicator(scope_reporter(ACCEPT), "/")
    await communicator.connect()
    await communicator.send_to(text_data="hi")
    assert await communicator.receive_from() == "hi"
    await communicator.send_to(bytes_data=b"\x00")
    assert await communicator.receive_from() == b"\x00"
    await communicator.send_json_to({"k": ["v"]})
    assert await communicator.receive_json_from() == {"k": ["v"]}
    await communicator.send_to(text_data="as json")
    assert await communicator.receive_json_from() == {"a": [1, 2]}
    await communicator.disconnect(code=4000)


async def test_send_to_needs_exactly_one_kind() -> None:
    communicator = WebsocketCommunicator(scope_reporter(ACCEPT), "/")
    with pytest.raises(AssertionError, match="exactly one"):
        await communicator.send_to()
    with pytest.raises(AssertionError, match="exactly one"):
        await communicator.send_to(text_data="a", bytes_data=b"b")
    with pytest.raises(AssertionError, match="must be a str"):
        await communicator.send_to(text_data=b"a")  # type: ignore[arg-type]


async def test_receive_from_checks_what_arrives() -> None:
    communicator = WebsocketCommunicator(scope_reporter(ACCEPT), "/")
    await communicator.connect()
    await communicator.send_to(text_data="wrong")
    with pytest.raises(AssertionError, match=r"Expected type 'websocket\.send'"):
        await communicator.receive_from()
    await communicator.send_to(bytes_data=b"{}")
    with pytest.raises(AssertionError, match="not a text frame"):
        await communicator.receive_json_from()
    await communicator.disconnect()


async def test_receive_nothing() -> None:
    communicator = WebsocketCommunicator(scope_reporter(ACCEPT), "/")
    await communicator.connect()
    assert await communicator.receive_nothing() is True
    await communicator.send_to(text_data="x")
    await asyncio.sleep(0.01)
    assert await communicator.receive_nothing(timeout=0.05, interval=0.01) is False
    assert await communicator.receive_from() == "x"
    await communicator.disconnect()


async def test_receive_output_times_out_and_cancels_the_app() -> None:
    communicator = WebsocketCommunicator(scope_reporter(ACCEPT), "/")
    await communicator.connect()
    await communicator.send_to(text_data="silence")
    with pytest.raises(TimeoutError):
        await communicator.receive_output(timeout=0.05)
    assert communicator.future.cancelled()


async def test_an_app_error_surfaces_at_once() -> None:
    communicator = WebsocketCommunicator(scope_reporter(ACCEPT), "/")
    await communicator.connect()
    await communicator.send_to(text_data="crash")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="crashed"):
        await communicator.receive_from(timeout=10)
    assert time.monotonic() - started < 2  # not after the timeout


async def test_disconnect_sends_the_code_and_waits() -> None:
    app = scope_reporter(ACCEPT)
    communicator = WebsocketCommunicator(app, "/")
    await communicator.connect()
    await communicator.disconnect(code=4321, timeout=1)
    assert app.code == 4321  # type: ignore[attr-defined]
    assert communicator.future.done()


async def test_disconnect_of_an_app_that_does_not_stop_cancels_it() -> None:
    async def stubborn(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.sleep(60)

    communicator = WebsocketCommunicator(stubborn, "/")
    await communicator.connect()
    await communicator.disconnect(timeout=0.05)  # as Channels': no error, the app is cancelled
    assert communicator.future.cancelled()


# HTTP ------------------------------------------------------------------------------------------


async def http_app(scope: Any, receive: Any, send: Any) -> None:
    """Echoes the request in two body parts."""
    http_app.scope = scope  # type: ignore[attr-defined]
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 202, "headers": [(b"x-b", b"2")]})
    await send({"type": "http.response.body", "body": scope["method"].encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b" " + body})


async def test_http_scope_and_response() -> None:
    communicator = HttpCommunicator(
        http_app, "post", "/p%C3%A4th/?q=1", body=b"data", headers=[("Content-Type", "x/y")]
    )
    response = await communicator.get_response()
    assert response == {"status": 202, "headers": [(b"x-b", b"2")], "body": b"POST data"}
    scope = http_app.scope  # type: ignore[attr-defined]
    assert (scope["type"], scope["method"], scope["http_version"]) == ("http", "POST", "1.1")
    assert scope["path"] == "/päth/"
    assert scope["raw_path"] == b"/p%C3%A4th/"
    assert scope["query_string"] == b"q=1"
    assert scope["headers"] == [(b"content-type", b"x/y")]
    await communicator.wait()


async def test_http_response_without_headers_gets_an_empty_list() -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    response = await HttpCommunicator(bare, "GET", "/").get_response()
    assert response == {"status": 204, "headers": [], "body": b""}


async def test_http_request_sent_by_the_test_is_not_sent_again() -> None:
    communicator = HttpCommunicator(http_app, "PUT", "/")
    await communicator.send_input({"type": "http.request", "body": b"a", "more_body": True})
    await communicator.send_input({"type": "http.request", "body": b"b"})
    assert (await communicator.get_response())["body"] == b"PUT ab"
    assert await communicator.receive_nothing()


def test_http_body_must_be_bytes() -> None:
    with pytest.raises(AssertionError, match="bytes"):
        HttpCommunicator(http_app, "GET", "/", body="text")  # type: ignore[arg-type]


async def test_application_communicator_with_any_scope() -> None:
    async def worker(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        await send({"type": "done", "channel": scope["channel"], "got": message["type"]})

    communicator = ApplicationCommunicator(worker, {"type": "channel", "channel": "thumbs"})
    await communicator.send_input({"type": "thumbs.make"})
    assert await communicator.receive_output() == {
        "type": "done",
        "channel": "thumbs",
        "got": "thumbs.make",
    }
    await communicator.wait()
