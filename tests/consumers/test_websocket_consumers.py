"""WebSocket consumers (consumers/websocket.py), sync and async, plain and JSON.

Communicator tests on the in-memory layer, and the same consumers through the gateway on a real
socket with the ``websockets`` client: broadcast, close codes, denial, malformed JSON, and a
consumer that raises (1011 to the client, the server serves on).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from roomcast.consumers import (
    AcceptConnection,
    AsyncJsonWebsocketConsumer,
    AsyncWebsocketConsumer,
    DenyConnection,
    InvalidChannelLayerError,
    JsonWebsocketConsumer,
    UndecodableFrame,
    WebsocketConsumer,
)
from roomcast.consumers.testing import WebsocketCommunicator
from roomcast.layers import InMemoryChannelLayer
from roomcast.layers.settings import channel_layers
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.gateway.ws_support import gateway_server, wait_for_condition

WAIT = 5.0


class SpyLayer(InMemoryChannelLayer):
    """The in-memory layer, recording group membership changes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, str]] = []

    async def group_add(self, group: str, channel: str) -> None:
        self.calls.append(("add", group, channel))
        await super().group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        self.calls.append(("discard", group, channel))
        await super().group_discard(group, channel)

    def members(self, group: str) -> set[str]:
        joined: set[str] = set()
        for action, name, channel in self.calls:
            if name == group:
                (joined.add if action == "add" else joined.discard)(channel)
        return joined


@pytest.fixture
def layer() -> Iterator[SpyLayer]:
    layer = SpyLayer()
    channel_layers.set("default", layer)
    yield layer
    channel_layers.reset()


# Consumers under test -----------------------------------------------------------------------


class AsyncChat(AsyncWebsocketConsumer):
    """Text goes to the room's group; bytes come back reversed; ``boom`` raises."""

    groups = ["room"]
    closed_with: list[int] = []

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data == "boom":
            raise RuntimeError("boom")
        if text_data == "bye":
            await self.close(code=4001, reason="bye")
        elif text_data is not None:
            assert self.channel_layer is not None
            await self.channel_layer.group_send("room", {"type": "chat.message", "text": text_data})
        else:
            assert bytes_data is not None
            await self.send(bytes_data=bytes_data[::-1])

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])

    async def disconnect(self, code: int) -> None:
        self.closed_with.append(code)


class SyncChat(WebsocketConsumer):
    """The same consumer, written synchronously."""

    groups = ["room"]
    closed_with: list[int] = []

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data == "boom":
            raise RuntimeError("boom")
        if text_data == "bye":
            self.close(code=4001, reason="bye")
        elif text_data is not None:
            assert self.channel_layer is not None
            group_send = async_to_sync(self.channel_layer.group_send)
            group_send("room", {"type": "chat.message", "text": text_data})
        else:
            assert bytes_data is not None
            self.send(bytes_data=bytes_data[::-1])

    def chat_message(self, event: dict[str, Any]) -> None:
        self.send(text_data=event["text"])

    def disconnect(self, code: int) -> None:
        self.closed_with.append(code)


class AsyncJson(AsyncJsonWebsocketConsumer):
    groups = ["json"]

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if content == "boom":
            raise RuntimeError("boom")
        assert self.channel_layer is not None
        await self.channel_layer.group_send("json", {"type": "json.relay", "content": content})

    async def json_relay(self, event: dict[str, Any]) -> None:
        await self.send_json(event["content"])


class SyncJson(JsonWebsocketConsumer):
    groups = ["json"]

    def receive_json(self, content: Any, **kwargs: Any) -> None:
        if content == "boom":
            raise RuntimeError("boom")
        assert self.channel_layer is not None
        group_send = async_to_sync(self.channel_layer.group_send)
        group_send("json", {"type": "json.relay", "content": content})

    def json_relay(self, event: dict[str, Any]) -> None:
        self.send_json(event["content"])


CHATS = [AsyncChat, SyncChat]
JSONS = [AsyncJson, SyncJson]
ids = lambda cls: cls.__name__  # noqa: E731


async def connected(app: Any, path: str = "/ws/", **kwargs: Any) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(app, path, **kwargs)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


# Groups, frames, close ----------------------------------------------------------------------


@pytest.mark.parametrize("consumer", CHATS, ids=ids)
async def test_groups_are_joined_on_connect_and_left_on_disconnect(
    layer: SpyLayer, consumer: type[Any]
) -> None:
    app = consumer.as_asgi(closed_with=[])
    first, second = await connected(app), await connected(app)
    assert len(layer.members("room")) == 2
    await first.send_to(text_data="hello room")
    assert await first.receive_from() == "hello room"
    assert await second.receive_from() == "hello room"
    await first.disconnect(code=1001)
    assert len(layer.members("room")) == 1
    await second.disconnect()
    assert layer.members("room") == set()
    assert app.consumer_initkwargs["closed_with"] == [1001, 1000]


