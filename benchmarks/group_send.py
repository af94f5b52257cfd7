"""group_send deliveries/s to one group, roomcast's layers beside Channels' and channels_redis.

A first figure until ``layer-bench`` lands: one process, ``--members`` receivers each awaiting
``receive()`` in its own task, one sender calling ``group_send`` back to back for
``--seconds``; a delivery is a message a member has received. Every backend runs the same
workload in the same run (interleaved rounds), against one redis-server this script starts on
a free port; the table gives the median of the rounds and the ratio to the first backend.

    python -m benchmarks.group_send --members 100 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import time
from typing import Any

from tests.redis_server import RedisServer

BACKENDS = {
    "roomcast memory": ("layers.memory.InMemoryChannelLayer", {}),
    "roomcast redis": ("layers.redis.RedisChannelLayer", {"redis": True}),
    "channels memory": ("channels.layers.InMemoryChannelLayer", {}),
    "channels_redis core": ("channels_redis.core.RedisChannelLayer", {"redis": True}),
    "channels_redis pubsub": ("channels_redis.pubsub.RedisPubSubChannelLayer", {"redis": True}),
}


def make_layer(path: str, redis_url: str | None, prefix: str) -> Any:
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    config: dict[str, Any] = {"capacity": 10_000}
    if redis_url is not None:
        config.update(hosts=[redis_url], prefix=prefix)
    if "pubsub" in path:
        config.pop("capacity")
    return cls(**config)


async def one_round(layer: Any, members: int, seconds: float) -> float:
    channels = [await layer.new_channel() for _ in range(members)]
    for channel in channels:
        await layer.group_add("bench", channel)
    delivered = 0

    async def member(channel: str) -> None:
        nonlocal delivered
        while True:
            await layer.receive(channel)
            delivered += 1

    tasks = [asyncio.ensure_future(member(channel)) for channel in channels]
    await asyncio.sleep(0.1)
    sent = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        await layer.group_send("bench", {"type": "bench.message", "n": sent, "text": "x" * 64})
        sent += 1
        # Let receivers keep up, so deliveries measure the layer, not an ever-growing backlog.
        while delivered < (sent - 1) * members:
            await asyncio.sleep(0)
    target = sent * members
    deadline = time.perf_counter() + 10
    while delivered < target and time.perf_counter() < deadline:
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await layer.group_discard("bench", channel)
    return delivered / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()
    names = [name.strip() for name in args.backends.split(",")]
    server = RedisServer().start()
    results: dict[str, list[float]] = {name: [] for name in names}
    try:
        for round_no in range(args.rounds):
            for name in names:
                path, options = BACKENDS[name]
                url = server.url if options.get("redis") else None
                layer = make_layer(path, url, prefix=f"bench{round_no}")
                rate = await one_round(layer, args.members, args.seconds)
                results[name].append(rate)
                if hasattr(layer, "flush"):
                    await layer.flush()
                if hasattr(layer, "close"):
                    await layer.close()
                elif hasattr(layer, "close_pools"):
                    await layer.close_pools()
    finally:
        server.cleanup()
    first = statistics.median(results[names[0]])
    print(f"group_send to {args.members} members, {args.rounds} rounds of {args.seconds} s")
    print(f"{'backend':<24}{'median deliveries/s':>22}{'ratio':>9}   rounds")
    for name in names:
        median = statistics.median(results[name])
        rounds = ", ".join(f"{rate:,.0f}" for rate in results[name])
        print(f"{name:<24}{median:>22,.0f}{median / first:>9.2f}   {rounds}")


if __name__ == "__main__":
    asyncio.run(main())
