"""Two OS processes sharing groups through a real redis-server."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from roomcast.layers.redis import RedisChannelLayer

from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]


class Peer:
    """The peer process, read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        assert line, "peer process exited early"
        record: dict[str, Any] = json.loads(line)
        return record

    async def got(self, count: int) -> list[dict[str, Any]]:
        return [(await self.next())["got"] for _ in range(count)]


@pytest.fixture
async def peer(redis_server: RedisServer, redis_prefix: str) -> AsyncIterator[Peer]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.layers.peer_process",
        redis_server.url,
        redis_prefix,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    yield Peer(proc)
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


@pytest.fixture
async def layer(redis_server: RedisServer, redis_prefix: str) -> AsyncIterator[RedisChannelLayer]:
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix)
    yield layer
    await layer.flush()
    await layer.close()


async def test_group_shared_by_two_processes(peer: Peer, layer: RedisChannelLayer) -> None:
    ready = await peer.next()
    theirs = ready["ready"]
    mine = await layer.new_channel()
    await layer.group_add("room", mine)

    for n in range(50):
        await layer.group_send("room", {"type": "chat.message", "n": n})

    # The other process got one copy of each, in order; so did our own member.
    assert [m["n"] for m in await peer.got(50)] == list(range(50))
    assert [(await layer.receive(mine))["n"] for _ in range(50)] == list(range(50))
    # Redis knows both memberships, though each process fans out only to its own.
    assert set(await layer.group_members("room")) == {theirs, mine}


async def test_direct_send_and_reply_across_processes(peer: Peer, layer: RedisChannelLayer) -> None:
    theirs = (await peer.next())["ready"]
    mine = await layer.new_channel()
    await layer.group_add("back", mine)

    for n in range(20):
        await layer.send(theirs, {"type": "ping", "n": n})
    assert [m["n"] for m in await peer.got(20)] == list(range(20))
    pongs = [await asyncio.wait_for(layer.receive(mine), 5) for _ in range(20)]
    assert [(p["type"], p["n"]) for p in pongs] == [("pong", n) for n in range(20)]


async def test_group_add_of_a_channel_in_another_process(
    peer: Peer, layer: RedisChannelLayer
) -> None:
    theirs = (await peer.next())["ready"]
    # We add *their* channel to a group; their process learns it through its inbox.
    await layer.group_add("elsewhere", theirs)
    # It joins when it reads its inbox: probe until the first probe arrives (documented:
    # group messages published before it joined miss it).
    first = asyncio.ensure_future(peer.next(timeout=10))
    while not first.done():
        await layer.group_send("elsewhere", {"type": "probe"})
        await asyncio.wait({first}, timeout=0.02)
    assert (await first)["got"]["type"] == "probe"
    await layer.group_discard("elsewhere", theirs)
    await asyncio.sleep(0.2)  # the discard also travels through their inbox
    await layer.group_send("elsewhere", {"type": "after.discard"})
    await layer.send(theirs, {"type": "marker"})
    remaining = []
    while (message := (await peer.next())["got"])["type"] != "marker":
        remaining.append(message["type"])
    assert "after.discard" not in remaining


async def test_peer_leaving_stops_delivery(peer: Peer, layer: RedisChannelLayer) -> None:
    theirs = (await peer.next())["ready"]
    await layer.send(theirs, {"type": "stop"})
    assert (await peer.next())["got"]["type"] == "stop"
    counters = (await peer.next())["counters"]
    assert counters["dropped"] == 0
    assert await peer.proc.wait() == 0
    assert theirs not in await layer.group_members("room")


async def test_membership_records_lapse(redis_server: RedisServer, redis_prefix: str) -> None:
    """Redis's record of a membership expires with group_expiry, as the local one does."""
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix, group_expiry=0.3)
    try:
        await layer.group_add("short", "worker.jobs")
        assert await layer.group_members("short") == ["worker.jobs"]
        await asyncio.sleep(0.5)
        assert await layer.group_members("short") == []
        await layer.group_send("short", {"type": "late"})  # the lapsed member gets nothing
        await layer.send("worker.jobs", {"type": "marker"})
        assert (await asyncio.wait_for(layer.receive("worker.jobs"), 5))["type"] == "marker"
        ttl = int(redis_server.command("PTTL", f"{redis_prefix}:g{{short}}")[1:-2])
        assert ttl <= 301  # the record's key goes away too
    finally:
        await layer.flush()
        await layer.close()
