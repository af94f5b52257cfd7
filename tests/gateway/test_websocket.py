"""WebSocket over the in-process gateway: scope, handshake, messages, closing, keep-alive.

The well-behaved client is the ``websockets`` library; ``RawClient`` (tests/gateway/ws_support)
sends hand-built frames where a test needs a client that misbehaves or that we can watch
frame by frame.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from roomcast.gateway.config import Message, Receive, Scope, Send
from roomcast.gateway.streams.websocket import QUEUE_HIGH_WATER
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsproto.events import CloseConnection, Ping, Pong, TextMessage

from tests.gateway.ws_support import (
    OP_BINARY,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    WAIT,
    close_frame,
    echo_app,
    frame,
    gateway_server,
    handshake_request,
    wait_for_condition,
)

SOCKET_READ = 256 * 1024  # the most asyncio's selector transport reads at once


class Recorder:
    """An app that records its scope and every message it receives while ``script`` runs."""

    def __init__(
        self, script: Callable[[Scope, Receive, Send], Awaitable[None]] = echo_app
    ) -> None:
        self.scope: Scope | None = None
        self.received: list[Message] = []
        self.done = asyncio.Event()
        self._script = script

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope

        async def recording_receive() -> Message:
            message = await receive()
            self.received.append(message)
            return message

        try:
            await self._script(scope, recording_receive, send)
        finally:
            self.done.set()

    async def finished(self) -> None:
        await asyncio.wait_for(self.done.wait(), WAIT)

    def disconnect(self) -> Message:
        assert self.received, "the app received nothing"
        last = self.received[-1]
        assert last["type"] == "websocket.disconnect", last
        return last


async def accept_then_wait(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept, then read until the client goes away."""
    await receive()
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


# Scope ---------------------------------------------------------------------------------------


async def test_scope() -> None:
    async def mutate_state_then_echo(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"]["counter"] = 2
        await echo_app(scope, receive, send)

    app = Recorder(mutate_state_then_echo)
    async with gateway_server(app) as served:
        served.state.app_state["counter"] = 1
        async with connect(
            served.url("/chat/room%201?x=1&y=2"),
            subprotocols=["chat", "superchat"],  # type: ignore[list-item]
            additional_headers={"X-Token": "abc"},
            ping_interval=None,
        ) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
        await app.finished()

    scope = app.scope
    assert scope is not None
    assert scope["type"] == "websocket"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["scheme"] == "ws"
    assert scope["http_version"] == "1.1"
    assert scope["path"] == "/chat/room 1"
    assert scope["raw_path"] == b"/chat/room%201"
    assert scope["query_string"] == b"x=1&y=2"
    assert scope["root_path"] == ""
    assert scope["subprotocols"] == ["chat", "superchat"]
    assert "websocket.http.response" in scope["extensions"]
    assert (b"x-token", b"abc") in scope["headers"]
    assert all(name == name.lower() for name, _ in scope["headers"])
    assert all(isinstance(v, bytes) for _, v in scope["headers"])
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ("127.0.0.1", served.port)
    assert scope["state"] == {"counter": 2}  # the app's own copy ...
    assert served.state.app_state == {"counter": 1}  # ... not the server's
    assert "method" not in scope


async def test_scope_state_is_a_copy_per_connection() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(dict(scope["state"]))
        scope["state"]["counter"] += 1
        scope["state"]["new"] = True
        await receive()
        await send({"type": "websocket.close"})

    async with gateway_server(app) as served:
        served.state.app_state["counter"] = 1
        for _ in range(2):
            with pytest.raises(InvalidStatus):
                async with connect(served.url(), ping_interval=None):
                    pass
        assert served.state.app_state == {"counter": 1}
    assert seen == [{"counter": 1}, {"counter": 1}]


# Handshake -----------------------------------------------------------------------------------


async def test_accept_with_subprotocol_and_headers() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": "superchat",
                "headers": [(b"x-extra", b"yes"), (b"set-cookie", b"a=1")],
            }
        )
        await send({"type": "websocket.send", "text": "welcome"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    async with (
        gateway_server(app) as served,
        connect(
            served.url(),
            subprotocols=["chat", "superchat"],  # type: ignore[list-item]
            ping_interval=None,
        ) as ws,
    ):
        assert ws.subprotocol == "superchat"
        assert ws.response is not None
        assert ws.response.status_code == 101
        assert ws.response.headers["X-Extra"] == "yes"
        assert ws.response.headers["Set-Cookie"] == "a=1"
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "superchat"
        assert await ws.recv() == "welcome"


async def test_accept_without_subprotocol_sends_none() -> None:
    async with (
        gateway_server(echo_app) as served,
        connect(served.url(), subprotocols=["chat"], ping_interval=None) as ws,  # type: ignore[list-item]
    ):
        assert ws.subprotocol is None
        assert ws.response is not None
        assert "Sec-WebSocket-Protocol" not in ws.response.headers


# Messages ------------------------------------------------------------------------------------


async def test_text_and_bytes_both_ways() -> None:
    app = Recorder()
    async with gateway_server(app) as served:
        async with connect(served.url(), ping_interval=None) as ws:
            await ws.send("héllo ✓")
            assert await ws.recv() == "héllo ✓"
            await ws.send(b"\x00\x01\xff")
            assert await ws.recv() == b"\x00\x01\xff"
            await ws.send("")
            assert await ws.recv() == ""
            await ws.send(b"")
            assert await ws.recv() == b""
        await app.finished()
    assert app.received[0] == {"type": "websocket.connect"}
    assert app.received[1] == {"type": "websocket.receive", "text": "héllo ✓"}
    assert app.received[2] == {"type": "websocket.receive", "bytes": b"\x00\x01\xff"}
    assert app.received[3] == {"type": "websocket.receive", "text": ""}
    assert app.received[4] == {"type": "websocket.receive", "bytes": b""}


async def test_app_sends_text_and_bytes() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "one"})
        await send({"type": "websocket.send", "bytes": b"two"})
        await send({"type": "websocket.send", "text": None, "bytes": b"three"})
        await send({"type": "websocket.close"})

    async with gateway_server(app) as served, connect(served.url(), ping_interval=None) as ws:
        assert [await ws.recv(), await ws.recv(), await ws.recv()] == ["one", b"two", b"three"]
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1000


