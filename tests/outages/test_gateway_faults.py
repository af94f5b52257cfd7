"""Faults under real gateways: a gateway killed with SIGKILL, Redis frozen during a chat."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest
import websockets
from roomcast.layers.redis import RedisChannelLayer
from websockets.asyncio.client import ClientConnection

from tests.outages.support import Gateway, gateways
from tests.redis_server import RedisServer

LIVENESS = 3.0  # seconds: the gateways' liveness_timeout in these tests


@asynccontextmanager
async def members(gateway: Gateway, room: str, count: int) -> AsyncIterator[list[ClientConnection]]:
    async with AsyncExitStack() as stack:
        clients = []
        for start in range(0, count, 100):
            batch = await asyncio.gather(
                *(
                    stack.enter_async_context(
                        websockets.connect(f"{gateway.url}/room/{room}/", ping_interval=None)
                    )
                    for _ in range(start, min(count, start + 100))
                )
            )
            clients += batch
        for client in clients:
            assert "joined" in json.loads(await asyncio.wait_for(client.recv(), 30))
        yield clients


async def heard(client: ClientConnection, n: int, timeout: float = 15.0) -> bool:
    async with asyncio.timeout(timeout):
        while True:
            if json.loads(await client.recv()).get("n") == n:
                return True


async def test_a_killed_gateways_members_vanish_within_the_liveness_bound(
    own_redis_server: RedisServer,
) -> None:
    server = own_redis_server
    observer = RedisChannelLayer(hosts=[server.url], prefix="kill")
    with gateways(2, server.url, "kill", liveness_timeout=str(LIVENESS)) as (a, b):
        async with members(a, "room", 10) as survivors, members(b, "room", 500):
            deadline = time.monotonic() + 60

            async def everyone() -> bool:
                return len(await observer.group_members("room")) == 510

            while not await everyone():  # (a loaded machine may delay a heartbeat)
                assert time.monotonic() < deadline, "not all 510 members are listed"
                await asyncio.sleep(0.1)
            b_process = b.stats()["process"]
            b.process.signal(signal.SIGKILL)
            b.process.wait()
            killed_at = time.monotonic()

            async def only_survivors() -> bool:
                listed = await observer.group_members("room")
                return len(listed) == 10 and all(b_process not in m for m in listed)

            deadline = killed_at + LIVENESS + 30  # generous: the bound plus a slow machine
            while not await only_survivors():
                assert time.monotonic() < deadline, "the dead gateway's members linger"
                await asyncio.sleep(0.1)
            # Its records are swept from Redis too, and its inbox and group list with them.
            while int(server.command("ZCARD", "kill:g{room}")[1:-2]) != 10:
                assert time.monotonic() < deadline, "the dead gateway's records linger"
                await asyncio.sleep(0.1)
            assert server.command("EXISTS", f"kill:pg{{{b_process}}}") == b":0\r\n"
            # The other gateway's group_sends reach only itself now: one process subscribed.
            await survivors[0].send(json.dumps({"say": "still here?", "n": 7}))
            assert all(await asyncio.gather(*(heard(c, 7) for c in survivors)))
            numsub = server.command("PUBSUB", "NUMSUB", "kill:g{room}")
            assert numsub.endswith(b":1\r\n"), numsub
            await observer.group_send("room", {"type": "room.say", "text": "x", "n": 8})
            assert observer.last_group_receivers == 1
    await observer.close()


async def test_redis_frozen_for_three_seconds_loses_no_message_and_no_client(
    own_redis_server: RedisServer,
) -> None:
    server = own_redis_server
    assert server.proc is not None
    with gateways(2, server.url, "blip", retry_timeout="10") as (a, b):
        async with members(a, "room", 3) as on_a, members(b, "room", 3) as on_b:
            everyone = on_a + on_b
            server.proc.send_signal(signal.SIGSTOP)
            try:
                await on_a[0].send(json.dumps({"say": "during the outage", "n": 1}))
                await asyncio.sleep(3.0)
            finally:
                server.proc.send_signal(signal.SIGCONT)
            assert all(await asyncio.gather(*(heard(c, 1, timeout=20) for c in everyone)))
            # Nobody was disconnected: everyone still chats.
            await on_b[0].send(json.dumps({"say": "after", "n": 2}))
            assert all(await asyncio.gather(*(heard(c, 2) for c in everyone)))
        for gateway in (a, b):
            assert len(gateway.trouble()) <= 4, gateway.trouble()


async def test_redis_frozen_past_retry_timeout_gives_1013_and_503(
    own_redis_server: RedisServer,
) -> None:
    server = own_redis_server
    assert server.proc is not None
    with gateways(1, server.url, "down", retry_timeout="1") as (a,):
        async with members(a, "room", 2) as (sender, idle):
            server.proc.send_signal(signal.SIGSTOP)
            try:
                await sender.send(json.dumps({"say": "into the void", "n": 1}))
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(sender.recv(), 20)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1013
                async with httpx.AsyncClient() as http:
                    response = await http.post(
                        f"http://127.0.0.1:{a.port}/publish/room/", timeout=20
                    )
                assert response.status_code == 503
                assert response.headers["retry-after"] == "5"
            finally:
                server.proc.send_signal(signal.SIGCONT)
            # The idle member was never closed and hears the room again once Redis is back.
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient() as http:
                response = await http.post(f"http://127.0.0.1:{a.port}/publish/room/", timeout=20)
            assert response.status_code == 200
            assert await heard(idle, -1)
        trouble = a.trouble()
        # One line per failed call, no traceback; the outage itself may add its own lines.
        assert not any("Traceback" in line for line in trouble), trouble
        assert sum("closing with 1013" in line for line in trouble) == 1
        assert sum("answering 503" in line for line in trouble) == 1
