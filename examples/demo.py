"""Channels meeting in a group: the smallest roomcast program.

Three members join the group ``lobby``; one message sent to the group reaches each of them, and
a direct message reaches one. The layer comes from ``CHANNEL_LAYERS`` resolution
(:mod:`roomcast.layers.settings`): the in-memory layer by default, Redis with
``ROOMCAST_LAYER_URL=redis://127.0.0.1:6379/0``.
"""

from __future__ import annotations

import asyncio

from roomcast.layers import get_channel_layer


async def member(name: str, channel: str, expected: int) -> None:
    layer = get_channel_layer()
    for _ in range(expected):
        message = await asyncio.wait_for(layer.receive(channel), timeout=5)
        print(f"  {name:<6} got {message['type']:<13} {message['text']!r}")


async def main() -> None:
    layer = get_channel_layer()
    print(f"layer: {type(layer).__module__}.{type(layer).__name__}")
    names = ["alice", "bob", "carol"]
    channels = [await layer.new_channel() for _ in names]
    for channel in channels:
        await layer.group_add("lobby", channel)
    listeners = [
        asyncio.ensure_future(member(name, channel, 2 if name == "bob" else 1))
        for name, channel in zip(names, channels, strict=True)
    ]
    await layer.group_send("lobby", {"type": "chat.message", "text": "hello, lobby"})
    await layer.send(channels[1], {"type": "chat.direct", "text": "just for bob"})
    await asyncio.gather(*listeners)
    for channel in channels:
        await layer.group_discard("lobby", channel)
    print(f"counters: {layer.counters}")
    await layer.close()


if __name__ == "__main__":
    asyncio.run(main())