async def test_fragmented_messages_are_reassembled() -> None:
    app = Recorder()
    async with gateway_server(app) as served:
        async with connect(served.url(), ping_interval=None) as ws:
            await ws.send(["ab", "cd", "é", "f"])
            assert await ws.recv() == "abcdéf"
            await ws.send([b"\x01\x02", b"", b"\x03"])
            assert await ws.recv() == b"\x01\x02\x03"
        await app.finished()
    messages = [m for m in app.received if m["type"] == "websocket.receive"]
    assert messages == [
        {"type": "websocket.receive", "text": "abcdéf"},
        {"type": "websocket.receive", "bytes": b"\x01\x02\x03"},
    ]


async def test_raw_fragments_with_a_ping_between_them() -> None:
    """Control frames may come between fragments; a UTF-8 character may span two frames."""
    app = Recorder()
    async with gateway_server(app) as served:
        client = await served.raw_client()
        assert (await client.handshake()).status == 101
        euro = "€".encode()
        await client.send(
            frame(OP_TEXT, b"price: " + euro[:1], fin=False)
            + frame(OP_PING, b"are you there")
            + frame(OP_CONT, euro[1:], fin=False)
            + frame(OP_CONT, b"5", fin=True)
            + frame(OP_BINARY, b"\x00", fin=False)
            + frame(OP_CONT, b"\x01", fin=True)
        )
        pong = await client.next_event()
        assert isinstance(pong, Pong)
        assert pong.payload == b"are you there"
        assert await client.receive_message() == "price: €5"
        assert await client.receive_message() == b"\x00\x01"
        await client.send(close_frame(1000))
        assert (await client.expect_close()).code == 1000
        assert await client.at_eof()
        await app.finished()
    assert app.disconnect()["code"] == 1000


async def test_frames_sent_with_the_handshake_wait_for_accept() -> None:
    """A client may pipeline frames right behind its upgrade request."""

    async def slow_accept(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0.05)
        await echo_app(scope, receive, send)

    app = Recorder(slow_accept)
    async with gateway_server(app) as served:
        client = await served.raw_client()
        await client.send(handshake_request() + frame(OP_TEXT, b"early") + frame(OP_TEXT, b"bird"))
        assert (await client.read_head()).status == 101
        assert await client.receive_message() == "early"
        assert await client.receive_message() == "bird"
        client.close()
        await app.finished()


# Closing -------------------------------------------------------------------------------------


