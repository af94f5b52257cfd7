"""What the history outage tests share: the sender process, members that record what they get."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from roomcast.layers.history import message_position
from roomcast.layers.redis import RedisChannelLayer

from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]


class Sender:
    """``python -m tests.outages.history_sender``: a second OS process that group_sends."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.progress = -1  # the last number it reported sending

    @classmethod
    async def start(cls, hosts: list[Any], prefix: str, group: str, history: Any) -> Sender:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "tests.outages.history_sender"),
            *(json.dumps(hosts), prefix, group, json.dumps(history)),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        sender = cls(proc)
        assert "ready" in await sender._line()
        return sender

    async def _line(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        assert line, "the sender process exited early"
        record: dict[str, Any] = json.loads(line)
        return record

    async def send(self, start: int, count: int, every: float) -> dict[str, list[int]]:
        """Send ``count`` numbered messages from ``start``; what was sent and what failed."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"send": [start, count], "every": every}).encode() + b"\n")
        await self.proc.stdin.drain()
        while True:
            record = await self._line(timeout=120.0)
            if "progress" in record:
                self.progress = record["progress"]
                continue
            self.progress = start + count - 1
            return record

    async def reached(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.progress < n:
            assert time.monotonic() < deadline, f"the sender never reached message {n}"
            await asyncio.sleep(0.001)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(ConnectionError):
                self.proc.stdin.write(b'{"stop": true}\n')
                await self.proc.stdin.drain()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class Members:
    """``count`` members of ``group`` in ``layer``, each recording (n, position) as it comes."""

    def __init__(self, layer: RedisChannelLayer, channels: list[str]) -> None:
        self.layer = layer
        self.got: dict[str, list[tuple[int, str | None]]] = {channel: [] for channel in channels}
        self.arrived: dict[str, list[float]] = {channel: [] for channel in channels}  # monotonic
        self._tasks = [asyncio.ensure_future(self._receive(channel)) for channel in channels]

    @classmethod
    async def join(cls, layer: RedisChannelLayer, group: str, count: int) -> Members:
        channels = [await layer.new_channel("member") for _ in range(count)]
        for channel in channels:
            await layer.group_add(group, channel)
        return cls(layer, channels)

    async def _receive(self, channel: str) -> None:
        while True:
            message = await self.layer.receive(channel)
            stamped = message_position(message)
            position = None if stamped is None else str(stamped.position)
            self.got[channel].append((message["n"], position))
            self.arrived[channel].append(time.monotonic())

    def numbers(self, channel: str) -> list[int]:
        return [n for n, _ in self.got[channel]]

    async def wait(self, done: Any, timeout: float = 60.0) -> None:
        """Until ``done(numbers)`` holds for every member (or fail after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not all(done(self.numbers(channel)) for channel in self.got):
            if time.monotonic() > deadline:
                counts = {channel[-6:]: len(got) for channel, got in self.got.items()}
                raise AssertionError(f"members still waiting after {timeout} s: {counts}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def subscribers(server: RedisServer, channel: str) -> int:
    """``PUBSUB NUMSUB channel``: how many connections are subscribed to it now."""
    reply = server.command("PUBSUB", "NUMSUB", channel)
    match = re.search(rb":(\d+)\r\n$", reply)
    assert match, reply
    return int(match.group(1))


async def until_subscribed(server: RedisServer, channel: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(subscribers, server, channel) < 1:
        assert time.monotonic() < deadline, f"nobody resubscribed to {channel}"
        await asyncio.sleep(0.01)


def killed(reply: bytes) -> int:
    """The count of a ``CLIENT KILL <filter>`` reply."""
    match = re.match(rb":(\d+)\r\n", reply)
    assert match, reply
    return int(match.group(1))