@pytest.mark.parametrize("consumer", CHATS, ids=ids)
async def test_bytes_frames(layer: SpyLayer, consumer: type[Any]) -> None:
    communicator = await connected(consumer.as_asgi())
    await communicator.send_to(bytes_data=b"\x00\x01\x02")
    assert await communicator.receive_from() == b"\x02\x01\x00"
    await communicator.disconnect()


@pytest.mark.parametrize("consumer", CHATS, ids=ids)
async def test_close_with_code_and_reason(layer: SpyLayer, consumer: type[Any]) -> None:
    communicator = await connected(consumer.as_asgi())
    await communicator.send_to(text_data="bye")
    assert await communicator.receive_output() == {
        "type": "websocket.close",
        "code": 4001,
        "reason": "bye",
    }
    await communicator.disconnect(code=4001)


class Closer(AsyncWebsocketConsumer):
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        close: bool | int = True if text_data == "true" else int(text_data or 0)
        await self.send(text_data="last", close=close)


async def test_send_with_close(layer: SpyLayer) -> None:
    communicator = await connected(Closer.as_asgi())
    await communicator.send_to(text_data="true")
    assert await communicator.receive_from() == "last"
    assert await communicator.receive_output() == {"type": "websocket.close"}
    await communicator.send_to(text_data="4002")
    assert await communicator.receive_from() == "last"
    assert await communicator.receive_output() == {"type": "websocket.close", "code": 4002}
    await communicator.disconnect()


async def test_send_needs_text_or_bytes(layer: SpyLayer) -> None:
    class Empty(AsyncWebsocketConsumer):
        async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None):  # type: ignore[no-untyped-def]
            await self.send()

    communicator = await connected(Empty.as_asgi())
    await communicator.send_to(text_data="x")
    with pytest.raises(ValueError, match="one of bytes_data or text_data"):
        await communicator.receive_output()


