"""Receives on plain channels (``worker.jobs``): every waiting receiver of a host, one connection.

A plain channel is a list in Redis that any process may pop. However many ``receive()`` calls
wait, and on however many channels, a process keeps one blocking ``BLPOP key1 key2 ... timeout``
in flight per host, on a connection of its own (a blocking command would hold up the pipeline
behind it). When it answers ``[key, entry]`` the entry goes to the oldest receiver still
waiting on that key, and the next ``BLPOP`` goes out at once. A receiver of a channel that the
``BLPOP`` in flight does not name has it interrupted with ``CLIENT UNBLOCK`` (sent on the
pipeline), so it waits no longer than the others; where ``CLIENT UNBLOCK`` is not allowed the
``BLPOP`` times out within :data:`BLOCK_SECONDS` and is remade.

Nothing is lost when a receiver is cancelled: an entry popped for a receiver that has gone is
pushed back to the head of its list (``LPUSH``) for the next receiver. An entry whose reply is
lost with the connection is lost (it had left Redis). A Redis outage is waited out: receivers
keep waiting while the connection is rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from typing import Any

from . import resp
from .health import Health
from .hosts import HostSpec
from .link import RespLink
from .pipeline import Pipeline
from .reconnect import cancel_and_wait, logger

BLOCK_SECONDS = 2
RECONNECT_CAP = 1.0


class PlainReader:
    """Hands the entries of plain-channel lists to the receivers waiting on them."""

    def __init__(
        self, host: HostSpec, pipeline: Pipeline, *, name: str, shard: int, health: Health
    ) -> None:
        self._host = host
        self._pipeline = pipeline
        self._name = name
        self._shard = shard
        self._health = health
        self._waiters: dict[bytes, deque[asyncio.Future[bytes]]] = {}
        self._link: RespLink | None = None
        self._blocked: frozenset[bytes] | None = None  # the keys of the BLPOP in flight
        self._unblocking = False  # a CLIENT UNBLOCK for the BLPOP in flight has been sent
        self._task: asyncio.Task[None] | None = None

    async def pop(self, key: bytes) -> bytes:
        """The next entry of list ``key``; waits as long as it takes (cancellable)."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.get(key)
        if waiters is None:
            waiters = self._waiters[key] = deque()
        waiters.append(future)
        self._wanted(key)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._give_back(key, future.result())  # popped for us: next receiver's
            else:
                with contextlib.suppress(ValueError):
                    waiters.remove(future)
                if not waiters and self._waiters.get(key) is waiters:
                    del self._waiters[key]
            raise

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        link, self._link = self._link, None
        if link is not None:
            link.close()

    # Inside -------------------------------------------------------------------------------

    def _wanted(self, key: bytes) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"roomcast-plain-{self._name}"
            )
            return
        blocked = self._blocked
        if blocked is None:
            self._block()
        elif key not in blocked and not self._unblocking:
            link = self._link
            if link is not None and link.client_id is not None:
                self._unblocking = True
                command = resp.pack("CLIENT", "UNBLOCK", link.client_id)
                self._pipeline.fire(command)

    def _block(self) -> None:
        """Send the next BLPOP for every key with a receiver waiting, if none is in flight."""
        link = self._link
        if link is None or link.closed or self._blocked is not None:
            return
        keys = [key for key, waiters in self._waiters.items() if waiters]
        if not keys:
            return
        self._blocked = frozenset(keys)
        self._unblocking = False
        link.send(resp.pack("BLPOP", *keys, BLOCK_SECONDS), 1, self._on_reply, BLOCK_SECONDS)

    def _on_reply(self, replies: list[Any] | BaseException) -> None:
        self._blocked = None
        if isinstance(replies, BaseException):
            return  # the connection ended: _run makes a new one
        reply = replies[0]
        if isinstance(reply, BaseException):
            self._health.log.warning(
                f"blpop {self._shard}", "%s: BLPOP answered %s", self._name, reply
            )
            link = self._link
            if link is not None:
                link.abort(reply)
            return
        if reply is not None:  # [key, entry]; None: timed out or unblocked
            key, entry = reply[0], reply[1]
            if not self._hand(key, entry):
                self._give_back(key, entry)
        self._block()

    def _hand(self, key: bytes, entry: bytes) -> bool:
        waiters = self._waiters.get(key)
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(entry)
                if not waiters:
                    del self._waiters[key]
                return True
        self._waiters.pop(key, None)
        return False

    def _give_back(self, key: bytes, entry: bytes) -> None:
        if self._hand(key, entry):
            return
        self._pipeline.fire(resp.pack("LPUSH", key, entry), retry=False)

    async def _run(self) -> None:
        failures = 0
        while True:
            if failures:
                delay = min(RECONNECT_CAP, 0.05 * 2 ** min(failures, 16))
                await asyncio.sleep(random.uniform(delay / 2, delay))
            try:
                link = await RespLink.open(self._host, name=self._name, want_id=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self._health.lost(self._shard, exc)
                continue
            failures = 0
            self._health.back(self._shard)
            self._link, self._blocked = link, None
            self._block()
            error = await link.wait_closed()
            logger.debug("%s: connection ended (%s)", self._name, error)
            self._link, self._blocked = None, None
            failures = 1
