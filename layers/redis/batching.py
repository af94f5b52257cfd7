"""Concurrent sends to one shard share a round trip.

A process with many consumers sends many messages at once (a worker replying, a gateway
forwarding); each ``send`` awaited its own EVALSHA round trip, so a burst cost one round trip
per message. :class:`PushBatcher` queues the sends made in the same event-loop tick and runs
them as one pipeline. A lone send still goes out on the next tick, so its latency is unchanged.
Order is kept: a pipeline runs its commands in the order they were queued.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from .scripts import Script


class PushBatcher:
    """Runs one script for many callers of one shard, batching calls made together."""

    def __init__(self, client: Redis, script: Script) -> None:
        self._client = client
        self._script = script
        self._pending: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self._flushing = False
        self._task: asyncio.Task[None] | None = None  # the flush in progress, kept referenced

    async def call(self, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((keys, args, future))
        if not self._flushing:
            self._flushing = True
            self._task = loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._execute(batch)
                except BaseException as exc:  # every caller of the batch learns of it
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, _, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._flushing = False

    async def _execute(
        self, batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]]
    ) -> list[Any]:
        script, client = self._script, self._client
        if len(batch) == 1:
            keys, args, _ = batch[0]
            return [await script(client, keys, args)]
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)
            for keys, args, _ in batch:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            try:
                return list(await pipe.execute())
            except NoScriptError:  # a new or restarted server: load once, run the batch again
                if attempt == 2:
                    raise
                await client.script_load(script.source)
        raise AssertionError("unreachable")
