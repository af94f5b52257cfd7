"""The process inbox reader: direct sends to this process's channels arrive through one list.

Entries are taken in batches on a connection of their own: on Redis 7 with ``BLMPOP`` (one
command that waits until the list has entries, then takes up to ``BATCH`` of them: one round
trip per batch, and per message when they come one at a time); on Redis 6.2, which lacks it,
with ``LPOP key N`` while the list has any and ``BLPOP`` when it is empty (two round trips for a
message that arrives alone). An entry taken is removed from Redis at once, so a message is
delivered at most once; entries still in the list when Redis restarts without persistence are
lost, and so are the entries being taken if the process dies at that instant.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .hosts import HostSpec
from .reconnect import CONNECTION_ERRORS, Backoff, cancel_and_wait, logger

BATCH = 512
BLOCK_SECONDS = 2


class InboxReader:
    """Reads one list forever and hands each entry to ``on_entry``; survives Redis restarts."""

    def __init__(
        self, host: HostSpec, key: str, on_entry: Callable[[bytes], None], name: str
    ) -> None:
        self._host = host
        self._key = key
        self._on_entry = on_entry
        self._name = name
        self._client: Redis | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"roomcast-inbox-{self._name}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await client.aclose()

    async def _run(self) -> None:
        backoff = Backoff(f"inbox {self._name}")
        while True:
            try:
                if self._client is None:
                    self._client = self._host.client(retries=0)
                await self._read(self._client, backoff)
            except asyncio.CancelledError:
                raise
            except CONNECTION_ERRORS as exc:
                await backoff.failed(exc)
            except Exception:  # a bug must not silently end delivery to this process
                logger.exception("inbox %s: unexpected error", self._name)
                await backoff.failed(RuntimeError("unexpected error"))

    async def _read(self, client: Redis, backoff: Backoff) -> None:
        key = self._key
        on_entry = self._on_entry
        while True:  # Redis 7: BLMPOP, until the server says it does not know it
            try:
                reply = cast(
                    "list[Any] | None",
                    await client.blmpop(BLOCK_SECONDS, 1, key, direction="LEFT", count=BATCH),
                )
            except ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                break
            backoff.succeeded()
            if reply is not None:  # [key, [entry, ...]]
                for entry in reply[1]:
                    on_entry(entry)
        while True:
            batch = cast("list[bytes] | None", await client.lpop(key, BATCH))
            backoff.succeeded()
            if batch:
                for entry in batch:
                    on_entry(entry)
                continue
            popped = cast(
                "tuple[bytes, bytes] | None", await client.blpop([key], timeout=BLOCK_SECONDS)
            )
            if popped is not None:
                on_entry(popped[1])