class Protocols(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept(subprotocol="chat.v2", headers=[(b"x-room", b"lobby")])


class SyncProtocols(WebsocketConsumer):
    def connect(self) -> None:
        self.accept(subprotocol="chat.v2", headers=[(b"x-room", b"lobby")])


@pytest.mark.parametrize("consumer", [Protocols, SyncProtocols], ids=ids)
async def test_accept_with_subprotocol_and_headers(layer: SpyLayer, consumer: type[Any]) -> None:
    communicator = WebsocketCommunicator(consumer.as_asgi(), "/", subprotocols=["chat.v2"])
    assert await communicator.connect() == (True, "chat.v2")
    assert communicator.response_headers == [(b"x-room", b"lobby")]
    await communicator.disconnect()


class Gatekeeper(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        if self.scope["query_string"] == b"let=in":
            raise AcceptConnection()
        raise DenyConnection()


class SyncGatekeeper(WebsocketConsumer):
    def connect(self) -> None:
        if self.scope["query_string"] == b"let=in":
            raise AcceptConnection()
        raise DenyConnection()


@pytest.mark.parametrize("consumer", [Gatekeeper, SyncGatekeeper], ids=ids)
async def test_accept_and_deny_connection_exceptions(layer: SpyLayer, consumer: type[Any]) -> None:
    allowed = WebsocketCommunicator(consumer.as_asgi(), "/ws/?let=in")
    assert await allowed.connect() == (True, None)
    await allowed.disconnect()
    denied = WebsocketCommunicator(consumer.as_asgi(), "/ws/")
    assert await denied.connect() == (False, 1000)
    await denied.disconnect()


async def test_groups_need_a_layer(layer: SpyLayer) -> None:
    communicator = WebsocketCommunicator(AsyncChat.as_asgi(channel_layer_alias=None), "/")
    with pytest.raises(InvalidChannelLayerError, match="no channel layer"):
        await communicator.connect()


async def test_groups_are_per_instance(layer: SpyLayer) -> None:
    rooms = ["a", "b"]
    app = AsyncChat.as_asgi(groups=rooms)
    communicator = await connected(app)
    assert layer.members("a") == layer.members("b") != set()
    assert not layer.members("room")
    await communicator.disconnect()
    assert rooms == ["a", "b"]
    assert AsyncChat.groups == ["room"]


@pytest.mark.parametrize("consumer", CHATS, ids=ids)
async def test_a_raising_consumer_is_logged_and_leaves_its_groups(
    layer: SpyLayer, consumer: type[Any], caplog: pytest.LogCaptureFixture
) -> None:
    communicator = await connected(consumer.as_asgi())
    assert layer.members("room")
    await communicator.send_to(text_data="boom")
    with pytest.raises(RuntimeError, match="boom"):
        await communicator.receive_output()
    assert layer.members("room") == set()
    assert f"test_websocket_consumers.{consumer.__name__} raised RuntimeError" in caplog.text


@pytest.mark.parametrize("consumer", CHATS, ids=ids)
async def test_a_cancelled_consumer_leaves_its_groups(layer: SpyLayer, consumer: type[Any]) -> None:
    """A server shutting down cancels the application: the groups are left all the same."""
    communicator = await connected(consumer.as_asgi())
    assert layer.members("room")
    communicator.future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await communicator.future
    assert layer.members("room") == set()


# JSON -------------------------------------------------------------------------------------


@pytest.mark.parametrize("consumer", JSONS, ids=ids)
async def test_json_round_trip(layer: SpyLayer, consumer: type[Any]) -> None:
    first, second = await connected(consumer.as_asgi()), await connected(consumer.as_asgi())
    await first.send_json_to({"message": "hi", "n": [1, 2]})
    assert await first.receive_json_from() == {"message": "hi", "n": [1, 2]}
    assert await second.receive_json_from() == {"message": "hi", "n": [1, 2]}
    await first.disconnect()
    await second.disconnect()


@pytest.mark.parametrize("consumer", JSONS, ids=ids)
async def test_malformed_json_closes_with_1007(
    layer: SpyLayer, consumer: type[Any], caplog: pytest.LogCaptureFixture
) -> None:
    communicator = await connected(consumer.as_asgi())
    with caplog.at_level(logging.WARNING, logger="roomcast.consumers"):
        await communicator.send_to(text_data="{not json")
        assert await communicator.receive_output() == {
            "type": "websocket.close",
            "code": 1007,
            "reason": "invalid JSON",
        }
    assert f"{consumer.__name__}: text frame is not valid JSON" in caplog.text
    await communicator.disconnect(code=1007)


@pytest.mark.parametrize("consumer", JSONS, ids=ids)
async def test_binary_frame_to_a_json_consumer_closes_with_1003(
    layer: SpyLayer, consumer: type[Any]
) -> None:
    communicator = await connected(consumer.as_asgi())
    await communicator.send_to(bytes_data=b"\x01")
    message = await communicator.receive_output()
    assert (message["type"], message["code"]) == ("websocket.close", 1003)
    await communicator.disconnect(code=1003)


class Forgiving(AsyncJsonWebsocketConsumer):
    """Answers undecodable frames with an error message and stays open."""

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.send_json({"echo": content})

    async def receive_json_error(self, error: UndecodableFrame) -> None:
        await self.send_json({"error": error.close_code, "frame": error.text_data})


class SyncForgiving(JsonWebsocketConsumer):
    def receive_json(self, content: Any, **kwargs: Any) -> None:
        self.send_json({"echo": content})

    def receive_json_error(self, error: UndecodableFrame) -> None:
        self.send_json({"error": error.close_code, "frame": error.text_data})


@pytest.mark.parametrize("consumer", [Forgiving, SyncForgiving], ids=ids)
async def test_the_json_error_path_is_overridable(layer: SpyLayer, consumer: type[Any]) -> None:
    communicator = await connected(consumer.as_asgi())
    await communicator.send_to(text_data="[1,")
    assert await communicator.receive_json_from() == {"error": 1007, "frame": "[1,"}
    await communicator.send_json_to([1])
    assert await communicator.receive_json_from() == {"echo": [1]}
    await communicator.disconnect()


class Strict(AsyncJsonWebsocketConsumer):
    """Custom codec: refuses non-objects in decode_json, sorts keys in encode_json."""

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        content = json.loads(text_data)
        if not isinstance(content, dict):
            raise ValueError("expected an object")
        return content

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        return json.dumps(content, sort_keys=True, separators=(",", ":"))

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.send_json(content)


class SyncStrict(JsonWebsocketConsumer):
    @classmethod
    def decode_json(cls, text_data: str) -> Any:
        content = json.loads(text_data)
        if not isinstance(content, dict):
            raise ValueError("expected an object")
        return content

    @classmethod
    def encode_json(cls, content: Any) -> str:
        return json.dumps(content, sort_keys=True, separators=(",", ":"))

    def receive_json(self, content: Any, **kwargs: Any) -> None:
        self.send_json(content)


@pytest.mark.parametrize("consumer", [Strict, SyncStrict], ids=ids)
async def test_encode_and_decode_are_overridable(layer: SpyLayer, consumer: type[Any]) -> None:
    communicator = await connected(consumer.as_asgi())
    await communicator.send_to(text_data='{"b": 1, "a": 2}')
    assert await communicator.receive_from() == '{"a":2,"b":1}'
    await communicator.send_to(text_data="[1]")  # valid JSON that decode_json refuses
    message = await communicator.receive_output()
    assert (message["type"], message["code"]) == ("websocket.close", 1007)
    await communicator.disconnect()


# Through the gateway -------------------------------------------------------------------------


def ws_connect(url: str, **kwargs: Any) -> Any:
    return connect(url, proxy=None, ping_interval=None, open_timeout=WAIT, **kwargs)


@pytest.mark.parametrize("consumer", CHATS, ids=ids)
async def test_chat_through_the_gateway(layer: SpyLayer, consumer: type[Any]) -> None:
    async with (
        gateway_server(consumer.as_asgi(closed_with=[])) as served,
        ws_connect(served.url("/ws/")) as alice,
        ws_connect(served.url("/ws/")) as bob,
    ):
        await wait_for_condition(lambda: len(layer.members("room")) == 2)
        await alice.send("hello bob")
        assert await asyncio.wait_for(bob.recv(), WAIT) == "hello bob"
        assert await asyncio.wait_for(alice.recv(), WAIT) == "hello bob"
        await bob.send(b"\x01\x02")
        assert await bob.recv() == b"\x02\x01"
        await bob.send("bye")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(bob.recv(), WAIT)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "bye")
        await wait_for_condition(lambda: len(layer.members("room")) == 1)


@pytest.mark.parametrize("consumer", JSONS, ids=ids)
async def test_json_through_the_gateway(layer: SpyLayer, consumer: type[Any]) -> None:
    async with (
        gateway_server(consumer.as_asgi()) as served,
        ws_connect(served.url("/ws/")) as ws,
    ):
        await ws.send(json.dumps({"message": "hi"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), WAIT)) == {"message": "hi"}
        await ws.send("{oops")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), WAIT)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1007


