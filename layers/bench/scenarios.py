"""The coordinator's side of a run: worker processes, and the three scenarios.

For each round and each target, a pool of worker processes (:mod:`roomcast.layers.bench.workers`) is
started: ``--processes`` member processes, each with its own layer instance as N gateways
would have, and one more process that only sends, so every delivery crosses the layer's
wire (``--sender member`` sends from the first member process instead). A layer that lives in
one process (``InMemory`` in its class name) gets one process that both holds the members and
sends. The scenarios:

``fanout``   for each ``--group-sizes`` N: N members spread evenly over the member processes
             join one group; ``--senders`` tasks call ``group_send`` back to back for
             ``--duration`` seconds (or ``--messages`` sends), at most ``--window`` messages
             not yet delivered to every member. Deliveries/s = deliveries / (last delivery -
             first send). Latency: group_send -> last member's delivery, under that load.
``p2p``      ``--senders`` pairs: each sender ``send``\\s to its own receiver channel, at most
             ``--window`` / pairs undelivered per pair. Latency: send -> receive under load.
``latency``  one message in flight (window 1): send -> receive for one pair, then
             group_send -> last delivery for each group size.

Drops are messages sent and never delivered within the drain time (2 s without progress).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .board import RECEIVER_SLOTS, SENT, Board
from .redis_stats import RedisProbe, delta
from .targets import BenchError, Target
from .workers import percentiles

SCENARIOS = ("fanout", "p2p", "latency")
DRAIN_IDLE_SECONDS = 2.0
DRAIN_MAX_SECONDS = 60.0
REPLY_TIMEOUT = 120.0
_ROOT = str(Path(__file__).resolve().parents[2])  # workers import this very copy of layers


@dataclass
class Settings:
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    group_sizes: list[int] = field(default_factory=lambda: [1, 10, 100, 1000])
    processes: int = 1
    senders: int = 1
    payload_bytes: int = 64
    messages: int | None = None
    duration: float = 5.0
    rounds: int = 3
    window: int = 50
    sender: str = "separate"  # or "member"
    loop: str = "asyncio"
    hiredis: bool = True
    history: int | None = None  # --history SIZE: every target also with history on its groups

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class Step:
    """One measurement: a scenario's kind at one size, for one target in one round."""

    scenario: str
    kind: str  # "group_send" or "send"
    size: int  # group members, or pairs for "send"
    window: int
    senders: int

    def label(self) -> str:
        if self.kind == "send":
            return f"{self.scenario} {self.size} pair{'s' if self.size != 1 else ''}"
        return f"{self.scenario} {self.size} member{'s' if self.size != 1 else ''}"


def plan(settings: Settings) -> list[Step]:
    steps: list[Step] = []
    for scenario in settings.scenarios:
        if scenario == "fanout":
            steps += [
                Step("fanout", "group_send", size, settings.window, settings.senders)
                for size in settings.group_sizes
            ]
        elif scenario == "p2p":
            steps.append(Step("p2p", "send", settings.senders, settings.window, settings.senders))
        elif scenario == "latency":
            steps.append(Step("latency", "send", 1, 1, 1))
            steps += [Step("latency", "group_send", size, 1, 1) for size in settings.group_sizes]
    return steps


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