async def test_server_close_code_and_reason_reach_the_client() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4001, "reason": "bye"})

    async with gateway_server(app) as served, connect(served.url(), ping_interval=None) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "bye")
        assert (ws.close_code, ws.close_reason) == (4001, "bye")


async def test_client_close_code_and_reason_reach_the_app() -> None:
    app = Recorder(accept_then_wait)
    async with gateway_server(app) as served:
        async with connect(served.url(), ping_interval=None) as ws:
            await ws.close(4002, "ok")
            assert ws.close_code == 4002  # the server echoed our Close
        await app.finished()
    assert app.disconnect() == {"type": "websocket.disconnect", "code": 4002, "reason": "ok"}


async def test_client_close_without_a_code_is_1005_for_the_app() -> None:
    app = Recorder(accept_then_wait)
    async with gateway_server(app) as served:
        client = await served.raw_client()
        assert (await client.handshake()).status == 101
        await client.send(frame(0x8, b""))
        close = await client.expect_close()
        assert close.code in (1000, 1005)  # an empty Close is answered with an empty Close
        assert await client.at_eof()
        await app.finished()
    assert app.disconnect()["code"] == 1005


async def test_client_vanishing_is_1006_for_the_app() -> None:
    app = Recorder(accept_then_wait)
    async with gateway_server(app) as served:
        client = await served.raw_client()
        assert (await client.handshake()).status == 101
        client.close()
        await app.finished()
    assert app.disconnect()["code"] == 1006


async def test_close_before_accept_is_403() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 4003})

    async with gateway_server(app) as served:
        with pytest.raises(InvalidStatus) as info:
            async with connect(served.url(), ping_interval=None):
                pass
        assert info.value.response.status_code == 403


async def test_denial_response_extension() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", b"8"),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"entry"})

    async with gateway_server(app) as served:
        with pytest.raises(InvalidStatus) as info:
            async with connect(served.url(), ping_interval=None):
                pass
        response = info.value.response
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.body == b"no entry"


async def test_denial_response_without_length_is_chunked() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 418, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"tea", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"pot"})

    async with gateway_server(app) as served:
        client = await served.raw_client()
        response = await client.handshake()
        assert response.status == 418
        assert response.body == b"teapot"


