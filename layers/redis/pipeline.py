"""Every non-blocking Redis command of a process, for one host, over one pipelined connection.

There is no pool to exhaust. A ``send``, ``group_add``, ``group_discard``, ``group_send``,
``group_members``, ``flush`` or heartbeat is one call queued here and written on the host's
:class:`~roomcast.layers.redis.link.RespLink`: a call made while nothing is in flight is written
at once; calls made while replies are awaited are written together on the next event-loop tick,
as one batch pipelined behind the others, so a burst of a thousand calls costs a few writes and
round trips, not a thousand connections. Redis runs a connection's commands in the order they
were written, so order is kept, and each call gets its own reply.

**Bounded.** At most :data:`MAX_QUEUED` calls (and :data:`MAX_QUEUED_BYTES` of them) are queued
or in flight per host; a caller past that waits for room (FIFO) before its call is queued. Ten
thousand concurrent layer calls therefore queue and complete, memory stays bounded by the
calls admitted, and latency grows with the queue ahead, not without limit.

**Outages are waited out.** When the connection is lost it is reopened in the background, with
backoff (capped at :data:`RECONNECT_CAP` seconds), for as long as the layer lives, traffic or
not. A call waits for Redis up to ``retry_timeout`` seconds from when it was made; a call that
could not be answered by then fails with a connection error, which the layer raises as
:class:`~roomcast.layers.exceptions.LayerConnectionError`.

What happens to a call on a failure:

==========================================  ================================================
failure                                     the call
==========================================  ================================================
connection down, call not yet written       waits, written on the next connection
connection lost after the call was written  written again if it is *idempotent* (a
(restart, ``CLIENT KILL``, failover)        membership record, a read, a heartbeat); a
                                            push or publish fails at once: Redis may or may
                                            not have run it, and running it twice would
                                            break at-most-once delivery
no reply at all for ``retry_timeout`` (a   fails; Redis may still run it once it resumes
frozen server)                              (as with any timeout). A long queue is not an
                                            outage: while replies keep coming, calls wait
                                            their turn however long it takes
``LOADING`` or ``READONLY`` reply (a        not run by Redis: written again (after a short
restarting server, a demoted master)        pause, or on a new connection that asks the
                                            Sentinels for the master)
``NOSCRIPT`` (``SCRIPT FLUSH``, restart)    run again with ``EVAL``; nothing new is written
                                            until every batch in flight has come back, so
                                            the re-runs keep their order
==========================================  ================================================

**Fenced scripts** (:meth:`Pipeline.run_fenced`, the history scripts): with ``fence=True`` each
connection's greeting also asks ``INFO server``, and a fenced call gets the server's ``run_id``
as its last argument when it is written, whichever connection that is. Plain calls are
untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from typing import Any

from redis.exceptions import BusyLoadingError, NoScriptError, ReadOnlyError
from redis.exceptions import ConnectionError as RedisConnectionError

from .health import Health
from .hosts import HostSpec
from .link import RespLink
from .reconnect import LOST_CONNECTION, logger
from .resp import bulk
from .scripts import Script

MAX_QUEUED = 4096  # calls queued or in flight per host before callers wait for room
MAX_QUEUED_BYTES = 16 << 20  # ... or bytes of them
MAX_BATCH = 1024  # calls written in one batch
RECONNECT_BASE = 0.05
RECONNECT_CAP = 1.0
LOADING_PAUSE = 0.2  # seconds before commands answered LOADING are written again
FENCE_LENGTH = 16  # characters of the server's run_id that fenced scripts get (64 bits)


class Unreachable(RedisConnectionError):
    """A call gave up: Redis did not answer within ``retry_timeout``."""


class Call:
    """One command: a script run (EVALSHA, with EVAL as fallback) or a packed command."""

    __slots__ = ("body", "count", "deadline", "future", "retry", "script", "size")

    def __init__(
        self,
        future: asyncio.Future[Any],
        deadline: float,
        body: bytes,
        count: int = 0,
        script: Script | None = None,
        retry: bool = True,
    ) -> None:
        self.future = future
        self.deadline = deadline
        self.body = body  # a script's packed ``numkeys keys... args...``, or a whole command
        self.count = count  # the script's argument count after the SHA
        self.script = script
        self.retry = retry  # may be written again after a lost connection
        self.size = len(body)

    def data(self, use_eval: bool) -> bytes:
        script = self.script
        if script is None:
            return self.body
        head = script.eval_head if use_eval else script.evalsha_head
        return b"*%d\r\n%s%s" % (self.count + 2, head, self.body)


class FencedCall(Call):
    """A fenced script's run: its last argument, the identity of the server of the connection
    it is written on, is added as it is written (so a call queued across a reconnection, or
    written again after one, carries the new server's)."""

    __slots__ = ("pipeline",)

    def __init__(
        self,
        pipeline: Pipeline,
        future: asyncio.Future[Any],
        deadline: float,
        body: bytes,
        count: int,
        script: Script,
        retry: bool,
    ) -> None:
        super().__init__(future, deadline, body, count, script, retry)
        self.pipeline = pipeline

    def data(self, use_eval: bool) -> bytes:
        script = self.script
        assert script is not None
        head = script.eval_head if use_eval else script.evalsha_head
        fence = self.pipeline._fence
        return b"*%d\r\n%s%s%s" % (self.count + 3, head, self.body, fence)


class Pipeline:
    """The queue and connection of one host; see the module docstring."""

    def __init__(
        self,
        host: HostSpec,
        shard: int,
        health: Health,
        retry_timeout: float,
        *,
        name: str,
        fence: bool = False,
    ) -> None:
        self._host = host
        self._shard = shard
        self._health = health
        self.retry_timeout = retry_timeout
        self._name = name
        self._loop = asyncio.get_running_loop()
        self._link: RespLink | None = None
        self._pending: deque[Call] = deque()
        self._in_flight: deque[tuple[list[Call], bool]] = deque()  # (batch, run with EVAL)
        self._queued = 0  # calls pending or in flight
        self._queued_bytes = 0
        self._room: deque[asyncio.Future[None]] = deque()  # callers waiting for room
        self._scheduled = False  # a flush of the pending calls is due on the next tick
        self._holding = False  # re-running calls: write nothing new until in-flight drains
        self._rerun: list[Call] = []  # LOADING/READONLY answers: written again once drained
        self._reopen = False  # a READONLY answer: the connection goes once drained
        self._task: asyncio.Task[None] | None = None  # a connection in progress
        self._timer: asyncio.TimerHandle | None = None  # the deadline watch
        self._closed = False
        self._last_error: BaseException | None = None
        self.reconnects = 0
        # ``fence``: learn each connection's server identity (run_id) for fenced scripts
        self._want_fence = fence
        self._fence = bulk(b"")

    # Calls --------------------------------------------------------------------------------

    @property
    def has_room(self) -> bool:
        return self._queued < MAX_QUEUED and self._queued_bytes < MAX_QUEUED_BYTES

    def submit_script(
        self, script: Script, count: int, body: bytes, *, retry: bool
    ) -> asyncio.Future[Any]:
        """Queue one script run (``body`` is its packed ``numkeys keys... args...``, ``count``
        of them); the future gets its reply. Call only when :attr:`has_room` (or after
        :meth:`wait_for_room`)."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._enqueue(
            Call(future, self._loop.time() + self.retry_timeout, body, count, script, retry)
        )
        return future

    def submit_fenced(
        self, script: Script, count: int, body: bytes, *, retry: bool
    ) -> asyncio.Future[Any]:
        """:meth:`submit_script` for a fenced script: the identity of the server it is written
        to goes after ``body`` (see :class:`~roomcast.layers.redis.scripts.Script`)."""
        future: asyncio.Future[Any] = self._loop.create_future()
        deadline = self._loop.time() + self.retry_timeout
        self._enqueue(FencedCall(self, future, deadline, body, count, script, retry))
        return future

    async def run_fenced(
        self, script: Script, keys: list[str], args: list[Any], *, retry: bool
    ) -> Any:
        """Run a fenced script: ``args``, then the identity of the server it is written to."""
        body = bulk(b"%d" % len(keys)) + b"".join(
            [bulk(arg if arg.__class__ is bytes else str(arg).encode()) for arg in (*keys, *args)]
        )
        if not self.has_room or self._room:
            await self.wait_for_room()
        return await self.submit_fenced(script, len(keys) + len(args) + 1, body, retry=retry)

    @property
    def waiting_for_room(self) -> bool:
        """Callers wait for room (a new call must queue behind them: FIFO)."""
        return bool(self._room)

    def submit(
        self, command: bytes, *, retry: bool = True, urgent: bool = False
    ) -> asyncio.Future[Any]:
        """Queue one packed command; the future gets its reply. ``urgent`` puts it ahead of
        every call not yet written (a heartbeat must not wait behind a surge)."""
        future: asyncio.Future[Any] = self._loop.create_future()
        call = Call(future, self._loop.time() + self.retry_timeout, command, retry=retry)
        self._enqueue(call)
        if urgent and len(self._pending) > 1 and self._pending[-1] is call:
            self._pending.pop()
            self._pending.appendleft(call)
        return future

    def fire(self, command: bytes, *, retry: bool = True) -> None:
        """Queue a command whose answer nobody waits for (errors are dropped)."""
        self.submit(command, retry=retry).add_done_callback(_ignore)

    async def wait_for_room(self) -> None:
        """Wait, strictly first come first served, until a call may be queued; give up like a
        call when Redis is down for ``retry_timeout``."""
        room = self._room
        waiter: asyncio.Future[None] = self._loop.create_future()
        room.append(waiter)
        deadline = self._loop.time() + self.retry_timeout
        try:
            while not (room[0] is waiter and self.has_room):
                if waiter.done():  # woken, but the room went to a command that skips the queue
                    waiter = room[0] = self._loop.create_future()
                try:
                    async with asyncio.timeout(max(0.0, deadline - self._loop.time())):
                        await waiter
                except TimeoutError:
                    if not self.connected:
                        raise self._unreachable() from None
                    deadline = self._loop.time() + self.retry_timeout  # busy, not down
        finally:
            with contextlib.suppress(ValueError):
                room.remove(waiter)
            if room and self.has_room:
                self._wake_room()  # the next in line

    async def run_script(
        self, script: Script, keys: list[str], args: list[Any], *, retry: bool
    ) -> Any:
        body = bulk(b"%d" % len(keys)) + b"".join(
            [bulk(arg if arg.__class__ is bytes else str(arg).encode()) for arg in (*keys, *args)]
        )
        if not self.has_room or self._room:
            await self.wait_for_room()
        return await self.submit_script(script, len(keys) + len(args) + 1, body, retry=retry)

    async def execute(self, command: bytes, *, retry: bool = True) -> Any:
        if not self.has_room or self._room:
            await self.wait_for_room()
        return await self.submit(command, retry=retry)

    def _enqueue(self, call: Call) -> None:
        if self._closed:
            call.future.set_exception(RedisConnectionError("the layer was closed"))
            return
        self._pending.append(call)
        self._queued += 1
        self._queued_bytes += call.size
        if self._timer is None:
            self._timer = self._loop.call_at(call.deadline, self._watch)
        if self._scheduled or self._holding or self._task is not None:
            return  # goes out with what is already waiting
        link = self._link
        if not self._in_flight and link is not None and not link.closed:
            self._flush()  # nothing to wait for: write it now
        else:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _release(self, calls: Any) -> None:
        """``calls`` have left the queue (answered, failed or dropped): make room."""
        for call in calls:
            self._queued -= 1
            self._queued_bytes -= call.size
        if self._room:
            self._wake_room()

    def _wake_room(self) -> None:
        """Wake the first caller in line (it leaves the line itself, then wakes the next)."""
        if self._room and self.has_room:
            waiter = self._room[0]
            if not waiter.done():
                waiter.set_result(None)

    def start(self) -> None:
        """Connect now (in the background), without waiting for a call."""
        if self._link is None and not self._closed:
            self._connect_soon()

    def close(self) -> None:
        """Close the connection; calls not yet answered fail with a connection error."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        link, self._link = self._link, None
        error = RedisConnectionError("the layer was closed")
        if link is not None:
            link.close()
        calls = [call for batch, _ in self._in_flight for call in batch]
        calls += [*self._rerun, *self._pending]
        self._in_flight.clear()
        self._rerun.clear()
        self._pending.clear()
        self._fail(calls, error)
        self._release(calls)
        for waiter in self._room:
            if not waiter.done():
                waiter.set_result(None)

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._link.closed

    @property
    def queued(self) -> int:
        """Calls queued or in flight (at most :data:`MAX_QUEUED`)."""
        return self._queued

    # Writing ------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write the pending calls in batches, or connect first."""
        self._scheduled = False
        if not self._pending or self._holding or self._task is not None or self._closed:
            return
        link = self._link
        if link is None or link.closed:
            self._connect_soon()
            return
        pending = self._pending
        dropped: list[Call] = []
        while pending:
            batch: list[Call] = []
            while pending and len(batch) < MAX_BATCH:
                call = pending.popleft()
                if call.future.done():  # given up on while it waited
                    dropped.append(call)
                else:
                    batch.append(call)
            if batch:
                self._write(link, batch, use_eval=False)
                if link.closed:
                    break
        if dropped:
            self._release(dropped)

    def _write(self, link: RespLink, batch: list[Call], *, use_eval: bool) -> None:
        data = b"".join([call.data(use_eval) for call in batch])
        try:
            link.send(data, len(batch), self._on_replies)
        except RedisConnectionError as exc:  # closed under us: nothing was written
            self._pending.extendleft(reversed(batch))
            self._link_gone(exc)
            return
        self._in_flight.append((batch, use_eval))

    def _on_replies(self, replies: list[Any] | BaseException) -> None:
        if isinstance(replies, BaseException):
            self._on_lost(replies)
            return
        batch, use_eval = self._in_flight.popleft()
        forgotten: list[Call] = []
        answered: list[Call] = []
        for call, reply in zip(batch, replies, strict=True):
            future = call.future
            if isinstance(reply, BaseException):
                if isinstance(reply, NoScriptError) and not use_eval and call.script is not None:
                    forgotten.append(call)
                    continue
                if isinstance(reply, (BusyLoadingError, ReadOnlyError)) and not future.done():
                    self._rerun.append(call)  # not run by Redis: safe to write again
                    self._holding = True
                    if isinstance(reply, ReadOnlyError):
                        self._reopen = True
                    continue
                if not future.done():
                    future.set_exception(reply)
            elif not future.done():
                future.set_result(reply)
            answered.append(call)
        self._release(answered)
        if forgotten:
            link = self._link
            if link is None or link.closed:
                self._rerun[:0] = forgotten
            else:
                self._holding = True  # batches written after this one come back first
                self._write(link, forgotten, use_eval=True)
                return
        if not self._in_flight:
            self._drained()

    def _drained(self) -> None:
        """Nothing in flight: put back what must be written again, then go on."""
        rerun, self._rerun = self._rerun, []
        self._pending.extendleft(reversed(rerun))
        self._holding = False
        if self._reopen:
            self._reopen = False
            link, self._link = self._link, None
            if link is not None:
                link.close()  # the next connection asks the Sentinels where the master is
            self._connect_soon(RedisConnectionError("the server is no longer the master"))
            return
        if rerun:
            self._holding = True  # LOADING: pause, then write them again
            self._loop.call_later(LOADING_PAUSE, self._resume)
            return
        self._flush()

    def _resume(self) -> None:
        self._holding = False
        self._flush()

    # Failures -----------------------------------------------------------------------------

    def _on_lost(self, error: BaseException) -> None:
        """The link failed: idempotent calls in flight go back, in order, before the pending;
        the others fail (Redis may have run them)."""
        if not self._in_flight and not self._rerun:
            self._link_gone(error)
            return
        again: list[Call] = []
        gone: list[Call] = []
        ambiguous = RedisConnectionError(
            f"{error}; the command was in flight and may or may not have taken effect"
        )
        for batch, _ in self._in_flight:
            for call in batch:
                if call.future.done():
                    gone.append(call)
                elif call.retry:
                    again.append(call)
                else:
                    call.future.set_exception(ambiguous)
                    gone.append(call)
        self._in_flight.clear()
        again.extend(self._rerun)
        self._rerun = []
        self._reopen = False
        self._pending.extendleft(reversed(again))
        self._holding = False
        self._release(gone)
        self._link_gone(error)

    def _link_gone(self, error: BaseException) -> None:
        link, self._link = self._link, None
        if link is not None and not link.closed:
            link.abort(error)
        if self._closed:
            calls = list(self._pending)
            self._pending.clear()
            self._fail(calls, error)
            self._release(calls)
            return
        logger.debug("%s: connection lost (%s); reconnecting", self._name, error)
        self._last_error = error
        self._connect_soon()

    async def _watch_link(self, link: RespLink) -> None:
        """Notice a link that fails while idle (no reply callback would tell us)."""
        error = await link.wait_closed()
        if self._link is link:
            self._on_lost(error)

    def _connect_soon(self, error: BaseException | None = None) -> None:
        if self._task is None and not self._closed:
            self._task = self._loop.create_task(
                self._connect(error), name=f"roomcast-pipeline-{self._name}"
            )

    async def _connect(self, error: BaseException | None) -> None:
        """Open a new link (backing off after failures), then write what is pending."""
        failures = 0
        try:
            while not self._closed:
                if failures:
                    delay = min(RECONNECT_CAP, RECONNECT_BASE * 2 ** min(failures, 16))
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                try:
                    link = await RespLink.open(
                        self._host, name=self._name, want_run_id=self._want_fence
                    )
                except LOST_CONNECTION as exc:
                    failures += 1
                    self._last_error = exc
                    self._health.lost(self._shard, exc)
                    continue
                except Exception as exc:  # an odd answer, or a bug: said once, then retried
                    failures += 1
                    self._last_error = exc
                    self._health.log.warning(f"connect {self._name}", "%s: %r", self._name, exc)
                    self._health.lost(self._shard, exc)
                    continue
                if self._closed:
                    link.close()
                    return
                self._link = link
                self._fence = bulk(link.run_id[:FENCE_LENGTH])
                self._loop.create_task(self._watch_link(link))
                if failures or error is not None:
                    self.reconnects += 1
                self._health.back(self._shard)
                break
        finally:
            self._task = None
        self._flush()

    def _watch(self) -> None:
        """Fail the calls whose ``retry_timeout`` has passed; re-arm for the next one."""
        self._timer = None
        now = self._loop.time()
        link = self._link
        if link is not None and not link.closed and now < link.last_read + self.retry_timeout:
            # Redis answers (a long queue, not an outage): nobody gives up while it does.
            self._timer = self._loop.call_at(link.last_read + self.retry_timeout, self._watch)
            return
        expired: list[Call] = []
        next_deadline: float | None = None
        queues: list[Any] = [batch for batch, _ in self._in_flight]
        queues += [self._rerun, self._pending]
        for queue in queues:
            for call in queue:
                if call.future.done():
                    continue
                if call.deadline <= now:
                    expired.append(call)
                    continue
                if next_deadline is None or call.deadline < next_deadline:
                    next_deadline = call.deadline
                break  # the calls of a queue were made in order: the rest are younger
        if expired:
            error = self._unreachable()
            self._fail(expired, error)
            if not self.connected:  # they will not be written: free their room now
                kept = deque(call for call in self._pending if not call.future.done())
                dropped = [call for call in self._pending if call.future.done()]
                self._pending = kept
                self._release(dropped)
        if next_deadline is not None and not self._closed:
            self._timer = self._loop.call_at(next_deadline, self._watch)

    def _unreachable(self) -> Unreachable:
        last = self._last_error
        why = f" (last error: {last})" if last is not None and not self.connected else ""
        state = "unreachable" if not self.connected else "not answering"
        return Unreachable(
            f"Redis at {self._host.description} {state} for retry_timeout="
            f"{self.retry_timeout:g} s{why}"
        )

    @staticmethod
    def _fail(calls: Any, error: BaseException) -> None:
        for call in calls:
            if not call.future.done():
                call.future.set_exception(error)


def _ignore(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


__all__ = ["MAX_QUEUED", "Call", "FencedCall", "Pipeline", "Unreachable", "logger"]
