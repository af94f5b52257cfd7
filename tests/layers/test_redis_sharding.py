"""Several Redis hosts: names spread over shards the same way in every process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest
from roomcast.layers.redis import RedisChannelLayer
from roomcast.layers.redis.sharding import jump_hash, shard_for

from tests.redis_server import RedisServer


def test_jump_hash_is_balanced_and_moves_little() -> None:
    names = [f"room-{n}" for n in range(4000)]
    three = [shard_for(name, 3) for name in names]
    assert set(Counter(three).values()) <= set(range(1100, 1600))
    four = [shard_for(name, 4) for name in names]
    moved = sum(1 for old, new in zip(three, four, strict=True) if old != new)
    # Growing from 3 to 4 hosts moves about a quarter of the names, all of them to the new one.
    assert 800 < moved < 1200
    assert all(new == 3 for old, new in zip(three, four, strict=True) if old != new)
    assert jump_hash(0, 1) == 0
    with pytest.raises(ValueError, match="positive"):
        jump_hash(1, 0)


def test_every_process_computes_the_same_shard() -> None:
    """No per-process salt (unlike ``hash()``): another interpreter agrees."""
    names = ["room", "specific.abc!x", "worker.jobs", "0123456789abcdef"]
    here = [shard_for(name, 5) for name in names]
    code = (
        "from roomcast.layers.redis.sharding import shard_for; "
        f"print([shard_for(n, 5) for n in {names!r}])"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert there.strip() == str(here)


@pytest.fixture
def two_servers() -> Iterator[list[RedisServer]]:
    servers = [RedisServer().start(), RedisServer().start()]
    yield servers
    for server in servers:
        server.cleanup()


@pytest.fixture
async def two_layers(two_servers: list[RedisServer]) -> AsyncIterator[list[RedisChannelLayer]]:
    hosts = [server.url for server in two_servers]
    layers = [RedisChannelLayer(hosts=hosts, prefix="sh") for _ in range(2)]
    yield layers
    for layer in layers:
        await layer.close()


def keys_on(server: RedisServer) -> bytes:
    return server.command("KEYS", "sh:*")


async def test_groups_and_channels_spread_over_both_shards(
    two_servers: list[RedisServer], two_layers: list[RedisChannelLayer]
) -> None:
    a, b = two_layers
    groups = [f"room{n}" for n in range(12)]
    assert {shard_for(group, 2) for group in groups} == {0, 1}
    members = [await b.new_channel() for _ in groups]
    for group, member in zip(groups, members, strict=True):
        await b.group_add(group, member)
    for group in groups:
        await a.group_send(group, {"type": "hello", "group": group})
    got = [await asyncio.wait_for(b.receive(member), 5) for member in members]
    assert [message["group"] for message in got] == groups
    # Each group's record lives on the shard its name hashes to, and nowhere else.
    for group in groups:
        owner = shard_for(group, 2)
        assert f"sh:g{{{group}}}".encode() in keys_on(two_servers[owner])
        assert f"sh:g{{{group}}}".encode() not in keys_on(two_servers[1 - owner])


async def test_direct_send_reaches_the_shard_its_process_reads(
    two_servers: list[RedisServer], two_layers: list[RedisChannelLayer]
) -> None:
    a, b = two_layers
    # Plain channels on both shards, and a process-local channel whose inbox is on one.
    plain = [f"jobs{n}" for n in range(8)]
    assert {shard_for(name, 2) for name in plain} == {0, 1}
    for name in plain:
        await a.send(name, {"type": "job", "name": name})
    assert [(await b.receive(name))["name"] for name in plain] == plain
    theirs = await b.new_channel()
    for n in range(10):
        await a.send(theirs, {"type": "direct", "n": n})
    assert [(await asyncio.wait_for(b.receive(theirs), 5))["n"] for _ in range(10)] == list(
        range(10)
    )


async def test_flush_clears_every_shard(
    two_servers: list[RedisServer], two_layers: list[RedisChannelLayer]
) -> None:
    a, _ = two_layers
    for n in range(8):
        await a.send(f"jobs{n}", {"type": "job"})
    assert all(keys_on(server) != b"*0\r\n" for server in two_servers)
    await a.flush()
    assert [keys_on(server) for server in two_servers] == [b"*0\r\n", b"*0\r\n"]