async def test_denial_response_cut_short_by_an_app_error_is_not_completed() -> None:
    """A denial the app fails half-way must not look complete: the connection is dropped."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"par", "more_body": True})
        raise RuntimeError("boom")

    async with gateway_server(app) as served:
        client = await served.raw_client()
        await client.send(handshake_request())
        raw = await asyncio.wait_for(client.reader.read(), WAIT)
        assert raw.startswith(b"HTTP/1.1 401 ")
        assert not raw.endswith(b"0\r\n\r\n")  # no terminating chunk
        assert b"boom" not in raw


async def test_app_exception_before_accept_is_500() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise RuntimeError("secret detail")

    async with gateway_server(app) as served:
        with pytest.raises(InvalidStatus) as info:
            async with connect(served.url(), ping_interval=None):
                pass
        assert info.value.response.status_code == 500
        assert b"secret" not in info.value.response.body


async def test_app_exception_after_accept_closes_1011() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        raise RuntimeError("secret detail")

    async with gateway_server(app) as served, connect(served.url(), ping_interval=None) as ws:
        await ws.send("trigger")
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1011
        assert "secret" not in info.value.rcvd.reason


async def test_app_returning_after_accept_closes_1000() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})

    async with gateway_server(app) as served, connect(served.url(), ping_interval=None) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1000


async def test_app_returning_without_accept_is_403() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    async with gateway_server(app) as served:
        with pytest.raises(InvalidStatus) as info:
            async with connect(served.url(), ping_interval=None):
                pass
        assert info.value.response.status_code == 403


@pytest.mark.parametrize(
    "message",
    [
        {"type": "websocket.close", "code": 1005},  # a code no endpoint may send
        {"type": "websocket.close", "code": 1000, "reason": b"bytes"},
        {"type": "websocket.send"},  # neither text nor bytes
        {"type": "websocket.accept"},  # twice
        {"type": "websocket.http.response.start", "status": 200},
    ],
)
async def test_illegal_message_after_accept_closes_1011(message: Message) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send(message)

    async with gateway_server(app) as served, connect(served.url(), ping_interval=None) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1011


@pytest.mark.parametrize(
    "message",
    [
        {"type": "websocket.accept", "subprotocol": b"chat"},
        {"type": "websocket.accept", "headers": [(b"x-bad", b"a\r\nb: c")]},
        {"type": "websocket.accept", "headers": [(b"x-bad\r\nb", b"c")]},
        {"type": "websocket.send", "text": "before accept"},
    ],
)
async def test_illegal_message_before_accept_is_500(message: Message) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(message)

    async with gateway_server(app) as served:
        client = await served.raw_client()
        response = await client.handshake(headers=[("Sec-WebSocket-Protocol", "chat")])
        assert response.status == 500
        assert b"b: c" not in response.body


async def test_send_after_disconnect_raises_oserror() -> None:
    outcome: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except BaseException as exc:
            outcome.append(exc)

    app_ = Recorder(app)
    async with gateway_server(app_) as served:
        async with connect(served.url(), ping_interval=None) as ws:
            await ws.close()
        await app_.finished()
    assert len(outcome) == 1
    assert isinstance(outcome[0], OSError)


async def test_send_after_the_client_vanished_raises_oserror() -> None:
    outcome: list[BaseException] = []
    gone = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await gone.wait()
        try:
            for _ in range(100):
                await send({"type": "websocket.send", "text": "anyone?"})
                await asyncio.sleep(0.001)
        except BaseException as exc:
            outcome.append(exc)

    app_ = Recorder(app)
    async with gateway_server(app_) as served:
        client = await served.raw_client()
        assert (await client.handshake()).status == 101
        client.close()
        await wait_for_condition(lambda: not served.connections())
        gone.set()
        await app_.finished()
    assert len(outcome) == 1
    assert isinstance(outcome[0], OSError)


# Keep-alive --------------------------------------------------------------------------------


async def test_server_pings_and_a_client_that_answers_stays_connected() -> None:
    async with gateway_server(echo_app, ping_interval=0.02, ping_timeout=0.1) as served:
        client = await served.raw_client()
        assert (await client.handshake()).status == 101
        pings = 0
        while pings < 10:  # ten pings span twice the ping timeout
            event = await client.next_event()
            assert isinstance(event, Ping), event
            pings += 1
            await client.send(frame(OP_PONG, event.payload))
        await client.send(frame(OP_TEXT, b"still here"))
        assert await client.receive_message() == "still here"
        client.close()


async def test_websockets_client_answers_server_pings() -> None:
    async with (
        gateway_server(echo_app, ping_interval=0.02, ping_timeout=0.1) as served,
        connect(served.url(), ping_interval=None) as ws,
    ):
        await asyncio.sleep(0.3)  # several ping timeouts
        await ws.send("still here")
        assert await ws.recv() == "still here"


async def test_client_that_never_answers_pings_is_closed_1011() -> None:
    app = Recorder(accept_then_wait)
    async with gateway_server(app, ping_interval=0.02, ping_timeout=0.1) as served:
        client = await served.raw_client()
        assert (await client.handshake()).status == 101
        close = await client.expect_close(answer_pings=False)
        assert close.code == 1011
        assert await client.at_eof()
        await app.finished()
    assert app.disconnect()["code"] == 1011


# permessage-deflate --------------------------------------------------------------------------


async def test_permessage_deflate_is_negotiated_by_default() -> None:
    text = "compress me " * 5000
    async with gateway_server(echo_app) as served, connect(served.url(), ping_interval=None) as ws:
        assert ws.response is not None
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert extensions.startswith("permessage-deflate")
        for _ in range(3):  # context takeover: later messages use the earlier window
            await ws.send(text)
            assert await ws.recv() == text
        await ws.send(text.encode())
        assert await ws.recv() == text.encode()


async def test_permessage_deflate_can_be_switched_off() -> None:
    async with (
        gateway_server(echo_app, websocket_per_message_deflate=False) as served,
        connect(served.url(), ping_interval=None) as ws,
    ):
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        await ws.send("plain " * 1000)
        assert await ws.recv() == "plain " * 1000


async def test_permessage_deflate_without_an_offer_is_not_used() -> None:
    async with (
        gateway_server(echo_app) as served,
        connect(served.url(), ping_interval=None, compression=None) as ws,
    ):
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        await ws.send("plain")
        assert await ws.recv() == "plain"


async def test_malformed_deflate_offer_is_declined_not_fatal() -> None:
    async with gateway_server(echo_app) as served:
        client = await served.raw_client()
        response = await client.handshake(
            headers=[("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits=x")]
        )
        assert response.status == 101
        assert "sec-websocket-extensions" not in response.headers
        await client.send(frame(OP_TEXT, b"uncompressed"))
        assert await client.receive_message() == "uncompressed"
        client.close()


# Reading backpressure ------------------------------------------------------------------------


async def test_reading_pauses_while_the_app_is_behind() -> None:
    """An app that does not call receive() does not make the server buffer without bound."""
    release = asyncio.Event()
    got: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await release.wait()
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            got.append(message["bytes"])
            if len(got) == count:
                await send({"type": "websocket.send", "text": "all read"})

    count, size = 400, 16 * 1024  # 6.4 MB: more than the server may queue for the app
    recorder = Recorder(app)
    async with gateway_server(recorder, websocket_per_message_deflate=False) as served:
        async with connect(served.url(), ping_interval=None, compression=None) as ws:

            async def flood() -> None:
                for i in range(count):
                    await ws.send(struct.pack("!I", i) + bytes(size - 4))

            sender = asyncio.create_task(flood())
            (conn,) = served.connections()
            handler = conn.websocket
            assert handler is not None
            assert handler.stream is not None
            stream = handler.stream
            await wait_for_condition(lambda: handler.paused)
            await asyncio.sleep(0.05)  # the server must not read on while paused
            # The high-water mark, plus the rest of the socket read that crossed it.
            assert stream.queued_bytes <= QUEUE_HIGH_WATER + SOCKET_READ + 2 * size
            release.set()
            await asyncio.wait_for(sender, WAIT)
            assert await asyncio.wait_for(ws.recv(), WAIT) == "all read"
        await recorder.finished()
    assert [struct.unpack("!I", data[:4])[0] for data in got] == list(range(count))


# Graceful shutdown ----------------------------------------------------------------------------


@pytest.mark.parametrize(("restart", "code"), [(False, 1001), (True, 1012)])
async def test_shutdown_closes_open_websockets(restart: bool, code: int) -> None:
    apps = [Recorder(accept_then_wait) for _ in range(3)]
    it = iter(apps)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await next(it)(scope, receive, send)

    async with gateway_server(app) as served:
        clients = [await connect(served.url(), ping_interval=None) for _ in apps]
        try:
            await wait_for_condition(lambda: len(served.connections()) == len(apps))
            for conn in list(served.state.connections):
                conn.shutdown(restart)
            for ws in clients:
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(ws.recv(), WAIT)
                assert info.value.rcvd is not None
                assert info.value.rcvd.code == code
            for recorder in apps:
                await recorder.finished()
                assert recorder.disconnect()["code"] == code
            await wait_for_condition(lambda: not served.state.connections)
        finally:
            for ws in clients:
                await ws.close()


async def test_shutdown_before_accept_refuses_the_handshake() -> None:
    may_accept = asyncio.Event()
    outcome: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await may_accept.wait()
        try:
            await send({"type": "websocket.accept"})
        except BaseException as exc:
            outcome.append(exc)

    recorder = Recorder(app)
    async with gateway_server(recorder) as served:
        client = await served.raw_client()
        await client.send(handshake_request())
        await wait_for_condition(lambda: bool(served.state.tasks))
        for conn in list(served.state.connections):
            conn.shutdown(False)
        response = await client.read_head()
        assert response.status == 503
        may_accept.set()
        await recorder.finished()
    assert len(outcome) == 1
    assert isinstance(outcome[0], OSError)


async def test_app_cancelled_after_accept_closes_1001() -> None:
    async with (
        gateway_server(accept_then_wait) as served,
        connect(served.url(), ping_interval=None) as ws,
    ):
        await wait_for_condition(lambda: bool(served.state.tasks))
        for task in list(served.state.tasks):
            task.cancel()
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1001


async def test_events_seen_by_raw_client_for_text() -> None:
    """The server's frames are well formed for a strict parser (wsproto's client side)."""
    async with gateway_server(echo_app) as served:
        client = await served.raw_client()
        response = await client.handshake()
        assert response.status == 101
        assert response.headers["upgrade"].lower() == "websocket"
        assert "upgrade" in response.headers["connection"].lower()
        await client.send(frame(OP_TEXT, "ünïcode".encode()))
        event = await client.next_event()
        assert isinstance(event, TextMessage)
        assert event.data == "ünïcode"
        await client.send(close_frame(4100, "done"))
        close = await client.expect_close()
        assert isinstance(close, CloseConnection)
        assert (close.code, close.reason) == (4100, "done")
        assert await client.at_eof()
