"""The presence mixin (:mod:`roomcast.consumers.presence`) on a real in-memory layer.

Consumers run through the test communicator; the layer is the one they use, read directly to
check what it holds. The same mixin across gateways and Redis, in a real browser, is in
``tests/e2e/test_chat.py`` and ``tests/e2e/test_browser.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from roomcast.consumers import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from roomcast.consumers.middleware import Receive, Scope, Send
from roomcast.consumers.presence import PresenceMixin, presence_key
from roomcast.consumers.resume import ResumableGroupsMixin
from roomcast.consumers.testing import WebsocketCommunicator
from roomcast.layers import LayerConnectionError
from roomcast.layers.memory import InMemoryChannelLayer
from roomcast.layers.settings import channel_layers

TIMEOUT = 5.0


class User:
    """What AuthMiddleware puts in the scope, as far as presence reads it."""

    def __init__(self, pk: int, username: str) -> None:
        self.pk = pk
        self.username = username
        self.is_authenticated = True

    def get_username(self) -> str:
        return self.username


class Lobby(PresenceMixin, AsyncJsonWebsocketConsumer):
    presence_groups = ["lobby"]

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if content.get("crash"):
            raise RuntimeError("a bug in a handler")


class Room(PresenceMixin, AsyncJsonWebsocketConsumer):
    """Tracks the room of its URL with info of its own choosing."""

    async def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        await self.track_presence(self.room)
        await self.accept()

    async def presence_info(self, group: str) -> dict[str, Any]:
        return {"user": self.scope["url_route"]["kwargs"]["who"], "room": group}


class PlainRoom(PresenceMixin, AsyncWebsocketConsumer):
    presence_groups = ["lobby"]


class Resuming(PresenceMixin, ResumableGroupsMixin, AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        await self.resume_group("lobby")
        await self.track_presence("lobby", {"user": "r"})
        await self.accept()

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"message": event["text"]})


class DownLayer(InMemoryChannelLayer):
    async def _presence_add(self, group: str, channel: str, info: dict[str, Any]) -> None:
        raise LayerConnectionError("cannot reach Redis at 127.0.0.1:1: refused")


@pytest.fixture
async def layer() -> AsyncIterator[InMemoryChannelLayer]:
    layer = InMemoryChannelLayer(
        presence={"*": {"interval": 0.05}}, history={"lobby": {"size": 10}}
    )
    channel_layers.set("default", layer)
    yield layer
    channel_layers.reset()


def with_user(app: Any, user: Any, room: str = "", who: str = "") -> Any:
    """``app`` with ``scope["user"]`` (as AuthMiddleware sets it) and a URL route."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        scope = dict(scope, user=user, url_route={"args": (), "kwargs": {"room": room, "who": who}})
        await app(scope, receive, send)

    return wrapped


async def connect(app: Any, path: str = "/ws/") -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(app, path)
    connected, _ = await communicator.connect(TIMEOUT)
    assert connected
    return communicator


async def frame(communicator: WebsocketCommunicator) -> dict[str, Any]:
    data: dict[str, Any] = await communicator.receive_json_from(TIMEOUT)
    return data


async def next_of(communicator: WebsocketCommunicator, kind: str) -> dict[str, Any]:
    while True:
        data = await frame(communicator)
        if data["type"] == kind:
            return data


async def only_entry(layer: InMemoryChannelLayer, group: str) -> tuple[str, dict[str, Any]]:
    entries = await layer.presence(group)
    assert len(entries) == 1, entries
    ((channel, info),) = entries.items()
    return channel, info


async def test_the_scopes_user_is_added_and_gets_the_member_list(
    layer: InMemoryChannelLayer,
) -> None:
    alice = await connect(with_user(Lobby.as_asgi(), User(7, "alice")))
    channel, info = await only_entry(layer, "lobby")
    assert info == {"user": 7, "name": "alice"}
    assert await frame(alice) == {
        "type": "presence.state",
        "group": "lobby",
        "you": presence_key(channel),
        "members": {presence_key(channel): {"user": 7, "name": "alice"}},
    }
    await alice.disconnect()
    assert await layer.presence("lobby") == {}  # removed at once


