"""A bench process: holds members of a group (or receivers) and/or sends, on command.

Run by the coordinator as ``python -m roomcast.layers.bench.workers [--loop uvloop]
[--no-hiredis]``,
one per process of a run, as N gateways would be: each builds its own layer instance. It reads
one JSON command per line on stdin and answers each with one JSON line on stdout:

``open``     build the layer from a target spec and map the shared board
``members``  make ``count`` channels (``new_channel``), ``group_add`` them to ``group`` if one is
             given, and start one receiving task per channel; deliveries are counted on the
             board (one slot for all of them, or one slot per channel) and timed
``send``     run ``senders`` concurrent tasks calling ``group_send`` (mode ``group``) or
             ``send`` to one channel each (mode ``direct``) for ``duration`` seconds or
             ``messages`` messages, keeping at most ``window`` undelivered messages in flight
``collect``  report what the receivers got since the last collect
``clear``    stop the receivers and ``group_discard`` their channels
``stop``     close the layer and exit

Every message carries its sequence number and the ``time.perf_counter()`` of its send; on
Linux that is CLOCK_MONOTONIC, one clock for every process of the machine, so a receiver in
another process computes the latency itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import traceback
from collections.abc import Awaitable
from typing import Any

from .board import SENT, Board
from .targets import BenchError, build

STALL_SECONDS = 1.0  # a window that does not open for this long: deliveries were lost
POLL_SECONDS = 0.0005  # how long a sender sleeps while its window is full
YIELDS_BEFORE_SLEEP = 20  # loop turns a sender gives the receivers before it sleeps
GROUP_ADD_BATCH = 50  # group_add calls in flight while members join


def percentiles(values: list[float]) -> dict[str, float] | None:
    """p50/p90/p99/max (nearest rank) of seconds, in milliseconds; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    last = len(ordered) - 1

    def rank(fraction: float) -> float:
        return ordered[min(last, round(fraction * last))] * 1000

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": ordered[-1] * 1000,
        "count": float(len(ordered)),
    }


