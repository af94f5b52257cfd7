"""A channel layer that cannot reach Redis, seen from the consumers: 1013 and 503, one log line.

The layer is the real Redis layer, its Redis a real redis-server that the test stops with
SIGSTOP (so calls wait out ``retry_timeout`` and then fail as they would in production).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from roomcast.consumers import AsyncHttpConsumer, AsyncJsonWebsocketConsumer, WebsocketConsumer
from roomcast.consumers.testing import HttpCommunicator, WebsocketCommunicator
from roomcast.layers.redis import RedisChannelLayer
from roomcast.layers.settings import channel_layers

from tests.redis_server import RedisServer


@pytest.fixture
def frozen_redis(own_redis_server: RedisServer) -> Iterator[RedisServer]:
    yield own_redis_server
    if own_redis_server.proc is not None:
        own_redis_server.proc.send_signal(signal.SIGCONT)


@pytest.fixture
async def layer(frozen_redis: RedisServer) -> AsyncIterator[RedisChannelLayer]:
    layer = RedisChannelLayer(hosts=[frozen_redis.url], prefix="down", retry_timeout=0.3)
    channel_layers.set("default", layer)
    yield layer
    if frozen_redis.proc is not None:
        frozen_redis.proc.send_signal(signal.SIGCONT)
    await layer.close()
    channel_layers.reset()


def freeze(server: RedisServer) -> None:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)


class Chat(AsyncJsonWebsocketConsumer):
    groups = ["room"]

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.channel_layer.group_send("room", {"type": "chat.message", "text": content})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json(event["text"])


class SyncChat(WebsocketConsumer):
    groups = ["room"]


class Publish(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        await self.channel_layer.group_send("news", {"type": "news.item"})
        await self.send_response(200, b"sent")


def layer_down_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("roomcast.consumers")]


async def test_a_send_while_redis_is_down_closes_1013_with_one_line(
    layer: RedisChannelLayer, frozen_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = WebsocketCommunicator(Chat.as_asgi(), "/chat/")
    connected, _ = await client.connect(timeout=5)
    assert connected
    freeze(frozen_redis)
    await client.send_json_to({"text": "hello"})
    closed = await client.receive_output(timeout=10)
    assert closed == {"type": "websocket.close", "code": 1013, "reason": "try again later"}
    await client.send_input({"type": "websocket.disconnect", "code": 1013})
    await client.wait(timeout=10)  # the consumer ends normally: no exception re-raised
    lines = layer_down_lines(caplog)
    assert len(lines) == 1
    assert "closing with 1013" in lines[0].getMessage()
    assert lines[0].exc_info is None  # no traceback


@pytest.mark.parametrize("consumer", [Chat, SyncChat])
async def test_a_handshake_while_redis_is_down_is_accepted_then_closed_1013(
    layer: RedisChannelLayer,
    frozen_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
    consumer: Any,
) -> None:
    warm = await layer.new_channel()  # the layer's connections are open: then Redis freezes
    await layer.group_add("warm", warm)
    freeze(frozen_redis)
    client = WebsocketCommunicator(consumer.as_asgi(), "/chat/")
    await client.send_input({"type": "websocket.connect"})
    assert (await client.receive_output(timeout=10))["type"] == "websocket.accept"
    closed = await client.receive_output(timeout=10)
    assert closed["type"] == "websocket.close"
    assert closed["code"] == 1013
    await client.send_input({"type": "websocket.disconnect", "code": 1013})
    await client.wait(timeout=10)
    assert len(layer_down_lines(caplog)) == 1


async def test_an_http_request_while_redis_is_down_is_503(
    layer: RedisChannelLayer, frozen_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    await layer.new_channel()
    freeze(frozen_redis)
    client = HttpCommunicator(Publish.as_asgi(), "POST", "/publish/")
    response = await client.get_response(timeout=10)
    assert response["status"] == 503
    assert (b"retry-after", b"5") in response["headers"]
    assert b"try again later" in response["body"]
    lines = layer_down_lines(caplog)
    assert len(lines) == 1
    assert "answering 503" in lines[0].getMessage()
    assert lines[0].exc_info is None


async def test_a_short_freeze_is_waited_out_by_the_consumer(
    frozen_redis: RedisServer,
) -> None:
    """Shorter than retry_timeout: the message sent during the freeze arrives after it."""
    layer = RedisChannelLayer(hosts=[frozen_redis.url], prefix="blip", retry_timeout=10)
    channel_layers.set("default", layer)
    try:
        client = WebsocketCommunicator(Chat.as_asgi(), "/chat/")
        assert (await client.connect(timeout=5))[0]
        freeze(frozen_redis)
        await client.send_json_to({"text": "during the freeze"})
        assert await client.receive_nothing(timeout=1.0)
        assert frozen_redis.proc is not None
        frozen_redis.proc.send_signal(signal.SIGCONT)
        assert await client.receive_json_from(timeout=10) == {"text": "during the freeze"}
        await client.disconnect()
    finally:
        if frozen_redis.proc is not None:
            frozen_redis.proc.send_signal(signal.SIGCONT)
        await layer.close()
        channel_layers.reset()
