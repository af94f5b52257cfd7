"""The process inbox reader: direct sends to this process's channels arrive through one list.

Entries are taken in batches on a connection of their own: on Redis 7 with ``BLMPOP`` (one
command that waits until the list has entries, then takes up to ``BATCH`` of them: one round
trip per batch, and per message when they come one at a time); on Redis 6.2, which lacks it,
with ``LPOP key N`` while the list has any and ``BLPOP`` when it is empty (two round trips for a
message that arrives alone). An entry taken is removed from Redis at once, so a message is
delivered at most once; entries still in the list when Redis restarts without persistence are
lost, and so are the entries being taken if the process dies at that instant.

The connection is a :class:`~roomcast.layers.redis.link.RespLink` and the reading runs in its reply
callback: a reply's entries are handed over and the next command (packed once) is written at
once, with no task switch per message. The reader's task only waits for the link to fail, and
then opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from . import resp
from .health import Health
from .hosts import HostSpec
from .link import RespLink
from .reconnect import CONNECTION_ERRORS, cancel_and_wait, logger

BATCH = 512
BLOCK_SECONDS = 2
AHEAD = 16  # BLMPOPs queued at the server: one write for every AHEAD // 2 replies
RECONNECT_CAP = 1.0


class InboxReader:
    """Reads one list forever and hands each entry to ``on_entry``; survives Redis restarts."""

    def __init__(
        self,
        host: HostSpec,
        key: str,
        on_entry: Callable[[bytes], None],
        *,
        name: str,
        shard: int,
        health: Health,
    ) -> None:
        self._host = host
        self._shard = shard
        self._health = health
        self._key = key
        self._on_entry = on_entry
        self._name = name
        self._blmpop = resp.pack("BLMPOP", BLOCK_SECONDS, 1, key, "LEFT", "COUNT", BATCH)
        self._lpop = resp.pack("LPOP", key, BATCH)
        self._blpop = resp.pack("BLPOP", key, BLOCK_SECONDS)
        self._link: RespLink | None = None
        self._ended: asyncio.Future[None] | None = None  # fails when reading must start over
        self._outstanding = 0  # BLMPOPs written and not yet answered
        self._redis_6 = False  # no BLMPOP on this server: LPOP and BLPOP instead
        self._failures = 0  # connection attempts or links that failed in a row
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
        self._drop_link()

    def _drop_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                link.close()

    async def _run(self) -> None:
        while True:
            if self._failures:
                delay = min(RECONNECT_CAP, 0.05 * 2 ** min(self._failures, 16))
                await asyncio.sleep(random.uniform(delay / 2, delay))
            try:
                self._link = await RespLink.open(self._host, name=self._name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures += 1
                self._health.lost(self._shard, exc)
                continue
            self._health.back(self._shard)
            try:
                self._ended = asyncio.get_running_loop().create_future()
                self._outstanding, self._redis_6 = 0, False
                self._ask_ahead()
                await self._ended
            except asyncio.CancelledError:
                raise
            except CONNECTION_ERRORS as exc:
                logger.debug("inbox %s: connection ended (%s)", self._name, exc)
                self._failures += 1
            except Exception:  # a bug must not silently end delivery to this process
                logger.exception("inbox %s: unexpected error", self._name)
                self._failures += 1
            finally:
                self._ended = None
                self._drop_link()

    def _end(self, error: BaseException) -> None:
        ended = self._ended
        if ended is not None and not ended.done():
            ended.set_exception(error)

    def _ask_ahead(self) -> None:
        """Queue BLMPOPs at the server, so that a message costs one reply and no write.

        Redis runs a client's commands one after the other, the next once the blocked one is
        answered: entries still come in order, each once. Commands still queued when the
        connection closes are dropped by the server unrun, so nothing more is lost than with
        one command in flight.
        """
        link = self._link
        if link is None:  # stopped
            return
        missing = AHEAD - self._outstanding
        self._outstanding = AHEAD
        link.send(self._blmpop * missing, 1, self._on_blmpop, BLOCK_SECONDS, requests=missing)

    def _on_blmpop(self, replies: list[Any] | BaseException) -> None:
        """Redis 7: hand over the entries; ask for more when half the queue is used."""
        self._outstanding -= 1
        try:
            reply = self._reply(replies)
            if self._redis_6:
                return  # a BLMPOP queued before we knew: its error is the one we had
            if isinstance(reply, ResponseError) and "unknown command" in str(reply).lower():
                self._redis_6 = True
                self._next(self._lpop, self._on_lpop)
                return
            if isinstance(reply, BaseException):
                raise reply
            if reply is not None:  # [key, [entry, ...]]; None: the wait timed out
                on_entry = self._on_entry
                for entry in reply[1]:
                    on_entry(entry)
            if self._outstanding <= AHEAD // 2:
                self._ask_ahead()
        except Exception as exc:
            self._end(exc)

    def _on_lpop(self, replies: list[Any] | BaseException) -> None:
        """Redis 6.2: LPOP while the list has entries, then BLPOP to wait for one."""
        try:
            batch = self._reply(replies)
            if isinstance(batch, BaseException):
                raise batch
            if batch:
                on_entry = self._on_entry
                for entry in batch:
                    on_entry(entry)
                self._next(self._lpop, self._on_lpop)
            else:
                self._next(self._blpop, self._on_blpop, BLOCK_SECONDS)
        except Exception as exc:
            self._end(exc)

    def _on_blpop(self, replies: list[Any] | BaseException) -> None:
        try:
            popped = self._reply(replies)
            if isinstance(popped, BaseException):
                raise popped
            if popped is not None:  # [key, entry]
                self._on_entry(popped[1])
            self._next(self._lpop, self._on_lpop)
        except Exception as exc:
            self._end(exc)

    def _reply(self, replies: list[Any] | BaseException) -> Any:
        if isinstance(replies, BaseException):
            raise replies
        self._failures = 0
        return replies[0]

    def _next(self, command: bytes, callback: Callable[[Any], None], blocking: float = 0) -> None:
        link = self._link
        if link is None:  # stopped
            return
        link.send(command, 1, callback, blocking)
