"""Direct sends to one shard: the PUSH script over a link of their own, pipelined.

A ``send`` to another process's channel is one ``EVALSHA`` of the PUSH script. Through redis-py
each cost ~80 µs of CPU on top of the round trip (pool checkout, argument encoding, a timeout
per read, response callbacks); here the command is packed from a prefix made once and written
on a :class:`~roomcast.layers.redis.link.RespLink`, and its reply resolves the caller's future
directly.

A send made while nothing is in flight is written at once. Sends made while replies are
awaited are queued and written together on the next event-loop tick, as one batch pipelined
behind the others, so a burst costs one round trip and two writes. Order is kept: Redis runs
the commands of a connection in the order they were written.

As through redis-py: a server that forgot the script (``SCRIPT FLUSH``, a restart) answers
``NOSCRIPT``, and those commands are run again with ``EVAL`` (which also loads it); nothing new
is written until every batch in flight has come back, so the re-runs keep their order. A lost
connection is reopened and what was in flight written again, twice at most with backoff, before
its callers get the connection error.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from .hosts import HostSpec
from .link import RespLink
from .reconnect import LOST_CONNECTION, logger
from .resp import bulk
from .scripts import Script

RETRIES = 2  # as the layer's redis-py clients: a command survives two reconnections

# A queued call: its argument count after the script, the packed ``numkeys keys... args...``,
# and its caller's future.
_Call = tuple[int, bytes, "asyncio.Future[Any]"]


class PushBatcher:
    """Runs one script for many callers of one shard, pipelining the calls."""

    def __init__(self, host: HostSpec, script: Script) -> None:
        self._host = host
        self._script = script
        self._evalsha = bulk(b"EVALSHA") + bulk(script.sha.encode())
        self._eval = bulk(b"EVAL") + bulk(script.source.encode())
        self._link: RespLink | None = None
        self._pending: list[_Call] = []
        self._in_flight: deque[tuple[list[_Call], bool]] = deque()  # (batch, run with EVAL)
        self._scheduled = False  # a flush of the pending calls is due on the next tick
        self._holding = False  # re-running forgotten scripts: write nothing new meanwhile
        self._failures = 0  # lost connections in a row
        self._backoff = ExponentialWithJitterBackoff(base=0.05, cap=1.0)
        self._task: asyncio.Task[None] | None = None  # a reconnection in progress
        self._closed = False

    def call(self, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Queue one run of the script; the future gets its reply (or error)."""
        body = bulk(b"%d" % len(keys)) + b"".join(
            [bulk(arg if arg.__class__ is bytes else str(arg).encode()) for arg in (*keys, *args)]
        )
        return self.call_packed(len(keys) + len(args) + 1, body)

    def call_packed(self, count: int, body: bytes) -> asyncio.Future[Any]:
        """:meth:`call` with ``numkeys keys... args...`` (``count`` of them) packed already."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((count, body, future))
        if self._scheduled or self._holding or self._task is not None:
            return future  # goes out with what is already waiting
        link = self._link
        if not self._in_flight and link is not None and not link.closed:
            self._flush()  # nothing to wait for: write it now
        else:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def close(self) -> None:
        """Close the link; calls not yet answered fail with a connection error."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        link, self._link = self._link, None
        if link is not None:
            link.close()
        self._fail_all(RedisConnectionError("the layer was closed"))

    # Writing ------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write the pending calls as one batch, or reconnect first."""
        self._scheduled = False
        if not self._pending or self._holding or self._task is not None or self._closed:
            return
        link = self._link
        if link is None or link.closed:
            self._reconnect(None)
            return
        batch, self._pending = self._pending, []
        self._write(link, batch, use_eval=False)

    def _write(self, link: RespLink, batch: list[_Call], *, use_eval: bool) -> None:
        head = self._eval if use_eval else self._evalsha
        data = b"".join([b"*%d\r\n%s%s" % (count + 2, head, body) for count, body, _ in batch])
        self._in_flight.append((batch, use_eval))
        link.send(data, len(batch), self._on_replies)

    def _on_replies(self, replies: list[Any] | BaseException) -> None:
        if isinstance(replies, BaseException):
            self._on_lost(replies)
            return
        batch, use_eval = self._in_flight.popleft()
        self._failures = 0
        forgotten: list[_Call] = []
        for call, reply in zip(batch, replies, strict=True):
            future = call[2]
            if isinstance(reply, BaseException):
                if isinstance(reply, NoScriptError) and not use_eval:
                    forgotten.append(call)
                elif not future.done():
                    future.set_exception(reply)
            elif not future.done():
                future.set_result(reply)
        if forgotten:
            link = self._link
            if link is None or link.closed:  # written again, still first, on a new link
                if self._in_flight:
                    self._in_flight.appendleft((forgotten, True))  # _on_lost takes them back
                    return
                self._pending[:0] = forgotten
            else:
                self._holding = True  # batches written after this one come back first
                self._write(link, forgotten, use_eval=True)
                return
        if not self._in_flight:
            self._holding = False
            self._flush()

    # Failures -----------------------------------------------------------------------------

    def _on_lost(self, error: BaseException) -> None:
        """The link failed: every batch in flight goes back, in order, before the pending."""
        if not self._in_flight:
            return  # the batches of this link were already taken back
        lost = [call for batch, _ in self._in_flight for call in batch]
        self._in_flight.clear()
        self._pending[:0] = lost
        self._holding = False
        if self._closed:
            self._fail_all(error)
        else:
            self._reconnect(error)

    def _reconnect(self, error: BaseException | None) -> None:
        self._link = None
        self._task = asyncio.get_running_loop().create_task(self._connect(error))

    async def _connect(self, error: BaseException | None) -> None:
        """Open a new link (backing off after failures), then write what is pending."""
        try:
            while True:
                if error is not None:
                    self._failures += 1
                    if self._failures > RETRIES:
                        self._failures = 0
                        self._fail_all(error)
                        return
                    await asyncio.sleep(self._backoff.compute(self._failures))
                try:
                    self._link = await RespLink.open(self._host)
                except LOST_CONNECTION as exc:
                    error = exc
                    continue
                except Exception as exc:  # e.g. a refused password: the callers learn of it
                    logger.debug("push link to %s: %r", self._host.description, exc)
                    self._fail_all(exc)
                    return
                break
        finally:
            self._task = None
        self._flush()

    def _fail_all(self, error: BaseException) -> None:
        pending, self._pending = self._pending, []
        for _, _, future in pending:
            if not future.done():
                future.set_exception(error)
