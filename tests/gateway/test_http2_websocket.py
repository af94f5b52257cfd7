"""WebSockets over HTTP/2 (RFC 8441 extended CONNECT), end to end over real sockets.

The client is h2 over asyncio streams (``h2ws_support``); the WebSocket frames inside the
stream's DATA are made and parsed by wsproto. The gateway runs in-process (the ``serve``
fixture: prior-knowledge HTTP/2 is handed from HTTP1Connection to HTTP2Connection), or as a
``python -m roomcast.gateway`` process for SIGTERM and the chat example.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import Any

import h2.errors
import h2.settings
from roomcast.gateway.config import Message as ASGIMessage
from roomcast.gateway.config import Receive, Scope, Send
from wsproto.events import BytesMessage, CloseConnection, Message, TextMessage

from tests.gateway.apps import GatewayProcess, free_port
from tests.gateway.conftest import Serve
from tests.gateway.h2ws_support import (
    WAIT,
    Closed,
    Ended,
    H2WebSocket,
    H2WebSocketClient,
    Reset,
    wait_until,
)

CANCEL = h2.errors.ErrorCodes.CANCEL
ENABLE_CONNECT_PROTOCOL = h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL
INITIAL_WINDOW_SIZE = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE


class Recorder:
    """An ASGI app whose behaviour depends on the path; it records what it saw.

    - ``/echo`` (any other path too): accepts (choosing ``b`` if offered), echoes every message;
      ``close`` as a text message makes it close 4001 "bye".
    - ``/deny``: ``websocket.close`` before accepting (HTTP 403).
    - ``/teapot``: a ``websocket.http.response`` denial, 418 with a body.
    - ``/flood``: accepts, then sends 1000-byte messages until ``send`` fails.
    - ``/close-return``: accepts, closes 4001 "bye" and returns at once.
    - HTTP: answers with ``http:<path>``.
    """

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.disconnects: list[tuple[str, ASGIMessage]] = []
        self.send_failures: list[str] = []
        self.sent = 0

    def codes(self, path: str) -> list[int]:
        return [message["code"] for where, message in self.disconnects if where == path]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            body = f"http:{scope['path']}".encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        assert scope["type"] == "websocket"
        self.scopes.append(scope)
        path = scope["path"]
        message = await receive()
        assert message["type"] == "websocket.connect"
        if path == "/deny":
            await send({"type": "websocket.close"})
            return
        if path == "/teapot":
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 418,
                    "headers": [(b"content-type", b"text/plain"), (b"x-why", b"tea")],
                }
            )
            await send({"type": "websocket.http.response.body", "body": b"I'm ", "more_body": True})
            await send({"type": "websocket.http.response.body", "body": b"a teapot"})
            return
        subprotocol = "b" if "b" in scope["subprotocols"] else None
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        if path == "/close-return":
            await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
            return
        if path == "/flood":
            try:
                while True:
                    await send({"type": "websocket.send", "bytes": b"x" * 1000})
                    self.sent += 1
            except OSError as exc:
                self.send_failures.append(type(exc).__name__)
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnects.append((path, message))
                return
            if message.get("text") == "close":
                await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
                continue
            reply = {key: message[key] for key in ("text", "bytes") if message.get(key) is not None}
            await send({"type": "websocket.send", **reply})


async def started(
    serve: Serve, app: Any = None, **config: Any
) -> tuple[H2WebSocketClient, Any, Any]:
    """Serve ``app`` (a fresh Recorder by default), connect a client: (client, app, state)."""
    app = app if app is not None else Recorder()
    host, port, state = await serve(app, **config)
    client = await H2WebSocketClient.connect(host, port)
    return client, app, state


def reply_to_close(ws: H2WebSocket, close: CloseConnection) -> None:
    """Answer the server's Close if the stream is still open to us (see the strict tests)."""
    if ws.outcome is None:
        ws.send(close.response())


async def echo_round_trip(ws: H2WebSocket, text: str) -> None:
    ws.send(TextMessage(data=text))
    reply = await ws.expect(TextMessage)
    assert reply.data == text


# The handshake ------------------------------------------------------------------------------


async def test_enable_connect_protocol_is_advertised(serve: Serve) -> None:
    client, _, _ = await started(serve)
    async with client:
        assert client.remote_settings.get(ENABLE_CONNECT_PROTOCOL) == 1


