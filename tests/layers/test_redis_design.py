"""The design's promises, checked against Redis's own accounting and across event loops."""

from __future__ import annotations

import asyncio
import re

from asgiref.sync import async_to_sync
from roomcast.layers import ChannelFull
from roomcast.layers.redis import RedisChannelLayer

from tests.redis_server import RedisServer


def stat(server: RedisServer, section: str, pattern: str) -> int:
    match = re.search(pattern.encode(), server.command("INFO", section))
    return int(match.group(1)) if match else 0


async def test_group_send_costs_the_same_whatever_the_group_size(
    own_redis_server: RedisServer,
) -> None:
    """One EVALSHA per group_send, and the same bytes in and out, for 2, 100 or 1000 members.

    Members are spread over two layer instances (two processes, as Redis sees them): Redis
    sends one copy to each, never one per member, and never receives the member list.
    """
    server = own_redis_server
    a = RedisChannelLayer(hosts=[server.url], prefix="cost", capacity=10_000)
    b = RedisChannelLayer(hosts=[server.url], prefix="cost", capacity=10_000)
    sends = 50
    per_send: dict[int, tuple[float, float, float]] = {}
    try:
        for size in (2, 100, 1000):
            group = f"g{size}"
            for n in range(size):
                layer = a if n % 2 else b
                await layer.group_add(group, await layer.new_channel())
            calls = stat(server, "commandstats", r"cmdstat_evalsha:calls=(\d+)")
            bytes_in = stat(server, "stats", r"total_net_input_bytes:(\d+)")
            bytes_out = stat(server, "stats", r"total_net_output_bytes:(\d+)")
            for _ in range(sends):
                await a.group_send(group, {"type": "m", "text": "x" * 100})
            await asyncio.sleep(0.2)  # b reads its copies
            per_send[size] = (
                (stat(server, "commandstats", r"cmdstat_evalsha:calls=(\d+)") - calls) / sends,
                (stat(server, "stats", r"total_net_input_bytes:(\d+)") - bytes_in) / sends,
                (stat(server, "stats", r"total_net_output_bytes:(\d+)") - bytes_out) / sends,
            )
            assert b.counters.dropped == 0
    finally:
        await a.close()
        await b.close()
    calls, bytes_in, bytes_out = per_send[2]
    assert calls == 1
    for size in (100, 1000):
        assert per_send[size][0] == 1
        # Background readers add a little traffic of their own (a BLPOP every 2 s).
        assert abs(per_send[size][1] - bytes_in) < 0.1 * bytes_in, per_send
        assert abs(per_send[size][2] - bytes_out) < 0.1 * bytes_out, per_send
    # One copy for each of the two processes plus the reply: far below one byte per
    # member at size 1000.
    assert per_send[1000][2] < 1000


async def test_calls_from_another_thread_and_loop(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """async_to_sync from a thread (a Django view, say) reaches this loop's local channels."""
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix, capacity=2)
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)

        def from_a_thread() -> None:
            async_to_sync(layer.group_send)("room", {"type": "from.thread.group"})
            async_to_sync(layer.send)(channel, {"type": "from.thread.direct"})
            try:
                async_to_sync(layer.send)(channel, {"type": "one.too.many"})
            except ChannelFull:
                return
            raise AssertionError("ChannelFull was not raised across loops")

        await asyncio.to_thread(from_a_thread)
        got = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(2)]
        assert [m["type"] for m in got] == ["from.thread.group", "from.thread.direct"]
    finally:
        await layer.flush()
        await layer.close()


async def test_foreign_bytes_in_our_keys_are_rejected_not_fatal(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """Garbage written into a group's pub/sub channel, an inbox or a plain channel's list (by
    another program sharing the Redis) is counted and skipped; delivery goes on."""
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix)
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        redis_server.command("PUBLISH", f"{redis_prefix}:g{{room}}", "x")
        redis_server.command("RPUSH", f"{redis_prefix}:p{{{layer.process_id}}}", "y")
        redis_server.command("RPUSH", f"{redis_prefix}:c{{jobs}}", "z")
        await layer.send("jobs", {"type": "good.plain"})
        assert (await asyncio.wait_for(layer.receive("jobs"), 5))["type"] == "good.plain"
        other = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix)
        try:
            await other.group_send("room", {"type": "good.group"})
            await other.send(channel, {"type": "good.direct"})
        finally:
            await other.close()
        got = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(2)]
        # (Across processes a send and a group_send may swap: see the layer's docstring.)
        assert sorted(m["type"] for m in got) == ["good.direct", "good.group"]
        assert layer.counters.rejected == 3
    finally:
        await layer.flush()
        await layer.close()


async def test_concurrent_sends_keep_their_order_and_their_answers(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """Sends made together go out as one pipeline (roomcast.layers.redis.batching): order kept, each
    gets its own answer (ChannelFull for exactly those past capacity), each runs once, also
    after the server forgot our scripts."""
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix, capacity=5)
    try:
        redis_server.command("SCRIPT", "FLUSH")
        results = await asyncio.gather(
            *(layer.send("jobs", {"type": "job", "n": n}) for n in range(8)),
            return_exceptions=True,
        )
        assert results[:5] == [None] * 5
        assert all(isinstance(result, ChannelFull) for result in results[5:])
        got = [await asyncio.wait_for(layer.receive("jobs"), 5) for _ in range(5)]
        assert [message["n"] for message in got] == [0, 1, 2, 3, 4]

        calls = stat(redis_server, "commandstats", r"cmdstat_evalsha:calls=(\d+)")
        await asyncio.gather(*(layer.send(f"other{n}", {"type": "x"}) for n in range(5)))
        assert stat(redis_server, "commandstats", r"cmdstat_evalsha:calls=(\d+)") - calls == 5
    finally:
        await layer.flush()
        await layer.close()
