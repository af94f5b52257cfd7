"""A real redis-server killed and restarted under traffic: the layer recovers by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from roomcast.layers import ChannelFull, LayerConnectionError
from roomcast.layers.redis import RedisChannelLayer

from tests.redis_server import RedisServer


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Whatever reaches the event loop's exception handler (e.g. a background task's crash)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)


async def eventually(check: Any, timeout: float = 15.0) -> Any:
    """Retry an async check until it returns a true value; fail after ``timeout``."""
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


async def test_kill_and_restart_under_traffic(
    own_redis_server: RedisServer, loop_errors: list[dict[str, Any]]
) -> None:
    url = own_redis_server.url
    a = RedisChannelLayer(hosts=[url], prefix="rs", capacity=1000)
    # Another process, as far as Redis knows: its own inbox and subscriber connections.
    b = RedisChannelLayer(hosts=[url], prefix="rs", capacity=1000)
    try:
        mine, theirs = await a.new_channel(), await b.new_channel()
        await a.group_add("room", mine)
        await b.group_add("room", theirs)
        plain_receive = asyncio.ensure_future(b.receive("jobs"))  # waits through the outage

        failures = 0
        sent = 0

        async def traffic() -> None:
            nonlocal failures, sent
            for n in range(400):
                try:
                    await a.group_send("room", {"type": "tick", "n": n})
                    sent += 1
                except LayerConnectionError:
                    failures += 1
                await asyncio.sleep(0.005)

        traffic_task = asyncio.ensure_future(traffic())
        await asyncio.sleep(0.3)
        own_redis_server.kill()
        await asyncio.sleep(0.5)
        own_redis_server.start()
        await traffic_task
        # The outage (half a second) is shorter than retry_timeout: calls waited it out. Only
        # a group_send in flight at the instant of the kill may fail (Redis may or may not
        # have run it: written again it could arrive twice).
        assert failures <= 1
        assert sent + failures == 400

        # Drain what arrived; delivery was at most once and in order.
        async def drain(layer: RedisChannelLayer, channel: str) -> list[int]:
            seen = []
            while True:
                try:
                    message = await asyncio.wait_for(layer.receive(channel), 0.2)
                except TimeoutError:
                    return seen
                seen.append(message["n"])

        for seen in (await drain(a, mine), await drain(b, theirs)):
            assert seen == sorted(set(seen))

        # After the restart, b's subscription is restored from its own state: every group
        # message sent from now on reaches it, in order.
        async def b_resubscribed() -> bool:
            await a.group_send("room", {"type": "probe", "n": -1})
            try:
                got = await asyncio.wait_for(b.receive(theirs), 0.2)
            except TimeoutError:
                return False
            return got["type"] == "probe"

        await eventually(b_resubscribed)
        await drain(b, theirs)
        for n in range(100):
            await a.group_send("room", {"type": "after", "n": n})
        assert await drain(b, theirs) == list(range(100))
        # The sender's own member got them too (locally, with the probes before them).
        assert [n for n in await drain(a, mine) if n >= 0] == list(range(100))

        # Direct sends across "processes" and plain channels work again too.
        await a.send(theirs, {"type": "direct"})
        assert (await asyncio.wait_for(b.receive(theirs), 5))["type"] == "direct"
        await a.send("jobs", {"type": "job"})
        assert (await asyncio.wait_for(plain_receive, 10))["type"] == "job"
        assert loop_errors == []
    finally:
        await a.close()
        await b.close()


async def test_calls_during_outage_raise_a_clear_error(own_redis_server: RedisServer) -> None:
    layer = RedisChannelLayer(hosts=[own_redis_server.url], prefix="down", retry_timeout=0.5)
    try:
        await layer.send("jobs", {"type": "x"})
        own_redis_server.kill()
        with pytest.raises(LayerConnectionError, match=r"cannot use Redis at redis://127\.0\.0\.1"):
            await layer.send("jobs", {"type": "x"})
        with pytest.raises(LayerConnectionError):
            await layer.group_send("room", {"type": "x"})
        # A LayerConnectionError is also a ConnectionError, for code that catches those.
        assert issubclass(LayerConnectionError, ConnectionError)
    finally:
        await layer.close()


async def test_send_to_a_process_that_is_gone_fills_its_inbox(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix, capacity=5)
    try:
        gone = "specific.0123456789abcdef!c0ffee"  # a process id nobody reads
        for n in range(5):
            await layer.send(gone, {"type": "x", "n": n})
        with pytest.raises(ChannelFull):
            await layer.send(gone, {"type": "x"})
        # The inbox is not kept forever: it expires with the messages.
        ttl = int(redis_server.command("PTTL", f"{redis_prefix}:p{{0123456789abcdef}}")[1:-2])
        assert 0 < ttl <= 60_001
    finally:
        await layer.flush()
        await layer.close()


async def test_local_buffer_overflow_from_another_process_is_counted(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    sender = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix, capacity=100)
    receiver = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix, capacity=3)
    try:
        channel = await receiver.new_channel()
        for n in range(10):  # sender's view: the inbox has room for 100
            await sender.send(channel, {"type": "x", "n": n})
        await eventually(lambda: _dropped(receiver, 7))
        assert [(await receiver.receive(channel))["n"] for _ in range(3)] == [0, 1, 2]
    finally:
        await sender.close()
        await receiver.close()


async def _dropped(layer: RedisChannelLayer, count: int) -> bool:
    return layer.counters.dropped == count