async def test_echo_text_and_bytes_with_the_websocket_scope(serve: Serve) -> None:
    client, app, _ = await started(serve)
    async with client:
        ws = await client.websocket("/echo?room=1", headers=[(b"x-custom", b"yes")])
        assert ws.header(b":status") == b"200"
        assert ws.header(b"sec-websocket-protocol") is None
        ws.send(TextMessage(data="héllo"))
        assert (await ws.expect(TextMessage)).data == "héllo"
        ws.send(BytesMessage(data=b"\x00\x01\xff"))
        assert (await ws.expect(BytesMessage)).data == b"\x00\x01\xff"

    (scope,) = app.scopes
    assert scope["type"] == "websocket"
    assert scope["http_version"] == "2"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/echo"
    assert scope["raw_path"] == b"/echo"
    assert scope["query_string"] == b"room=1"
    assert scope["subprotocols"] == []
    assert scope["extensions"] == {"websocket.http.response": {}}
    headers = dict(scope["headers"])
    assert headers[b"host"] == client.authority.encode()
    assert headers[b"x-custom"] == b"yes"
    assert headers[b"sec-websocket-version"] == b"13"
    assert not any(name.startswith(b":") for name, _ in scope["headers"])


async def test_subprotocol_negotiation(serve: Serve) -> None:
    client, app, _ = await started(serve)
    async with client:
        ws = await client.websocket("/echo", protocols=["a", "b"])
        assert ws.header(b"sec-websocket-protocol") == b"b"
        await echo_round_trip(ws, "with b")
    assert app.scopes[0]["subprotocols"] == ["a", "b"]


async def test_permessage_deflate_round_trip(serve: Serve) -> None:
    client, _, _ = await started(serve)
    async with client:
        ws = await client.websocket("/echo", deflate=True)
        answer = ws.header(b"sec-websocket-extensions")
        assert answer is not None
        assert answer.startswith(b"permessage-deflate")
        assert ws.ws is not None
        text = "compress me " * 500
        frame = ws.ws.send(TextMessage(data=text))
        assert len(frame) < len(text) // 10  # compressed on the way up
        ws.send_raw(frame)
        assert (await ws.expect(TextMessage)).data == text
        assert ws.stream.received < len(text) // 10  # and on the way down
        await echo_round_trip(ws, "second message, same context")


async def test_deflated_frame_inflating_past_the_limit_is_closed_1009(serve: Serve) -> None:
    client, app, _ = await started(serve, websocket_max_message_size=64 * 1024)
    async with client:
        ws = await client.websocket("/echo", deflate=True)
        assert ws.header(b"sec-websocket-extensions") is not None
        assert ws.ws is not None
        frame = ws.ws.send(BytesMessage(data=bytes(1024 * 1024)))  # 1 MiB of zeros
        assert len(frame) < 64 * 1024  # the frame itself is well under the limit
        ws.send_raw(frame)
        close = await ws.expect(CloseConnection)
        assert close.code == 1009
        await wait_until(lambda: app.codes("/echo") == [1009])


async def test_message_over_the_size_limit_is_closed_1009(serve: Serve) -> None:
    client, app, _ = await started(serve, websocket_max_message_size=1000)
    async with client:
        ws = await client.websocket("/echo")
        await echo_round_trip(ws, "x" * 1000)  # at the limit: fine
        ws.send(BytesMessage(data=b"y" * 1001))
        close = await ws.expect(CloseConnection)
        assert close.code == 1009
        await wait_until(lambda: app.codes("/echo") == [1009])


# Denials ----------------------------------------------------------------------------------


async def test_close_before_accept_is_403(serve: Serve) -> None:
    client, _, _ = await started(serve)
    async with client:
        ws = await client.websocket("/deny", expect=403)
        assert isinstance(await ws.outcome_within(), Ended)


async def test_denial_response_reaches_the_client(serve: Serve) -> None:
    client, _, _ = await started(serve)
    async with client:
        ws = await client.websocket("/teapot", expect=None)
        assert await ws.stream.response() == 418
        assert ws.header(b"x-why") == b"tea"
        assert ws.header(b"content-type") == b"text/plain"
        assert await ws.stream.body() == b"I'm a teapot"


async def test_unsupported_websocket_version_is_400(serve: Serve) -> None:
    client, app, _ = await started(serve)
    async with client:
        ws = await client.websocket("/echo", version=b"8", expect=400)
        assert isinstance(await ws.outcome_within(), Ended)
        assert app.scopes == []  # no app ran for it


async def test_plain_connect_is_501(serve: Serve) -> None:
    client, app, _ = await started(serve)
    async with client:
        stream = client.open_stream([(b":method", b"CONNECT"), (b":authority", b"example.com:443")])
        assert await stream.response() == 501
        assert b"501" in await stream.body()
        assert app.scopes == []
        # The connection goes on serving.
        assert await client.request("GET", "/after").body() == b"http:/after"


# Closing ----------------------------------------------------------------------------------


