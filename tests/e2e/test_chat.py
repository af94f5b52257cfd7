"""The chat example end to end: real gateway processes, real WebSocket clients.

On the in-memory layer one gateway serves the page and the rooms (the README's first command);
on the Redis layer two gateway processes share rooms through a real redis-server, as the
horizontally scaled deployment does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.gateway.apps import GatewayProcess, free_port
from tests.redis_server import RedisServer

APP = "examples.chat.asgi:application"


def start_gateway(port: int, env: dict[str, str] | None = None) -> GatewayProcess:
    gateway = GatewayProcess(APP, "-p", str(port), env=env)
    gateway.wait_listening()
    return gateway


def join(port: int, room: str) -> websockets.asyncio.client.connect:
    return websockets.connect(
        f"ws://127.0.0.1:{port}/ws/chat/{room}/", origin=f"http://127.0.0.1:{port}"
    )


async def say(client: ClientConnection, text: str) -> None:
    await client.send(json.dumps({"message": text}))


async def heard(client: ClientConnection) -> str:
    message: str = json.loads(await asyncio.wait_for(client.recv(), 5))["message"]
    return message


@pytest.fixture
def memory_gateway() -> Iterator[int]:
    port = free_port()
    with start_gateway(port, env={"ROOMCAST_LAYER_URL": ""}):
        yield port


async def test_page_and_room_on_the_in_memory_layer(memory_gateway: int) -> None:
    port = memory_gateway
    async with httpx.AsyncClient() as http:
        page = await http.get(f"http://127.0.0.1:{port}/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "new WebSocket" in page.text
    async with join(port, "lobby") as alice, join(port, "lobby") as bob, join(port, "other") as eve:
        await say(alice, "hi bob")
        assert await heard(alice) == "hi bob"
        assert await heard(bob) == "hi bob"
        await say(bob, "hi alice")
        assert await heard(alice) == "hi alice"
        await say(eve, "elsewhere")
        assert await heard(eve) == "elsewhere"
        # Eve's room is not Alice's: the next thing Alice hears is Bob's, not Eve's.
        await say(bob, "still here")
        assert await heard(alice) == "still here"


async def test_bad_origin_and_bad_room_are_refused(memory_gateway: int) -> None:
    port = memory_gateway
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/ws/chat/lobby/", origin="http://evil.example"
        ):
            pass
    assert refused.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus) as bad_room:
        async with join(port, "no%20spaces"):
            pass
    assert bad_room.value.response.status_code == 403


async def test_two_gateways_share_rooms_through_redis(own_redis_server: RedisServer) -> None:
    env = {"ROOMCAST_LAYER_URL": f"{own_redis_server.url}?prefix=chat"}
    ports = free_port(), free_port()
    with start_gateway(ports[0], env), start_gateway(ports[1], env):
        async with join(ports[0], "lobby") as alice, join(ports[1], "lobby") as bob:
            await say(alice, "from gateway one")
            assert await heard(alice) == "from gateway one"
            assert await heard(bob) == "from gateway one"
            for n in range(20):
                await say(bob, f"from gateway two #{n}")
            expected = [f"from gateway two #{n}" for n in range(20)]
            assert [await heard(alice) for _ in range(20)] == expected
            # Bob hears himself too (and reads it all, so his close handshake is prompt).
            assert [await heard(bob) for _ in range(20)] == expected
