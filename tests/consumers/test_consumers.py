"""The base consumers (consumers/base.py): dispatch, as_asgi, the channel layer, sync handlers.

Driven by the test communicators on the in-memory layer, and through the gateway on a real
socket with the ``websockets`` client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import roomcast.consumers.base
from asgiref.sync import async_to_sync
from roomcast.consumers import AsyncConsumer, StopConsumer, SyncConsumer, get_handler_name
from roomcast.consumers.testing import WebsocketCommunicator
from roomcast.layers import InMemoryChannelLayer
from roomcast.layers.exceptions import LayerConfigError
from roomcast.layers.settings import channel_layers
from websockets.asyncio.client import connect

from tests.gateway.ws_support import gateway_server

WAIT = 5.0


@pytest.fixture
def layer() -> Iterator[InMemoryChannelLayer]:
    """A fresh in-memory layer as ``"default"``; the registry is reset afterwards."""
    layer = InMemoryChannelLayer()
    channel_layers.set("default", layer)
    yield layer
    channel_layers.reset()


class Echo(AsyncConsumer):
    """A raw consumer: accepts, echoes frames, relays ``room.note`` layer messages."""

    greeting: str = "hello"

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        await self.send({"type": "websocket.accept"})
        await self.send({"type": "websocket.send", "text": self.greeting})

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        if message.get("text") == "whoami":
            await self.send({"type": "websocket.send", "text": self.channel_name})
        else:
            await self.send({"type": "websocket.send", "text": message.get("text")})

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        raise StopConsumer()

    async def room_note(self, event: dict[str, Any]) -> None:
        await self.send({"type": "websocket.send", "text": f"note:{event['text']}"})


async def connected(app: Any, path: str = "/ws/") -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(app, path)
    assert await communicator.connect() == (True, None)
    return communicator


# Handler names ------------------------------------------------------------------------------


def test_handler_name_replaces_dots() -> None:
    assert get_handler_name({"type": "chat.message"}) == "chat_message"
    assert get_handler_name({"type": "websocket.receive"}) == "websocket_receive"


@pytest.mark.parametrize("kind", ["_private", ".hidden", "__init__"])
def test_handler_name_with_a_leading_underscore_is_refused(kind: str) -> None:
    with pytest.raises(ValueError, match="leading underscore"):
        get_handler_name({"type": kind})


def test_handler_name_needs_a_str_type() -> None:
    with pytest.raises(ValueError, match="no 'type'"):
        get_handler_name({"text": "x"})
    with pytest.raises(ValueError, match="must be a str"):
        get_handler_name({"type": 3})


# as_asgi ------------------------------------------------------------------------------------


async def test_as_asgi_sets_initkwargs_as_attributes(layer: InMemoryChannelLayer) -> None:
    communicator = await connected(Echo.as_asgi(greeting="hi there"))
    assert await communicator.receive_from() == "hi there"
    await communicator.disconnect()


def test_as_asgi_refuses_unknown_and_private_keywords() -> None:
    with pytest.raises(TypeError, match="invalid keyword 'colour'"):
        Echo.as_asgi(colour="red")
    with pytest.raises(TypeError, match="invalid keyword '_sync'"):
        Echo.as_asgi(_sync=True)


def test_as_asgi_app_knows_its_consumer() -> None:
    app = Echo.as_asgi(greeting="x")
    assert app.consumer_class is Echo
    assert app.consumer_initkwargs == {"greeting": "x"}
    assert app.__name__ == "Echo"  # type: ignore[attr-defined]
    assert app.__doc__ == Echo.__doc__


async def test_each_connection_gets_its_own_instance(layer: InMemoryChannelLayer) -> None:
    app = Echo.as_asgi()
    first, second = await connected(app), await connected(app)
    names = []
    for communicator in (first, second):
        await communicator.receive_from()
        await communicator.send_to(text_data="whoami")
        names.append(await communicator.receive_from())
    assert names[0] != names[1]
    await first.disconnect()
    await second.disconnect()


# Dispatch ---------------------------------------------------------------------------------


async def test_layer_message_type_is_dispatched_to_the_method(layer: InMemoryChannelLayer) -> None:
    communicator = await connected(Echo.as_asgi())
    await communicator.receive_from()
    await communicator.send_to(text_data="whoami")
    channel = await communicator.receive_from()
    assert isinstance(channel, str)
    assert channel.startswith("specific.")
    # Nothing is asked of the client: the consumer waits on both sources at once.
    await layer.send(channel, {"type": "room.note", "text": "hi"})
    assert await communicator.receive_from() == "note:hi"
    await communicator.disconnect()


async def test_no_handler_raises_logs_and_ends_the_consumer(
    layer: InMemoryChannelLayer, caplog: pytest.LogCaptureFixture
) -> None:
    communicator = await connected(Echo.as_asgi())
    await communicator.receive_from()
    await communicator.send_to(text_data="whoami")
    channel = str(await communicator.receive_from())
    await layer.send(channel, {"type": "room.unknown"})
    with pytest.raises(ValueError, match=r"No handler for message type room\.unknown") as info:
        await communicator.receive_output()
    assert any("Echo" in note for note in info.value.__notes__)
    record = next(r for r in caplog.records if r.name == "roomcast.consumers")
    assert record.levelno == logging.ERROR
    assert "test_consumers.Echo" in record.getMessage()
    assert "'room.unknown'" in record.getMessage()


async def test_leading_underscore_type_from_the_layer_is_refused(
    layer: InMemoryChannelLayer,
) -> None:
    communicator = await connected(Echo.as_asgi())
    await communicator.receive_from()
    await communicator.send_to(text_data="whoami")
    channel = str(await communicator.receive_from())
    await layer.send(channel, {"type": "_sync"})
    with pytest.raises(ValueError, match="leading underscore"):
        await communicator.receive_output()


class Ordered(AsyncConsumer):
    """Records when each handler starts and ends; each handler yields to the loop."""

    log: list[tuple[str, str, str]]

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        self.log = []
        await self.send({"type": "websocket.accept"})
        await self.send({"type": "websocket.send", "text": self.channel_name})

    async def _work(self, source: str, item: str) -> None:
        self.log.append(("start", source, item))
        await asyncio.sleep(0.002)
        self.log.append(("end", source, item))
        if item == "last":
            await self.send({"type": "websocket.send", "text": json.dumps(self.log)})

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        await self._work("client", message["text"])

    async def layer_item(self, event: dict[str, Any]) -> None:
        await self._work("layer", event["item"])

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        raise StopConsumer()


async def test_both_sources_are_handled_one_at_a_time_in_order(
    layer: InMemoryChannelLayer,
) -> None:
    communicator = await connected(Ordered.as_asgi())
    channel = str(await communicator.receive_from())
    for n in range(10):
        await communicator.send_to(text_data=f"c{n}")
        await layer.send(channel, {"type": "layer.item", "item": f"l{n}"})
    await communicator.send_to(text_data="last")
    log = json.loads(await communicator.receive_from(timeout=WAIT))
    # Never two handlers at once: starts and ends strictly alternate.
    assert [step for step, _, _ in log] == ["start", "end"] * (len(log) // 2)
    starts = [(source, item) for step, source, item in log if step == "start"]
    assert [item for source, item in starts if source == "client"] == [
        *(f"c{n}" for n in range(10)),
        "last",
    ]
    assert [item for source, item in starts if source == "layer"] == [f"l{n}" for n in range(10)]
    await communicator.disconnect()


async def test_stop_consumer_ends_the_consumer_cleanly(layer: InMemoryChannelLayer) -> None:
    communicator = await connected(Echo.as_asgi())
    await communicator.receive_from()
    await communicator.disconnect()  # websocket_disconnect raises StopConsumer
    assert communicator.future.done()
    assert communicator.future.exception() is None


# The channel layer ----------------------------------------------------------------------


class LayerProbe(AsyncConsumer):
    """Tells the client whether it has a layer and a channel name."""

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        await self.send({"type": "websocket.accept"})
        name = getattr(self, "channel_name", None)
        text = f"{self.channel_layer is not None}:{name}"
        await self.send({"type": "websocket.send", "text": text})

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        raise StopConsumer()


async def test_channel_layer_alias_picks_the_layer(layer: InMemoryChannelLayer) -> None:
    other = InMemoryChannelLayer()
    channel_layers.set("other", other)

    class OtherProbe(LayerProbe):
        channel_layer_alias = "other"

        async def websocket_receive(self, message: dict[str, Any]) -> None:
            assert self.channel_layer is other
            await self.send({"type": "websocket.send", "text": "on other"})

    communicator = await connected(OtherProbe.as_asgi())
    has_layer, name = str(await communicator.receive_from()).split(":")
    assert has_layer == "True"
    await other.send(name, {"type": "websocket.receive", "text": "x"})
    assert await communicator.receive_from() == "on other"
    await communicator.disconnect()


async def test_alias_none_runs_without_a_layer(layer: InMemoryChannelLayer) -> None:
    communicator = await connected(LayerProbe.as_asgi(channel_layer_alias=None))
    assert await communicator.receive_from() == "False:None"
    await communicator.disconnect()


async def test_a_layer_lookup_returning_none_runs_without_a_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(roomcast.consumers.base, "get_channel_layer", lambda alias: None)
    communicator = await connected(LayerProbe.as_asgi())
    assert await communicator.receive_from() == "False:None"
    await communicator.disconnect()


async def test_an_unconfigured_alias_is_an_error(
    layer: InMemoryChannelLayer, caplog: pytest.LogCaptureFixture
) -> None:
    communicator = WebsocketCommunicator(LayerProbe.as_asgi(channel_layer_alias="nope"), "/")
    with pytest.raises(LayerConfigError, match="no channel layer 'nope'"):
        await communicator.connect()
    assert "LayerProbe raised LayerConfigError" in caplog.text


# A client that goes away ------------------------------------------------------------------


class Remembers(AsyncConsumer):
    """Records what it handled; sending a frame fails (the client is gone)."""

    handled: list[str] = []

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        self.handled.append("connect")
        await self.send({"type": "websocket.accept"})

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        self.handled.append("receive")
        await self.send({"type": "websocket.send", "text": "late"})
        self.handled.append("not reached")

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self.handled.append(f"disconnect {message['code']}")
        raise StopConsumer()


class SyncRemembers(SyncConsumer):
    """The same, written synchronously: the OSError comes back through async_to_sync."""

    handled: list[str] = []

    def websocket_connect(self, message: dict[str, Any]) -> None:
        self.handled.append("connect")
        self.send({"type": "websocket.accept"})

    def websocket_receive(self, message: dict[str, Any]) -> None:
        self.handled.append("receive")
        self.send({"type": "websocket.send", "text": "late"})
        self.handled.append("not reached")

    def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self.handled.append(f"disconnect {message['code']}")
        raise StopConsumer()


@pytest.mark.parametrize("consumer", [Remembers, SyncRemembers])
async def test_send_after_the_client_went_away_waits_for_the_disconnect(
    layer: InMemoryChannelLayer, caplog: pytest.LogCaptureFixture, consumer: type[Any]
) -> None:
    """An OSError from ``send`` (ASGI 2.4) abandons the handler quietly; the disconnect runs."""
    handled: list[str] = []
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send(message: Any) -> None:
        if message["type"] == "websocket.send":
            raise OSError("client went away")

    for message in (
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "x"},
        {"type": "websocket.disconnect", "code": 1006},
    ):
        inbox.put_nowait(message)
    scope = {"type": "websocket", "path": "/", "headers": [], "subprotocols": []}
    await asyncio.wait_for(consumer.as_asgi(handled=handled)(scope, inbox.get, send), WAIT)
    assert handled == ["connect", "receive", "disconnect 1006"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# Sync consumers -----------------------------------------------------------------------------


class SyncEcho(SyncConsumer):
    """Runs in a worker thread; uses ``self.send`` and the layer through async_to_sync."""

    loop_thread: int = 0

    def websocket_connect(self, message: dict[str, Any]) -> None:
        self.send({"type": "websocket.accept"})
        in_thread = threading.get_ident() != self.loop_thread
        self.send({"type": "websocket.send", "text": f"thread:{in_thread}"})

    def websocket_receive(self, message: dict[str, Any]) -> None:
        assert self.channel_layer is not None
        send = async_to_sync(self.channel_layer.send)
        send(self.channel_name, {"type": "sync.note", "text": message["text"]})

    def sync_note(self, event: dict[str, Any]) -> None:
        self.send({"type": "websocket.send", "text": f"note:{event['text']}"})

    def websocket_disconnect(self, message: dict[str, Any]) -> None:
        raise StopConsumer()


async def test_sync_consumer_runs_handlers_in_a_thread(layer: InMemoryChannelLayer) -> None:
    app = SyncEcho.as_asgi(loop_thread=threading.get_ident())
    communicator = await connected(app)
    assert await communicator.receive_from() == "thread:True"
    await communicator.send_to(text_data="via layer")
    assert await communicator.receive_from() == "note:via layer"
    await communicator.disconnect()


async def test_sync_consumer_thread_pool_option(layer: InMemoryChannelLayer) -> None:
    app = SyncEcho.as_asgi(loop_thread=threading.get_ident(), thread_sensitive=False)
    communicator = await connected(app)
    assert await communicator.receive_from() == "thread:True"
    await communicator.disconnect()


async def test_sync_consumer_without_a_handler(
    layer: InMemoryChannelLayer, caplog: pytest.LogCaptureFixture
) -> None:
    communicator = await connected(SyncEcho.as_asgi())
    await communicator.receive_from()
    await communicator.send_input({"type": "websocket.mystery"})
    with pytest.raises(ValueError, match=r"No handler for message type websocket\.mystery"):
        await communicator.receive_output()
    assert "SyncEcho" in caplog.text


# Through the gateway -------------------------------------------------------------------------


async def test_async_consumer_through_the_gateway(layer: InMemoryChannelLayer) -> None:
    async with (
        gateway_server(Echo.as_asgi(greeting="over tcp")) as served,
        connect(served.url("/ws/"), proxy=None, ping_interval=None) as ws,
    ):
        assert await ws.recv() == "over tcp"
        await ws.send("whoami")
        channel = str(await ws.recv())
        await layer.send(channel, {"type": "room.note", "text": "from the layer"})
        assert await asyncio.wait_for(ws.recv(), WAIT) == "note:from the layer"
        await ws.send("echo")
        assert await ws.recv() == "echo"


async def test_sync_consumer_through_the_gateway(layer: InMemoryChannelLayer) -> None:
    app = SyncEcho.as_asgi(loop_thread=threading.get_ident())
    async with (
        gateway_server(app) as served,
        connect(served.url("/ws/"), proxy=None, ping_interval=None) as ws,
    ):
        assert await ws.recv() == "thread:True"
        await ws.send("round trip")
        assert await asyncio.wait_for(ws.recv(), WAIT) == "note:round trip"