async def test_client_close_is_echoed_and_the_stream_ends(serve: Serve) -> None:
    client, app, _ = await started(serve)
    async with client:
        ws = await client.websocket("/echo")
        await echo_round_trip(ws, "before closing")
        ws.send(CloseConnection(code=1000, reason="done"))
        echoed = await ws.expect(CloseConnection)
        assert echoed.code == 1000
        assert isinstance(await ws.next_event(), Ended)
        await wait_until(lambda: app.codes("/echo") == [1000])
        # The connection stays usable.
        assert await client.request("GET", "/next").body() == b"http:/next"


async def test_app_close_reaches_the_client_with_code_and_reason(serve: Serve) -> None:
    client, app, _ = await started(serve)
    async with client:
        ws = await client.websocket("/echo")
        ws.send(TextMessage(data="close"))
        close = await ws.expect(CloseConnection)
        assert (close.code, close.reason) == (4001, "bye")
        ws.send(close.response())
        assert isinstance(await ws.next_event(), Ended)
        await wait_until(lambda: bool(app.codes("/echo")))
        assert app.codes("/echo") == [4001]


async def test_app_close_then_return_waits_for_the_clients_close(serve: Serve) -> None:
    # An app that closes and returns at once (the common pattern): the server has started the
    # closing handshake and must let the client answer it, as over HTTP/1.1, where the socket
    # stays open for the client's Close (up to CLOSE_TIMEOUT).
    client, _, _ = await started(serve)
    async with client:
        ws = await client.websocket("/close-return")
        close = await ws.expect(CloseConnection)
        assert (close.code, close.reason) == (4001, "bye")
        await client.ping_answered()  # by its answer the app has long returned
        assert ws.outcome is None, (
            f"the server ended the stream ({ws.outcome}, RST_STREAM code {ws.stream.reset_code})"
            " before the client could answer its Close"
        )
        ws.send(close.response())
        assert isinstance(await ws.next_event(), Ended)


async def test_client_reset_is_a_1006_disconnect_and_the_connection_goes_on(serve: Serve) -> None:
    client, app, _ = await started(serve)
    async with client:
        ws = await client.websocket("/echo")
        await echo_round_trip(ws, "ping")
        client.reset(ws.sid, CANCEL)
        await wait_until(lambda: app.codes("/echo") == [1006])
        again = await client.websocket("/echo")
        assert again.sid != ws.sid
        await echo_round_trip(again, "still here")


# Multiplexing and flow control ----------------------------------------------------------------


async def test_websockets_and_requests_share_a_connection(serve: Serve) -> None:
    client, _, _ = await started(serve)
    async with client:
        sockets = [await client.websocket(f"/echo/{n}") for n in range(4)]
        requests = [client.request("GET", f"/page/{n}") for n in range(4)]
        for round_ in range(3):
            for n, ws in enumerate(sockets):
                ws.send(TextMessage(data=f"stream {n} round {round_}"))
                ws.send(BytesMessage(data=bytes([n]) * (100 + n)))
        for n, ws in enumerate(sockets):
            for round_ in range(3):
                assert (await ws.expect(TextMessage)).data == f"stream {n} round {round_}"
                assert (await ws.expect(BytesMessage)).data == bytes([n]) * (100 + n)
        for n, stream in enumerate(requests):
            assert await stream.response() == 200
            assert await stream.body() == f"http:/page/{n}".encode()
        for ws in sockets:
            assert ws.events == []


async def test_a_client_that_does_not_read_is_closed_1008_and_others_go_on(
    serve: Serve, error_log: Any
) -> None:
    app = Recorder()
    host, port, state = await serve(
        app, websocket_write_buffer=8 * 1024, websocket_write_timeout=0.5
    )
    client = await H2WebSocketClient.connect(host, port, settings={INITIAL_WINDOW_SIZE: 1024})
    async with client:
        other = await client.websocket("/echo")
        slow = await client.websocket("/flood", ack=False)
        outcome = await slow.outcome_within(WAIT)
        assert isinstance(outcome, Reset), outcome
        assert outcome.code == CANCEL
        await wait_until(lambda: app.codes("/flood") == [1008])
        assert app.send_failures == ["ClientDisconnected"]
        # The server did not queue without bound: it gave up once its buffer was full.
        assert app.sent * 1000 < 8 * 1024 + 64 * 1024
        assert slow.stream.unacked <= 1024
        assert state.counters.slow_clients_closed == 1
        # The other stream and new requests on the same connection are unaffected.
        await echo_round_trip(other, "unaffected")
        assert await client.request("GET", "/after").body() == b"http:/after"
    assert any("read too little" in record.getMessage() for record in error_log.records)


# Shutdown -----------------------------------------------------------------------------------


