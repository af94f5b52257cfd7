"""A second OS process for the cross-process tests: a layer user that reports what it gets.

Run as ``python -m tests.layers.peer_process URL PREFIX``. It joins group ``room`` with a
channel of its own, prints ``{"ready": channel}``, then prints every message it receives as a
JSON line. On ``{"type": "ping", "n": N}`` it answers with a ``group_send("back", pong N)``;
on ``{"type": "stop"}`` it leaves the group and exits.
"""

from __future__ import annotations

import asyncio
import json
import sys

from roomcast.layers.redis import RedisChannelLayer


def emit(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def main(url: str, prefix: str) -> None:
    layer = RedisChannelLayer(hosts=[url], prefix=prefix, group_expiry=5)
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    emit({"ready": channel, "process": layer.process_id})
    while True:
        message = await layer.receive(channel)
        emit({"got": message})
        if message["type"] == "ping":
            await layer.group_send("back", {"type": "pong", "n": message["n"]})
        elif message["type"] == "stop":
            await layer.group_discard("room", channel)
            break
    emit({"counters": vars(layer.counters)})
    await layer.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
