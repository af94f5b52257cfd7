"""Liveness at the layer: records of processes whose heartbeat lapsed are ignored at once and
swept; a live process that was swept records its memberships again by itself."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from roomcast.layers import LayerConnectionError
from roomcast.layers.redis import RedisChannelLayer

from tests.redis_server import RedisServer


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


async def test_records_of_a_lapsed_process_are_ignored_then_swept(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix, liveness_timeout=1)
    gone = "0123456789abcdef"  # a process that beat a minute ago and then died
    ghost = f"specific.{gone}!c0ffee"
    try:
        mine = await layer.new_channel()
        await layer.group_add("room", mine)
        redis_server.command("ZADD", f"{redis_prefix}:procs", str(time.time() - 60), gone)
        redis_server.command("ZADD", f"{redis_prefix}:g{{room}}", str(time.time()), ghost)
        redis_server.command("SADD", f"{redis_prefix}:pg{{{gone}}}", "room")
        assert await layer.group_members("room") == [mine]  # ignored at once

        async def swept() -> bool:
            reply = redis_server.command("ZSCORE", f"{redis_prefix}:g{{room}}", ghost)
            return reply == b"$-1\r\n"

        await eventually(swept)  # and removed by our heartbeat's sweep
        assert redis_server.command("EXISTS", f"{redis_prefix}:pg{{{gone}}}") == b":0\r\n"
        assert redis_server.command("ZSCORE", f"{redis_prefix}:procs", gone) == b"$-1\r\n"
        assert layer.stats()["swept_processes"] == 1
    finally:
        await layer.flush()
        await layer.close()


async def test_records_of_an_unknown_process_are_ignored_and_removed(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix)
    stray = "specific.fedcba9876543210!beef"  # recorded for a process that never beat
    try:
        redis_server.command("ZADD", f"{redis_prefix}:g{{room}}", str(time.time()), stray)
        await layer.group_add("room", "worker.jobs")  # plain members are not processes
        assert await layer.group_members("room") == ["worker.jobs"]

        async def removed() -> bool:
            reply = redis_server.command("ZSCORE", f"{redis_prefix}:g{{room}}", stray)
            return reply == b"$-1\r\n"

        await eventually(removed)
    finally:
        await layer.flush()
        await layer.close()


async def test_a_live_process_that_was_swept_records_itself_again(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """As after a Redis restart without persistence, or a loop blocked past the timeout."""
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix, liveness_timeout=1)
    try:
        channels = [await layer.new_channel() for _ in range(3)]
        for channel in channels:
            await layer.group_add("room", channel)
        redis_server.command("ZREM", f"{redis_prefix}:procs", layer.process_id)
        redis_server.command("DEL", f"{redis_prefix}:g{{room}}", f"{redis_prefix}:pg{{room}}")
        assert await layer.group_members("room") == []

        async def back() -> bool:
            return sorted(await layer.group_members("room")) == sorted(channels)

        await eventually(back)
        pg = redis_server.command("SMEMBERS", f"{redis_prefix}:pg{{{layer.process_id}}}")
        assert b"room" in pg
    finally:
        await layer.flush()
        await layer.close()


async def test_a_clean_close_unregisters_the_process(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix)
    observer = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix)
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        assert await observer.group_members("room") == [channel]
        await layer.close()  # a process that exits without leaving its groups

        async def left() -> bool:
            return await observer.group_members("room") == []

        await eventually(left, timeout=10)
    finally:
        await observer.flush()
        await observer.close()
