"""Presence across OS processes: two peers with 150 members each, and a SIGKILL.

The peers (``tests/layers/presence_peer.py``) are real processes with their own layers,
heartbeats and connections to a real redis-server; this test's process is a third, watching.
The bound on a killed process's entries is checked with a generous margin for a loaded
machine, and the figure measured is printed (``-s`` shows it); the leave events are checked by
applying them, in each surviving process, to its map of who is there.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from roomcast.layers.presence import JOIN, LEAVE
from roomcast.layers.redis import RedisChannelLayer

from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
LIVENESS = 1.5  # seconds: every process's liveness_timeout here
SLACK = 30.0  # seconds a loaded machine may add to the bound before the test gives up


class Peer:
    """One ``presence_peer`` process, spoken to line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.channels: set[str] = set()
        self.process = ""

    @classmethod
    async def start(cls, url: str, prefix: str, tag: str, count: int) -> Peer:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "tests.layers.presence_peer", url, prefix, tag),
            *(str(count), str(LIVENESS)),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        peer = cls(proc)
        ready = await peer.next(60)
        peer.channels, peer.process = set(ready["ready"]), ready["process"]
        return peer

    async def next(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        assert line, "the peer process exited early"
        record: dict[str, Any] = json.loads(line)
        return record

    async def read(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"read\n")
        await self.proc.stdin.drain()
        return await self.next()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            if self.proc.stdin is not None and not self.proc.stdin.is_closing():
                self.proc.stdin.write(b"stop\n")
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
        await self.proc.wait()


@pytest.fixture
async def peers(redis_server: RedisServer, redis_prefix: str) -> AsyncIterator[Callable[..., Any]]:
    started: list[Peer] = []

    async def start(tag: str, count: int) -> Peer:
        peer = await Peer.start(redis_server.url, redis_prefix, tag, count)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        await peer.stop()


async def until(check: Callable[[], Any], limit: float, what: str) -> float:
    """Wait until ``await check()`` is true; the seconds it took (fail past ``limit``)."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < limit, what
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_300_members_in_two_processes_then_one_is_killed(
    peers: Callable[..., Any], redis_server: RedisServer, redis_prefix: str
) -> None:
    a: Peer = await peers("a", 150)
    b: Peer = await peers("b", 150)
    observer = RedisChannelLayer(
        hosts=[redis_server.url],
        prefix=redis_prefix,
        liveness_timeout=LIVENESS,
        presence={"room": {"interval": 0.2}},
        capacity=10_000,
    )
    try:
        watcher = await observer.new_channel()
        await observer.group_add("room", watcher)
        events: dict[str, Any] = {}

        async def watch() -> None:
            while True:
                message = await observer.receive(watcher)
                if message["type"] == JOIN:
                    events.update(message["members"])
                elif message["type"] == LEAVE:
                    for channel in message["members"]:
                        events.pop(channel, None)

        events.update(await observer.presence("room"))  # a snapshot, then its changes
        watching = asyncio.create_task(watch())
        everyone = a.channels | b.channels
        assert len(everyone) == 300

        # Correct from both processes, and from a third.
        assert set(await observer.presence("room")) == everyone
        assert (await observer.presence_stats("room")).as_dict() == {
            "connections": 300,
            "users": 150,  # two connections per user
        }
        for peer in (a, b):
            seen = await peer.read()
            assert set(seen["presence"]) == everyone
            assert seen["stats"] == {"connections": 300, "users": 150}

        async def a_heard_everyone() -> bool:
            return set((await a.read())["events"]) == everyone

        await until(a_heard_everyone, SLACK, "peer a's events never showed all 300")

        # SIGKILL b: nothing of it runs any more, its entries are removed by someone else.
        b.proc.send_signal(signal.SIGKILL)
        await b.proc.wait()

        async def only_a_listed() -> bool:
            return set(await observer.presence("room")) == a.channels

        gone_after = await until(
            only_a_listed, LIVENESS + SLACK, "the killed process's entries linger"
        )

        async def leaves_heard() -> bool:
            return set(events) == a.channels and set((await a.read())["events"]) == a.channels

        heard_after = gone_after + await until(
            leaves_heard, SLACK, "the leave events of the killed process never came"
        )

        async def swept() -> bool:
            reply = redis_server.command("HLEN", f"{redis_prefix}:pr{{room}}")
            return reply == b":150\r\n"

        await until(swept, SLACK, "the killed process's entries were never removed from Redis")
        seen = await a.read()
        assert set(seen["presence"]) == a.channels
        assert seen["stats"] == {"connections": 150, "users": 75}
        print(
            f"\nSIGKILL: entries ignored after {gone_after:.2f} s, leave events applied after "
            f"{heard_after:.2f} s (liveness_timeout {LIVENESS} s)"
        )
        watching.cancel()
    finally:
        await observer.close()