async def test_subprotocol_through_the_gateway(layer: SpyLayer) -> None:
    async with (
        gateway_server(Protocols.as_asgi()) as served,
        ws_connect(served.url("/"), subprotocols=["chat.v2"]) as ws,  # type: ignore[list-item]
    ):
        assert ws.subprotocol == "chat.v2"
        assert ws.response is not None
        assert ws.response.headers["x-room"] == "lobby"


@pytest.mark.parametrize("consumer", [Gatekeeper, SyncGatekeeper], ids=ids)
async def test_denied_through_the_gateway_is_403(layer: SpyLayer, consumer: type[Any]) -> None:
    async with gateway_server(consumer.as_asgi()) as served:
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(served.url("/ws/")):
                pass
        assert info.value.response.status_code == 403
        async with ws_connect(served.url("/ws/?let=in")) as ws:
            await ws.ping()


@pytest.mark.parametrize("consumer", [*CHATS, *JSONS], ids=ids)
async def test_a_raising_consumer_through_the_gateway(
    layer: SpyLayer, consumer: type[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The client gets 1011, the error is logged with the consumer's name, the server lives on."""
    payload = json.dumps("boom") if consumer in JSONS else "boom"
    group = "json" if consumer in JSONS else "room"
    async with gateway_server(consumer.as_asgi()) as served:
        async with ws_connect(served.url("/ws/")) as ws:
            await ws.send(payload)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), WAIT)
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1011
            assert "boom" not in info.value.rcvd.reason  # no detail reaches the client
        await wait_for_condition(lambda: not layer.members(group))
        assert f"{consumer.__name__} raised RuntimeError: boom" in caplog.text
        async with ws_connect(served.url("/ws/")) as ws:  # the server serves on
            await ws.send(json.dumps("after") if consumer in JSONS else "after")
            assert "after" in str(await asyncio.wait_for(ws.recv(), WAIT))


class BrokenConnect(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        raise KeyError("no such room")


async def test_raising_in_connect_through_the_gateway_is_500(
    layer: SpyLayer, caplog: pytest.LogCaptureFixture
) -> None:
    async with gateway_server(BrokenConnect.as_asgi()) as served:
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(served.url("/ws/")):
                pass
        assert info.value.response.status_code == 500
    assert "BrokenConnect raised KeyError" in caplog.text
    assert "'websocket.connect'" in caplog.text