class Receivers:
    """The receiving side of one process: tasks, counts and latencies."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []
        self.channels: list[str] = []
        self.group: str | None = None
        self.reset()

    def reset(self) -> None:
        self.delivered = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies: list[float] = []  # direct mode: send -> receive, seconds
        self.group_latency: dict[int, float] = {}  # group mode: seq -> latest delivery here
        self.group_seen: dict[int, int] = {}  # group mode: seq -> deliveries here
        self.cpu = time.process_time()  # this process's CPU time when receiving began


class Worker:
    def __init__(self) -> None:
        self.layer: Any = None
        self.board: Board | None = None
        self.receivers = Receivers()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("cmd")
        if command == "open":
            return self.open(request)
        if command == "members":
            return await self.members(request)
        if command == "send":
            return await self.send(request)
        if command == "collect":
            return self.collect()
        if command == "clear":
            return await self.clear()
        if command == "stop":
            await self.clear()
            await self.close_layer()
            return {}
        raise BenchError(f"unknown command {command!r}")

    def open(self, request: dict[str, Any]) -> dict[str, Any]:
        self.layer = build(request["spec"])
        self.board = Board(request["board"])
        hiredis = None  # redis-py not loaded: the parser plays no part
        if "redis" in sys.modules:
            from redis.utils import HIREDIS_AVAILABLE

            hiredis = bool(HIREDIS_AVAILABLE)
        loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        return {"hiredis": hiredis, "loop": loop}

    async def close_layer(self) -> None:
        layer, self.layer = self.layer, None
        if layer is None:
            return
        for name in ("close", "close_pools"):
            close = getattr(type(layer), name, None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close(layer)
                break

    # Receiving ------------------------------------------------------------------------

    async def members(self, request: dict[str, Any]) -> dict[str, Any]:
        layer = self.layer
        count: int = request["count"]
        group: str | None = request.get("group")
        slot: int | None = request.get("slot")  # one slot for all, else one per channel
        first_slot: int = request.get("first_slot", 0)
        channels = [await layer.new_channel("bench") for _ in range(count)]
        if group is not None:
            for start in range(0, count, GROUP_ADD_BATCH):
                batch = channels[start : start + GROUP_ADD_BATCH]
                await asyncio.gather(*(layer.group_add(group, channel) for channel in batch))
        receivers = self.receivers
        receivers.channels = channels
        receivers.group = group
        receivers.reset()
        loop = asyncio.get_running_loop()
        for index, channel in enumerate(channels):
            board_slot = slot if slot is not None else first_slot + index
            coroutine = (
                self._receive_group(channel, board_slot)
                if group is not None
                else self._receive_direct(channel, board_slot)
            )
            receivers.tasks.append(loop.create_task(coroutine))
        await asyncio.sleep(0)  # every receiver is waiting before we answer
        receivers.cpu = time.process_time()
        return {"channels": channels}

    async def _receive_group(self, channel: str, slot: int) -> None:
        receive = self.layer.receive
        assert self.board is not None
        values = self.board.values
        clock = time.perf_counter
        state = self.receivers
        latency = state.group_latency
        seen = state.group_seen
        while True:
            message = await receive(channel)
            now = clock()
            seq = message["seq"]
            latency[seq] = now - message["t"]
            seen[seq] = seen.get(seq, 0) + 1
            state.last = now
            values[slot] += 1

    async def _receive_direct(self, channel: str, slot: int) -> None:
        receive = self.layer.receive
        assert self.board is not None
        values = self.board.values
        clock = time.perf_counter
        state = self.receivers
        latencies = state.latencies
        while True:
            message = await receive(channel)
            now = clock()
            latencies.append(now - message["t"])
            state.delivered += 1
            if not state.first:
                state.first = now
            state.last = now
            values[slot] += 1

    def collect(self) -> dict[str, Any]:
        state = self.receivers
        counters = getattr(self.layer, "counters", None)
        delivered = state.delivered
        if state.group is not None:  # group receivers count only on the board (less work)
            delivered = sum(state.group_seen.values())
        reply = {
            "delivered": delivered,
            "first": state.first,
            "last": state.last,
            "latencies": state.latencies,
            "group_latency": {str(seq): lat for seq, lat in state.group_latency.items()},
            "group_seen": {str(seq): n for seq, n in state.group_seen.items()},
            "counters": dict(vars(counters)) if counters is not None else None,
            "cpu_s": time.process_time() - state.cpu,
        }
        state.reset()
        return reply

    async def clear(self) -> dict[str, Any]:
        state = self.receivers
        tasks, state.tasks = state.tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if state.group is not None and self.layer is not None:
            for start in range(0, len(state.channels), GROUP_ADD_BATCH):
                batch = state.channels[start : start + GROUP_ADD_BATCH]
                with contextlib.suppress(Exception):
                    await asyncio.gather(
                        *(self.layer.group_discard(state.group, channel) for channel in batch)
                    )
        state.channels = []
        state.group = None
        state.reset()
        return {}

    # Sending --------------------------------------------------------------------------

    async def send(self, request: dict[str, Any]) -> dict[str, Any]:
        return await Senders(self, request).run()


class Senders:
    """``senders`` tasks sending back to back within a window of undelivered messages."""

    def __init__(self, worker: Worker, request: dict[str, Any]) -> None:
        assert worker.board is not None
        self.layer = worker.layer
        self.values = worker.board.values
        self.mode: str = request["mode"]
        self.group: str | None = request.get("group")
        self.channels: list[str] = request.get("channels") or []
        # group: [[slot, members counted there], ...]; direct: one slot per channel
        self.expect: list[list[int]] = request.get("expect") or []
        self.slots: list[int] = request.get("slots") or []
        self.senders: int = request["senders"] if self.mode == "group" else len(self.channels)
        self.window: int = max(1, request["window"])
        self.duration: float = request["duration"]
        self.messages: int | None = request.get("messages")
        self.text = "x" * request["payload_bytes"]
        self.next_seq = 0
        self.sent = 0
        self.sent_per_channel = [0] * len(self.channels)
        self.full = 0
        self.stalls = 0
        self.forgiven: dict[int, int] = {}
        self.calls: list[float] = []
        self.first = 0.0
        self.last = 0.0

    async def run(self) -> dict[str, Any]:
        cpu = time.process_time()
        self.values[SENT] = 0
        self.deadline = time.perf_counter() + self.duration
        if self.mode == "group":
            tasks: list[Awaitable[None]] = [self._group_sender() for _ in range(self.senders)]
        else:
            tasks = [self._direct_sender(index) for index in range(len(self.channels))]
        await asyncio.gather(*tasks)
        return {
            "sent": self.sent,
            "sent_per_channel": self.sent_per_channel,
            "first": self.first,
            "last": self.last,
            "full": self.full,
            "stalls": self.stalls,
            "call_ms": percentiles(self.calls),
            "cpu_s": time.process_time() - cpu,
        }

    def _more(self, count: int) -> bool:
        if self.messages is not None and count >= self.messages:
            return False
        return time.perf_counter() < self.deadline

    async def _window(self, expect: list[list[int]], done_needed: int) -> None:
        """Wait until every slot has counted ``done_needed`` messages (times its members)."""
        if done_needed <= 0:
            return
        values = self.values
        forgiven = self.forgiven
        started = 0.0
        spins = 0
        while True:
            if all(
                values[slot] + forgiven.get(slot, 0) >= done_needed * per_message
                for slot, per_message in expect
            ):
                return
            now = time.perf_counter()
            if not started:
                started = now
            elif now - started > STALL_SECONDS:  # lost for good: stop waiting for them
                self.stalls += 1
                for slot, per_message in expect:
                    missing = done_needed * per_message - values[slot] - forgiven.get(slot, 0)
                    if missing > 0:
                        forgiven[slot] = forgiven.get(slot, 0) + missing
                return
            spins += 1
            # Yield first: receivers in this process (an in-memory layer) run at once. Only
            # then sleep on a timer (about 1 ms), not to burn a CPU the receivers need.
            await asyncio.sleep(0 if spins <= YIELDS_BEFORE_SLEEP else POLL_SECONDS)

    def _count(self, started: float) -> None:
        now = time.perf_counter()
        self.calls.append(now - started)
        if not self.first:
            self.first = started
        self.last = now
        self.sent += 1
        self.values[SENT] = self.sent

    async def _group_sender(self) -> None:
        group_send = self.layer.group_send
        group = self.group
        while self._more(self.next_seq):
            seq = self.next_seq
            self.next_seq += 1
            await self._window(self.expect, seq - self.window + 1)
            started = time.perf_counter()
            message = {"type": "bench.message", "seq": seq, "t": started, "text": self.text}
            await group_send(group, message)
            self._count(started)

    async def _direct_sender(self, index: int) -> None:
        send = self.layer.send
        channel = self.channels[index]
        expect = [[self.slots[index], 1]]
        window = max(1, self.window // len(self.channels))
        count = 0
        while self._more(count):
            await self._window(expect, self.sent_per_channel[index] - window + 1)
            started = time.perf_counter()
            message = {"type": "bench.message", "seq": count, "t": started, "text": self.text}
            try:
                await send(channel, message)
            except Exception as exc:
                if type(exc).__name__ != "ChannelFull":
                    raise
                self.full += 1
                await asyncio.sleep(POLL_SECONDS)
                continue
            count += 1
            self.sent_per_channel[index] += 1
            self._count(started)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (ConnectionError, OSError)) or "Connection" in type(exc).__name__:
        return f"cannot reach the layer's server: {text}"
    return f"{type(exc).__name__}: {text}"


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    worker = Worker()
    while line := await reader.readline():
        request = json.loads(line)
        try:
            reply = await worker.handle(request)
            reply["ok"] = True
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            reply = {"ok": False, "error": _describe(exc)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        if request.get("cmd") == "stop":
            return
    await worker.clear()
    await worker.close_layer()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m roomcast.layers.bench.workers")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--no-hiredis", action="store_true")
    args = parser.parse_args(argv)
    if args.no_hiredis:  # redis-py then falls back to its pure-Python parser
        sys.modules["hiredis"] = None  # type: ignore[assignment]
    if args.loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve())
    else:
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