class WorkerProcess:
    """One ``python -m roomcast.layers.bench.workers`` child, spoken to in JSON lines."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()

    async def start(self, settings: Settings) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        args = [sys.executable, "-m", "roomcast.layers.bench.workers", "--loop", settings.loop]
        if not settings.hiredis:
            args.append("--no-hiredis")
        self._proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            limit=1 << 28,
        )

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        lines = [line for line in self._stderr.read().decode(errors="replace").splitlines() if line]
        return lines[-1] if lines else "no output"

    async def call(self, request: dict[str, Any], wait: float = REPLY_TIMEOUT) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), wait)
        except (BrokenPipeError, ConnectionResetError):
            line = b""
        except TimeoutError:
            raise BenchError(
                f"{self.name} did not answer {request['cmd']!r} within {wait:.0f} s"
            ) from None
        if not line:
            await proc.wait()
            raise BenchError(
                f"{self.name} exited ({proc.returncode}) during {request['cmd']!r}: "
                f"{self._stderr_tail()}"
            )
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise BenchError(f"{self.name}: {reply.get('error')}")
        return reply

    async def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(BenchError, OSError):
                await self.call({"cmd": "stop"}, wait=10)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._stderr.close()
        self._proc = None


class Pool:
    """The processes of one target for one round."""

    def __init__(self, target: Target, settings: Settings, board: Board) -> None:
        self.target = target
        self.settings = settings
        self.board = board
        count = 1 if target.in_process else settings.processes
        self.members = [WorkerProcess(f"{target.name}: member process {i}") for i in range(count)]
        if target.in_process or settings.sender == "member":
            self.sender = self.members[0]
            self._all = list(self.members)
        else:
            self.sender = WorkerProcess(f"{target.name}: sender process")
            self._all = [*self.members, self.sender]
        self.info: dict[str, Any] = {}

    async def open(self) -> None:
        for worker in self._all:
            await worker.start(self.settings)
        request = {"cmd": "open", "spec": self.target.spec, "board": str(self.board.path)}
        replies = await asyncio.gather(*(worker.call(request) for worker in self._all))
        self.info = {"hiredis": replies[0]["hiredis"], "loop": replies[0]["loop"]}

    async def close(self) -> None:
        await asyncio.gather(*(worker.stop() for worker in self._all), return_exceptions=True)


async def _drain(
    board: Board, slots: list[int], expected: int, status: Callable[[int], None]
) -> None:
    """Wait until ``expected`` deliveries are counted, or they stop coming."""
    last_total, last_change = -1, time.monotonic()
    started = last_change
    while True:
        total = board.total(slots)
        now = time.monotonic()
        if total >= expected:
            return
        if total != last_total:
            last_total, last_change = total, now
            status(total)
        elif now - last_change > DRAIN_IDLE_SECONDS or now - started > DRAIN_MAX_SECONDS:
            return
        await asyncio.sleep(0.005)


async def measure(
    pool: Pool,
    step: Step,
    probe: RedisProbe | None,
    status: Callable[[str], None],
) -> dict[str, Any]:
    """Run one step on an open pool; returns its record for the report."""
    settings = pool.settings
    board = pool.board
    board.reset()
    members = pool.members
    group = f"bench.{secrets.token_hex(4)}.{step.size}" if step.kind == "group_send" else None
    counts = _split(step.size, len(members))
    if step.size > RECEIVER_SLOTS and group is None:
        raise BenchError(f"at most {RECEIVER_SLOTS} pairs")
    channels: list[str] = []
    slots: list[int] = []
    expect: list[list[int]] = []
    first_slot = 0
    for index, (worker, count) in enumerate(zip(members, counts, strict=True)):
        if not count:
            continue
        request: dict[str, Any] = {"cmd": "members", "count": count, "group": group}
        if group is not None:
            request["slot"] = index
            expect.append([index, count])
            slots.append(index)
        else:
            request["first_slot"] = first_slot
            slots += list(range(first_slot, first_slot + count))
            first_slot += count
        reply = await worker.call(request)
        channels += reply["channels"]
    await asyncio.sleep(0.05)  # let cross-process joins settle (they are confirmed already)
    before = probe.read() if probe is not None else None
    send_request: dict[str, Any] = {
        "cmd": "send",
        "mode": "group" if group is not None else "direct",
        "group": group,
        "channels": channels if group is None else [],
        "slots": slots if group is None else [],
        "expect": expect,
        "senders": step.senders,
        "window": step.window,
        "duration": settings.duration,
        "messages": settings.messages,
        "payload_bytes": settings.payload_bytes,
    }
    per_send = step.size if group is not None else 1
    sending = asyncio.ensure_future(
        pool.sender.call(send_request, wait=settings.duration + REPLY_TIMEOUT)
    )
    started = time.monotonic()

    def show(delivered: int) -> None:
        elapsed = max(time.monotonic() - started, 1e-9)
        status(f"{delivered:,} deliveries, {delivered / elapsed:,.0f}/s")

    try:
        while not sending.done():
            show(board.total(slots))
            await asyncio.wait([sending], timeout=0.25)
        sent = sending.result()
    finally:
        if not sending.done():
            sending.cancel()
    expected = sent["sent"] * per_send
    await _drain(board, slots, expected, show)
    after = probe.read() if probe is not None else None
    collected = [
        await worker.call({"cmd": "collect"})
        for worker, n in zip(members, counts, strict=True)
        if n
    ]
    for worker, count in zip(members, counts, strict=True):
        if count:
            await worker.call({"cmd": "clear"})
    return _record(pool, step, sent, collected, expected, probe, before, after)


def _record(
    pool: Pool,
    step: Step,
    sent: dict[str, Any],
    collected: list[dict[str, Any]],
    expected: int,
    probe: RedisProbe | None,
    before: Any,
    after: Any,
) -> dict[str, Any]:
    delivered = sum(reply["delivered"] for reply in collected)
    lasts = [reply["last"] for reply in collected if reply["delivered"]]
    end = max(lasts) if lasts else sent["last"]
    elapsed = max(end - sent["first"], 1e-9) if sent["sent"] else 0.0
    if step.kind == "group_send":
        latency_by_seq: dict[str, float] = {}
        seen: dict[str, int] = {}
        for reply in collected:
            for seq, count in reply["group_seen"].items():
                seen[seq] = seen.get(seq, 0) + count
            for seq, value in reply["group_latency"].items():
                if value > latency_by_seq.get(seq, -1.0):
                    latency_by_seq[seq] = value
        samples = [value for seq, value in latency_by_seq.items() if seen[seq] == step.size]
    else:
        samples = [value for reply in collected for value in reply["latencies"]]
    redis = None
    if probe is not None and before is not None and after is not None:
        redis = delta(probe, before, after).as_dict(sent["sent"])
    return {
        "target": pool.target.name,
        "scenario": step.scenario,
        "kind": step.kind,
        "group_size": step.size if step.kind == "group_send" else None,
        "pairs": step.size if step.kind == "send" else None,
        "processes": len(pool.members),
        "sender": "member" if pool.sender in pool.members else "separate",
        "senders": step.senders,
        "window": step.window,
        "sent": sent["sent"],
        "expected": expected,
        "delivered": delivered,
        "dropped": max(0, expected - delivered),
        "channel_full": sent["full"],
        "stalls": sent["stalls"],
        "elapsed_s": elapsed,
        "deliveries_per_s": delivered / elapsed if elapsed else 0.0,
        "sends_per_s": sent["sent"] / elapsed if elapsed else 0.0,
        "latency_ms": percentiles(samples),
        "call_ms": sent["call_ms"],
        "redis": redis,
        "counters": [reply["counters"] for reply in collected],
        "cpu": _cpu(pool, sent, collected, delivered),
        "loop": pool.info.get("loop"),
        "hiredis": pool.info.get("hiredis"),
    }


def _cpu(
    pool: Pool, sent: dict[str, Any], collected: list[dict[str, Any]], delivered: int
) -> dict[str, Any]:
    """CPU time of the bench's processes (the layer's work and the bench's own bookkeeping).

    With the sender in a member process its sending is in ``members_s`` as well.
    """
    members = sum(reply["cpu_s"] for reply in collected)
    separate = pool.sender not in pool.members
    return {
        "members_s": members,
        "sender_s": sent["cpu_s"],
        "member_us_per_delivery": members / delivered * 1e6 if delivered else None,
        "sender_us_per_send": sent["cpu_s"] / sent["sent"] * 1e6
        if sent["sent"] and separate
        else None,
    }


def progress_total(settings: Settings, targets: int) -> int:
    return len(plan(settings)) * targets * settings.rounds


__all__ = [
    "SCENARIOS",
    "SENT",
    "Pool",
    "Settings",
    "Step",
    "measure",
    "plan",
    "progress_total",
]
