"""A process holding presence entries, for the cross-process presence tests.

Run as ``python -m tests.layers.presence_peer URL PREFIX TAG COUNT LIVENESS``. It adds
``COUNT`` channels of its own to the presence of group ``room`` (info ``{"user":
"<TAG>-<n // 2>", "name": ...}``: two connections per user), joins the group with a watcher
channel that applies every presence event to a map, and prints ``{"ready": [channels...],
"process": id}``. Then, for each line on stdin: ``read`` prints what this process sees
(``presence()``'s channels, ``presence_stats()``, and the channels of the event map);
``stop`` closes the layer and exits.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from roomcast.layers.redis import RedisChannelLayer


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def main(url: str, prefix: str, tag: str, count: int, liveness: float) -> None:
    layer = RedisChannelLayer(
        hosts=[url],
        prefix=prefix,
        capacity=10_000,
        liveness_timeout=liveness,
        presence={"room": {"interval": 0.2}},
    )
    watcher = await layer.new_channel()
    await layer.group_add("room", watcher)
    state: dict[str, Any] = {}
    events = 0

    async def watch() -> None:
        nonlocal events
        while True:
            message = await layer.receive(watcher)
            events += 1
            if message["type"] == "presence.join":
                state.update(message["members"])
            elif message["type"] == "presence.leave":
                for channel in message["members"]:
                    state.pop(channel, None)

    watching = asyncio.create_task(watch())
    channels = [await layer.new_channel() for _ in range(count)]
    for n, channel in enumerate(channels):
        await layer.presence_add("room", channel, {"user": f"{tag}-{n // 2}", "name": tag})
    emit({"ready": channels, "process": layer.process_id})
    while True:
        line = (await asyncio.to_thread(sys.stdin.readline)).strip()
        if line == "read":
            stats = await layer.presence_stats("room")
            emit(
                {
                    "presence": sorted(await layer.presence("room")),
                    "stats": stats.as_dict(),
                    "events": sorted(state),
                    "event_count": events,
                }
            )
        elif line in ("stop", ""):
            break
    watching.cancel()
    await layer.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