async def test_an_anonymous_connection_is_there_without_a_user(
    layer: InMemoryChannelLayer,
) -> None:
    client = await connect(Lobby.as_asgi())
    _, info = await only_entry(layer, "lobby")
    assert info == {}
    assert (await layer.presence_stats("lobby")).as_dict() == {"connections": 1, "users": 0}
    await client.disconnect()


async def test_joins_and_leaves_are_forwarded_to_the_client(layer: InMemoryChannelLayer) -> None:
    alice = await connect(with_user(Room.as_asgi(), None, room="room1", who="alice"))
    state = await frame(alice)
    assert list(state["members"].values()) == [{"user": "alice", "room": "room1"}]
    bob = await connect(with_user(Room.as_asgi(), None, room="room1", who="bob"))
    bob_state = await frame(bob)
    assert sorted(info["user"] for info in bob_state["members"].values()) == ["alice", "bob"]
    bob_key = bob_state["you"]
    joined = await next_of(alice, "presence.join")  # her own, coalesced, comes first
    assert joined["members"] == {state["you"]: {"user": "alice", "room": "room1"}}
    joined = await next_of(alice, "presence.join")
    assert joined["members"] == {bob_key: {"user": "bob", "room": "room1"}}
    await bob.disconnect()
    left = await next_of(alice, "presence.leave")
    assert left == {
        "type": "presence.leave",
        "group": "room1",
        "members": {bob_key: {"user": "bob", "room": "room1"}},
    }
    assert [info["user"] for info in (await layer.presence("room1")).values()] == ["alice"]
    await alice.disconnect()


async def test_events_of_groups_it_does_not_track_are_ignored(layer: InMemoryChannelLayer) -> None:
    client = await connect(Lobby.as_asgi())
    await frame(client)  # its presence.state
    await next_of(client, "presence.join")  # and its own join
    channel = next(iter(await layer.presence("lobby")))
    await layer.group_add("elsewhere", channel)  # a member, not tracked there
    await layer.presence_add("elsewhere", "someone.else", {"user": "x"})
    await layer.group_send("elsewhere", {"type": "presence.join", "group": "elsewhere"})
    assert await client.receive_nothing(0.3)
    await client.disconnect()


async def test_a_crashing_handler_still_removes_the_entry(layer: InMemoryChannelLayer) -> None:
    client = await connect(Lobby.as_asgi())
    await frame(client)
    await client.send_json_to({"crash": True})
    with pytest.raises(RuntimeError, match="a bug in a handler"):
        await client.wait(TIMEOUT)
    assert await layer.presence("lobby") == {}


async def test_a_plain_consumer_gets_json_text(layer: InMemoryChannelLayer) -> None:
    client = await connect(PlainRoom.as_asgi())
    text = await client.receive_from(TIMEOUT)
    assert json.loads(text)["type"] == "presence.state"
    await client.disconnect()


async def test_with_resume_the_member_list_follows_the_replay(
    layer: InMemoryChannelLayer,
) -> None:
    for n in range(2):
        await layer.group_send("lobby", {"type": "chat.message", "text": f"m{n}"})
    position = await layer.group_position("lobby")
    client = await connect(Resuming.as_asgi(), f"/ws/?since={position.epoch}:0")
    kinds = [await frame(client) for _ in range(4)]
    assert [f.get("type", f.get("message")) for f in kinds] == [
        "resume",
        "m0",
        "m1",
        "presence.state",
    ]
    await client.disconnect()
    assert await layer.presence("lobby") == {}


async def test_a_layer_that_is_down_closes_with_1013() -> None:
    channel_layers.set("default", DownLayer())
    try:
        communicator = WebsocketCommunicator(Lobby.as_asgi(), "/ws/")
        await communicator.send_input({"type": "websocket.connect"})
        accepted = await communicator.receive_output(TIMEOUT)
        assert accepted["type"] == "websocket.accept"
        closed = await communicator.receive_output(TIMEOUT)
        assert (closed["type"], closed["code"]) == ("websocket.close", 1013)
    finally:
        channel_layers.reset()
