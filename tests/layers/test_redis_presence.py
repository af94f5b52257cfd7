"""Presence on the Redis layer: its keys, liveness, sweeping, restarts and outages.

What every backend does is in ``tests/layers/test_presence_contract.py``; this file is what
only a shared backend has: entries of other processes, processes that die or vanish, a Redis
that restarts or freezes. Dead processes are made as the liveness tests make them: a
heartbeat written a minute ago, and entries recorded for it.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest
from roomcast.layers import LayerConnectionError
from roomcast.layers.presence import JOIN, LEAVE
from roomcast.layers.redis import RedisChannelLayer, resp

from tests.redis_server import RedisServer

TIMEOUT = 10.0
EVENTS = {"room": {"interval": 0.1}}
GONE = "0123456789abcdef"  # a process that beat a minute ago, then died


@pytest.fixture
async def make(
    redis_server: RedisServer, redis_prefix: str
) -> AsyncIterator[Callable[..., RedisChannelLayer]]:
    made: list[RedisChannelLayer] = []

    def build(server: RedisServer = redis_server, **options: Any) -> RedisChannelLayer:
        options.setdefault("prefix", redis_prefix)
        options.setdefault("presence", EVENTS)
        layer = RedisChannelLayer(hosts=[server.url], **options)
        made.append(layer)
        return layer

    yield build
    for layer in made:
        await asyncio.wait_for(layer.close(), TIMEOUT)


async def eventually(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await check()
        except LayerConnectionError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{check.__name__} did not succeed within {timeout} s")
        await asyncio.sleep(0.05)


async def watcher(layer: RedisChannelLayer) -> str:
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    return channel


async def next_event(layer: RedisChannelLayer, channel: str, kind: str) -> dict[str, Any]:
    """The next presence event of type ``kind`` (others, e.g. our own join, are skipped)."""
    while True:
        message = await asyncio.wait_for(layer.receive(channel), TIMEOUT)
        if message["type"] == kind:
            return message


def ghost_entry(server: RedisServer, prefix: str, owner: str, channel: str, info: Any) -> None:
    """An entry in ``room`` that ``owner`` wrote before it died (its info is binary, so it is
    written with a RESP command of our own)."""
    value = owner.encode() + msgpack.packb(info)
    command = resp.pack("HSET", f"{prefix}:pr{{room}}", channel, value)
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as connection:
        connection.sendall(command)
        assert connection.recv(64).startswith(b":")
    server.command("SADD", f"{prefix}:pp{{{owner}}}", "room")


def has_field(server: RedisServer, prefix: str, channel: str) -> bool:
    return server.command("HEXISTS", f"{prefix}:pr{{room}}", channel) == b":1\r\n"


async def test_entries_live_on_the_groups_hash_tag(
    make: Callable[..., RedisChannelLayer], redis_server: RedisServer, redis_prefix: str
) -> None:
    layer = make()
    channel = await layer.new_channel()
    await layer.presence_add("room", channel, {"user": "1"})
    assert has_field(redis_server, redis_prefix, channel)
    groups = redis_server.command("SMEMBERS", f"{redis_prefix}:pp{{{layer.process_id}}}")
    assert b"room" in groups
    await layer.presence_remove("room", channel)
    assert not has_field(redis_server, redis_prefix, channel)
    assert b"room" not in redis_server.command(
        "SMEMBERS", f"{redis_prefix}:pp{{{layer.process_id}}}"
    )


async def test_members_hear_another_processes_changes(
    make: Callable[..., RedisChannelLayer],
) -> None:
    here, there = make(), make()
    watching = await watcher(here)
    bob = await there.new_channel()
    await there.presence_add("room", bob, {"user": "2"})
    assert (await next_event(here, watching, JOIN))["members"] == {bob: {"user": "2"}}
    assert await here.presence("room") == {bob: {"user": "2"}}
    await there.presence_remove("room", bob)
    assert (await next_event(here, watching, LEAVE))["members"] == {bob: {"user": "2"}}
    assert await here.presence("room") == {}


async def test_a_removal_of_another_processes_entry_is_announced(
    make: Callable[..., RedisChannelLayer],
) -> None:
    here, there = make(), make()
    watching = await watcher(here)
    bob = await there.new_channel()
    await there.presence_add("room", bob, {"user": "2"})
    await next_event(here, watching, JOIN)
    await here.presence_remove("room", bob)  # say, an admin kicking Bob
    assert (await next_event(here, watching, LEAVE))["members"] == {bob: {"user": "2"}}
    assert await there.presence("room") == {}


async def test_a_lapsed_process_is_ignored_at_once_then_swept_and_announced(
    make: Callable[..., RedisChannelLayer], redis_server: RedisServer, redis_prefix: str
) -> None:
    layer = make(liveness_timeout=1)
    watching = await watcher(layer)
    mine = await layer.new_channel()
    await layer.presence_add("room", mine, {"user": "me"})
    ghost = f"specific.{GONE}!c0ffee"
    redis_server.command("ZADD", f"{redis_prefix}:procs", str(time.time() - 60), GONE)
    ghost_entry(redis_server, redis_prefix, GONE, ghost, {"user": "ghost"})
    assert await layer.presence("room") == {mine: {"user": "me"}}  # ignored at once
    leave = await next_event(layer, watching, LEAVE)  # swept by our heartbeat, and announced
    assert leave["members"] == {ghost: {"user": "ghost"}}
    assert not has_field(redis_server, redis_prefix, ghost)
    assert redis_server.command("EXISTS", f"{redis_prefix}:pp{{{GONE}}}") == b":0\r\n"
    assert layer.stats()["presence_swept"] == 1


async def test_entries_of_an_unknown_process_are_removed_by_a_reader(
    make: Callable[..., RedisChannelLayer], redis_server: RedisServer, redis_prefix: str
) -> None:
    """An owner missing from the liveness set altogether (it closed, or a sweep was cut
    short): the first reader removes its entries and announces them."""
    layer = make()
    watching = await watcher(layer)
    stray = "specific.fedcba9876543210!beef"
    ghost_entry(redis_server, redis_prefix, "fedcba9876543210", stray, {"user": "stray"})
    assert await layer.presence("room") == {}
    assert (await next_event(layer, watching, LEAVE))["members"] == {stray: {"user": "stray"}}
    assert not has_field(redis_server, redis_prefix, stray)


async def test_a_live_process_that_was_swept_writes_its_entries_back(
    make: Callable[..., RedisChannelLayer], redis_server: RedisServer, redis_prefix: str
) -> None:
    """As after a loop blocked past the timeout: the others were told it left; when it beats
    again it writes its entries back and announces them."""
    layer, observer = make(liveness_timeout=1), make(liveness_timeout=1)
    watching = await watcher(observer)
    channels = [await layer.new_channel() for _ in range(3)]
    for n, channel in enumerate(channels):
        await layer.presence_add("room", channel, {"n": n})
    redis_server.command("ZREM", f"{redis_prefix}:procs", layer.process_id)
    redis_server.command("DEL", f"{redis_prefix}:pr{{room}}")
    assert await observer.presence("room") == {}

    async def back() -> bool:
        return set(await observer.presence("room")) == set(channels)

    await eventually(back)
    seen: dict[str, Any] = {}
    while set(seen) != set(channels):  # the first join, then the joins of the rewrite
        seen.update((await next_event(observer, watching, JOIN))["members"])


async def test_entries_come_back_after_a_redis_restart(
    make: Callable[..., RedisChannelLayer], own_redis_server: RedisServer
) -> None:
    layer = make(own_redis_server, retry_timeout=0.5)
    channels = [await layer.new_channel() for _ in range(5)]
    for channel in channels:
        await layer.presence_add("room", channel, {"user": channel})
    own_redis_server.restart()  # no persistence: every key is gone

    async def back() -> bool:
        return set(await layer.presence("room")) == set(channels)

    await eventually(back)


async def test_a_remove_during_a_freeze_returns_and_is_finished_later(
    make: Callable[..., RedisChannelLayer], own_redis_server: RedisServer
) -> None:
    layer = make(own_redis_server, retry_timeout=0.5)
    observer = make(own_redis_server)
    channel = await layer.new_channel()
    await layer.presence_add("room", channel, {"user": "1"})
    assert own_redis_server.proc is not None
    own_redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.wait_for(layer.presence_remove("room", channel), TIMEOUT)  # no raise
    finally:
        own_redis_server.proc.send_signal(signal.SIGCONT)
    assert layer.stats()["presence_entries"] == 0

    async def gone() -> bool:
        return await observer.presence("room") == {}

    await eventually(gone)


async def test_an_add_while_redis_is_down_raises_and_leaves_nothing(
    make: Callable[..., RedisChannelLayer], own_redis_server: RedisServer
) -> None:
    layer = make(own_redis_server, retry_timeout=0.5)
    channel = await layer.new_channel()
    await layer.presence("room")  # connected once
    own_redis_server.kill()
    with pytest.raises(LayerConnectionError):
        await layer.presence_add("room", channel, {"user": "1"})
    assert layer.stats()["presence_entries"] == 0
    own_redis_server.start()

    async def reachable() -> bool:
        return await layer.presence("room") == {}

    await eventually(reachable)
    await asyncio.sleep(1)  # heartbeats re-record what this process holds: nothing
    assert await layer.presence("room") == {}


async def test_a_clean_close_removes_and_announces_its_entries(
    make: Callable[..., RedisChannelLayer], redis_server: RedisServer, redis_prefix: str
) -> None:
    here, leaving = make(), make()
    watching = await watcher(here)
    channels = [await leaving.new_channel() for _ in range(3)]
    for channel in channels:
        await leaving.presence_add("room", channel, {"user": channel})
    await leaving.close()
    seen: dict[str, Any] = {}
    while set(seen) != set(channels):
        seen.update((await next_event(here, watching, LEAVE))["members"])
    assert await here.presence("room") == {}
    assert redis_server.command("HLEN", f"{redis_prefix}:pr{{room}}") == b":0\r\n"


async def test_info_is_sealed_with_the_layers_encryption_keys(
    make: Callable[..., RedisChannelLayer], redis_server: RedisServer, redis_prefix: str
) -> None:
    pytest.importorskip("cryptography")
    layer = make(symmetric_encryption_keys=["secret"])
    channel = await layer.new_channel()
    await layer.presence_add("room", channel, {"name": "Alice Liddell"})
    stored = redis_server.command("HGET", f"{redis_prefix}:pr{{room}}", channel)
    assert b"Alice" not in stored
    assert await layer.presence("room") == {channel: {"name": "Alice Liddell"}}
    other = make(symmetric_encryption_keys=["another"])
    assert await other.presence("room") == {}  # unreadable: left out, counted
    assert other.counters.rejected == 1


async def test_calls_from_another_event_loop_run_on_the_layers_own(
    make: Callable[..., RedisChannelLayer],
) -> None:
    layer = make()
    channel = await layer.new_channel()

    def in_a_thread() -> dict[str, Any]:
        async def work() -> dict[str, Any]:
            await layer.presence_add("room", channel, {"user": "t"})
            return await layer.presence("room")

        return asyncio.run(work())

    assert await asyncio.to_thread(in_a_thread) == {channel: {"user": "t"}}


async def test_a_remove_while_redis_is_down_is_not_undone_by_the_restart(
    make: Callable[..., RedisChannelLayer], own_redis_server: RedisServer
) -> None:
    """Redis killed: the remove returns at once; when Redis is back the process writes back
    what it still holds, and only that."""
    layer = make(own_redis_server, retry_timeout=0.5, liveness_timeout=1)
    staying, leaving = await layer.new_channel(), await layer.new_channel()
    await layer.presence_add("room", staying, {"user": "stays"})
    await layer.presence_add("room", leaving, {"user": "leaves"})
    own_redis_server.kill()

    async def disconnected() -> bool:
        try:
            await layer.presence("room")
        except LayerConnectionError:
            return True
        return False

    await eventually(disconnected)
    await asyncio.wait_for(layer.presence_remove("room", leaving), TIMEOUT)  # no raise
    assert layer.stats()["presence_entries"] == 1
    own_redis_server.start()

    async def only_staying() -> bool:
        return await layer.presence("room") == {staying: {"user": "stays"}}

    await eventually(only_staying)
    assert layer.stats()["presence_unrecorded"] == 0
