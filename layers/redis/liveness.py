"""Liveness: each process heartbeats, and the records of a process that stopped are swept.

Each process writes ``ZADD <prefix>:procs <now> <process id>`` on every host every
``liveness_timeout / 3`` seconds (its first beat goes out before any other command of the
process). A process whose last beat is older than ``liveness_timeout`` is gone:

* **readers ignore it**: ``group_members()`` leaves out the channels of a process that is not
  live, at once, without waiting for the sweep;
* **it is swept**: with each heartbeat a live process looks for processes whose beat lapsed;
  the first to remove one from ``procs`` (atomically, ``FORGET_PROCESS``) removes its records
  from every group of that host listed in its ``pg{<process>}`` set, and its inbox (and,
  through ``on_forgot``, its presence entries: :mod:`roomcast.layers.redis.presence`).

So the members of a gateway killed with SIGKILL vanish from ``group_members()`` within
``liveness_timeout`` (15 s by default) and from Redis within about ``liveness_timeout`` plus a
heartbeat interval. Its pub/sub subscriptions go at once (Redis drops a dead connection's).

A live process that was swept anyway (its event loop was blocked for longer than
``liveness_timeout``, or Redis restarted without persistence) finds itself missing from
``procs`` at its next beat (``ZADD`` answers 1) and records all its memberships again from its
own state. The sweep of a group checks, atomically, that the process is still absent, so a
process that comes back is never swept after it has re-recorded. Clocks of the processes are
assumed to agree within a fraction of ``liveness_timeout``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from . import resp, scripts, wire
from .pipeline import Pipeline
from .reconnect import LOST_CONNECTION, cancel_and_wait, logger

SWEEP_BATCH = 16  # lapsed processes looked at per heartbeat and host


class Liveness:
    """This process's heartbeat on every host, and the sweeping of processes that stopped."""

    def __init__(
        self,
        *,
        prefix: str,
        process_id: str,
        timeout: float,
        pipelines: Callable[[], Sequence[Pipeline]],
        on_absent: Callable[[int], Awaitable[None]],
        on_beat: Callable[[int], Awaitable[None]],
        on_forgot: Callable[[Pipeline, str], Awaitable[None]] | None = None,
    ) -> None:
        self.prefix = prefix
        self.process_id = process_id
        self.timeout = timeout
        self.interval = timeout / 3
        self._key = wire.processes_key(prefix)
        self._pipelines = pipelines
        self._on_absent = on_absent  # re-record this host's memberships
        self._on_beat = on_beat  # a beat went through: reconcile what waited for Redis
        self._on_forgot = on_forgot  # a lapsed process was forgotten: sweep its presence too
        self._task: asyncio.Task[None] | None = None
        self._beating: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.swept = 0  # processes this one has swept

    def start(self) -> None:
        """Register on every host now (ahead of any other command), then beat regularly."""
        for shard, pipeline in enumerate(self._pipelines()):
            self._beating.add(shard)
            first = pipeline.submit(self._zadd(), urgent=True)
            first.add_done_callback(_ignore)
            self._keep(self._after_first(shard, first))
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"roomcast-heartbeat-{self.process_id}"
        )

    def _keep(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, *, unregister: bool) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        for beat in list(self._tasks):
            await cancel_and_wait(beat)
        if unregister:  # a clean exit: our records go now rather than after the timeout
            for pipeline in self._pipelines():
                if pipeline.connected:
                    pipeline.fire(resp.pack("ZREM", self._key, self.process_id))

    def _zadd(self) -> bytes:
        return resp.pack("ZADD", self._key, repr(time.time()), self.process_id)

    async def _after_first(self, shard: int, first: asyncio.Future[object]) -> None:
        try:
            await first
        except LOST_CONNECTION:
            pass  # the next beat registers
        finally:
            self._beating.discard(shard)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for shard in range(len(self._pipelines())):
                if shard not in self._beating:
                    self._beating.add(shard)
                    self._keep(self._beat(shard))

    async def beat_now(self, shard: int) -> None:
        """Beat on ``shard`` at once (after a reconnection), unless a beat is under way."""
        if shard not in self._beating and self._task is not None:
            self._beating.add(shard)
            await self._beat(shard)

    async def _beat(self, shard: int) -> None:
        pipeline = self._pipelines()[shard]
        try:
            added = await pipeline.submit(self._zadd(), urgent=True)
            if added:
                await self._on_absent(shard)
            await self._on_beat(shard)
            await self._sweep(pipeline)
        except LOST_CONNECTION as exc:
            logger.debug("heartbeat on host %d failed: %s", shard, exc)
        except Exception:
            logger.exception("heartbeat on host %d failed", shard)
        finally:
            self._beating.discard(shard)

    async def _sweep(self, pipeline: Pipeline) -> None:
        cutoff = time.time() - self.timeout
        lapsed = await pipeline.execute(
            resp.pack("ZRANGEBYSCORE", self._key, "-inf", repr(cutoff), "LIMIT", 0, SWEEP_BATCH)
        )
        for raw in lapsed or ():
            process = raw.decode()
            if process == self.process_id:
                continue
            forgot = await pipeline.run_script(
                scripts.FORGET_PROCESS, [self._key], [process, repr(cutoff)], retry=True
            )
            if forgot:
                await self._sweep_process(pipeline, process)
                if self._on_forgot is not None:
                    await self._on_forgot(pipeline, process)

    async def _sweep_process(self, pipeline: Pipeline, process: str) -> None:
        groups_key = wire.process_groups_key(self.prefix, process)
        groups = await pipeline.execute(resp.pack("SMEMBERS", groups_key))
        marker = f".{process}!"
        removed = 0
        for raw in groups or ():
            group = raw.decode()
            keys = [
                wire.group_key(self.prefix, group),
                wire.group_external_key(self.prefix, group),
                self._key,
            ]
            count = await pipeline.run_script(
                scripts.SWEEP_PROCESS, keys, [process, marker], retry=True
            )
            if count == -1:
                return  # it came back: it re-records its memberships itself
            removed += count
        await pipeline.execute(resp.pack("DEL", groups_key, wire.inbox_key(self.prefix, process)))
        self.swept += 1
        logger.info(
            "swept process %s (heartbeat lapsed %.0f s ago): %d membership record(s) in %d "
            "group(s)",
            process,
            self.timeout,
            removed,
            len(groups or ()),
        )

    async def live(self, pipeline: Pipeline, processes: list[str]) -> set[str]:
        """Which of ``processes`` beat within ``liveness_timeout`` (one ``ZMSCORE``)."""
        if not processes:
            return set()
        scores = await pipeline.execute(resp.pack("ZMSCORE", self._key, *processes))
        cutoff = time.time() - self.timeout
        return {
            process
            for process, score in zip(processes, scores, strict=True)
            if score is not None and float(score) > cutoff
        }


def _ignore(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
