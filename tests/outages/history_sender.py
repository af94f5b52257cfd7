"""A sending process for the history outage tests: group_sends numbered messages when told.

Run as ``python -m tests.outages.history_sender HOSTS_JSON PREFIX GROUP HISTORY_JSON``
(``HISTORY_JSON`` is the layer's ``history`` option, ``null`` for none). It reads commands on
stdin, one JSON object a line, and answers each on stdout:

* ``{"send": [start, count], "every": seconds}``: ``group_send(GROUP, {"type": "m", "n": n})``
  for n in ``start .. start + count - 1``, one every ``every`` seconds; answers ``{"sent":
  [...], "failed": [...]}`` (the numbers whose call raised ``LayerConnectionError``), and
  prints ``{"progress": n}`` after each tenth of the way;
* ``{"stop": true}``: closes the layer and exits.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from roomcast.layers import LayerConnectionError
from roomcast.layers.redis import RedisChannelLayer


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def main(hosts: list[Any], prefix: str, group: str, history: Any) -> None:
    layer = RedisChannelLayer(hosts=hosts, prefix=prefix, history=history, retry_timeout=15)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit({"ready": layer.process_id})
    while line := await reader.readline():
        command = json.loads(line)
        if command.get("stop"):
            break
        start, count = command["send"]
        every = float(command.get("every", 0))
        sent: list[int] = []
        failed: list[int] = []
        for n in range(start, start + count):
            try:
                await layer.group_send(group, {"type": "m", "n": n})
                sent.append(n)
            except LayerConnectionError:
                failed.append(n)
            if (n - start + 1) % max(1, count // 10) == 0:
                emit({"progress": n})
            if every:
                await asyncio.sleep(every)
        emit({"sent": sent, "failed": failed})
    await layer.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))