async def server_going_away(serve: Serve, restart: bool) -> None:
    client, app, state = await started(serve)
    async with client:
        ws = await client.websocket("/echo")
        await echo_round_trip(ws, "before shutdown")
        connections = [conn for conn in state.connections if hasattr(conn, "streams")]
        assert len(connections) == 1
        connections[0].shutdown(restart=restart)
        code = 1012 if restart else 1001
        close = await ws.expect(CloseConnection)
        assert close.code == code
        await client.wait(lambda: bool(client.goaways))
        assert client.goaways[0].error_code == 0
        assert client.goaways[0].last_stream_id >= ws.sid
        await wait_until(lambda: app.codes("/echo") == [code])
        reply_to_close(ws, close)
        assert isinstance(await ws.outcome_within(), Ended | Closed)
        await client.wait(lambda: client.closed)  # no stream left: the connection closes


async def test_shutdown_sends_goaway_and_close_1001(serve: Serve) -> None:
    await server_going_away(serve, restart=False)


async def test_restart_sends_goaway_and_close_1012(serve: Serve) -> None:
    await server_going_away(serve, restart=True)


async def test_shutdown_waits_for_the_clients_close(serve: Serve) -> None:
    # As over HTTP/1.1: the server's Close 1001 opens the closing handshake; the stream (and
    # the connection) stay until the client answered it, even though the app has returned.
    client, app, state = await started(serve)
    async with client:
        ws = await client.websocket("/echo")
        await echo_round_trip(ws, "before shutdown")
        for conn in [conn for conn in state.connections if hasattr(conn, "streams")]:
            conn.shutdown()
        close = await ws.expect(CloseConnection)
        assert close.code == 1001
        await wait_until(lambda: app.codes("/echo") == [1001])  # the app returned
        with contextlib.suppress(AssertionError):  # the bug closes the whole connection
            await client.ping_answered()
        assert ws.outcome is None, (
            f"the server ended the stream ({ws.outcome}, RST_STREAM code {ws.stream.reset_code})"
            " before the client could answer its Close"
        )
        ws.send(close.response())
        assert isinstance(await ws.next_event(), Ended)
        await client.wait(lambda: client.closed)


async def test_sigterm_sends_goaway_and_close_1001() -> None:
    port = free_port()
    with GatewayProcess("tests.gateway.apps:echo", "-p", str(port)) as gateway:
        gateway.wait_listening()
        client = await H2WebSocketClient.connect("127.0.0.1", port)
        async with client:
            ws = await client.websocket("/ws")
            await echo_round_trip(ws, "before SIGTERM")
            gateway.signal(signal.SIGTERM)
            close = await ws.expect(CloseConnection, timeout=10)
            assert close.code == 1001
            await client.wait(lambda: bool(client.goaways))
            assert client.goaways[0].error_code == 0
            reply_to_close(ws, close)
            await client.wait(lambda: client.closed, timeout=10)
        assert await asyncio.to_thread(gateway.wait, 15) == 0


# The chat example ---------------------------------------------------------------------------


async def test_chat_example_over_http2() -> None:
    port = free_port()
    with GatewayProcess(
        "examples.chat.asgi:application", "-p", str(port), env={"ROOMCAST_LAYER_URL": ""}
    ) as gateway:
        gateway.wait_listening()
        origin = [(b"origin", f"http://127.0.0.1:{port}".encode())]
        alice_conn = await H2WebSocketClient.connect("127.0.0.1", port)
        bob_conn = await H2WebSocketClient.connect("127.0.0.1", port)
        async with alice_conn, bob_conn:
            alice = await alice_conn.websocket("/ws/chat/lobby/", headers=origin)
            bob = await bob_conn.websocket("/ws/chat/lobby/", headers=origin)
            # A second room on Alice's connection: another stream, another group.
            eve = await alice_conn.websocket("/ws/chat/other/", headers=origin)

            async def heard(ws: H2WebSocket) -> str:
                event = await ws.expect(Message)
                message: str = json.loads(event.data)["message"]
                return message

            alice.send(TextMessage(data=json.dumps({"message": "hi bob"})))
            assert await heard(alice) == "hi bob"
            assert await heard(bob) == "hi bob"
            bob.send(TextMessage(data=json.dumps({"message": "hi alice"})))
            assert await heard(alice) == "hi alice"
            assert await heard(bob) == "hi alice"
            eve.send(TextMessage(data=json.dumps({"message": "elsewhere"})))
            assert await heard(eve) == "elsewhere"
            bob.send(TextMessage(data=json.dumps({"message": "still here"})))
            assert await heard(alice) == "still here"  # not Eve's message

            # The page over HTTP/2 on the same connection, and a refused room.
            page = alice_conn.request("GET", "/")
            assert await page.response() == 200
            assert b"new WebSocket" in await page.body()
            # (accepted, then closed 4400 with a reason: a browser can show it; see
            # examples/chat/consumers.py)
            refused = await alice_conn.websocket("/ws/chat/bad%20room/", headers=origin)
            close = await refused.expect(CloseConnection)
            assert close.code == 4400
            assert close.reason.startswith("invalid room name 'bad room'")
