"""Gap healing: the local members of a history group get every message once, in offset order,
across pub/sub interruptions.

Pub/sub keeps no backlog: a process whose subscription is down (a reconnect, ``CLIENT KILL TYPE
pubsub``, a Redis restart, a Sentinel failover) misses what is published meanwhile. For a
history group the missed messages are in the group's stream (:mod:`~roomcast.layers.redis.history`),
so each process keeps, per history group it has members in, the epoch and the last offset it
handed to its members, and:

* **after every confirmed (re)subscription** it reads the stream after that offset and hands the
  range to its members, in order, before anything newer;
* **when an offset jumps** on the subscription (a copy missing between two that arrived) it
  reads the hole the same way;
* copies that arrive meanwhile wait (in offset order) and go after; a copy at or below the last
  offset is a duplicate (it came by two paths: the stream and pub/sub, or the process's own
  send and its published copy) and is dropped. Offsets are the order Redis ran the sends in,
  so every member of every process sees the group's one total order.

A process's own sends are handed to its members from the script's reply, at once when they
are next in line; when they are not (another process's message is still on its way through
pub/sub) they wait for it. The subscription is in Redis's order and carries the process's own
copies too, so a copy that arrives past a hole *proves* the hole: only then, or when the
subscription is down, is the stream read.

The first subscription starts at the group's current position, read once it is confirmed
(``group_add`` returns after that read): messages sent after ``group_add`` returns reach the
new member, as for any group.

**When the stream no longer has the range** (trimmed by ``size`` or ``ttl`` first, or the
history was lost: a new epoch after a restart without persistence or a failover), the members
get what it still has, then go on. The process counts what it could not recover
(:attr:`HealingStats.missed` and :attr:`HealingStats.epochs_lost`, in ``layer.stats()``), and a
member using :class:`~roomcast.consumers.resume.ResumableGroupsMixin` sees the jump (or the new
epoch) and tells its client ``recovered: false``. If the read itself fails (Redis unreachable
for ``retry_timeout``), the waiting copies are handed on in order with the hole left, counted
the same way. Healed messages keep their expiry: one older than ``expiry`` (by its time of
sending) is not delivered, as for any message.

Restarts and kill -9 of *this* process: its members are gone with it; clients resume from the
stream through the consumer (the stream is in Redis, not here).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

from ..base import LayerCounters
from ..history import StreamPosition, stamp, stamp_encoded, stamp_payload
from . import wire
from .health import RateLimitedLog
from .history import Read

_EXPIRY = struct.Struct(">d")
_PLAIN_HEAD = _EXPIRY.size + wire.PROCESS_ID_LENGTH  # expiry | sender, before the payload

MAX_PENDING = 20_000  # copies waiting for a hole before the hole is given up
RETIRED = 8  # epochs remembered as past, per group: their late copies are dropped


class Item(NamedTuple):
    """A copy waiting to be handed on: ``data`` is the stamped payload, or when ``sealed`` the
    payload as it came from Redis (sealed, without its position)."""

    expires: float  # time.monotonic()
    data: bytes
    sealed: bool


class _Offer(NamedTuple):
    epoch: str
    offset: int
    item: Item
    proven: bool  # came through the subscription: a hole before it will not fill by itself


class _Stream:
    """What one process knows of one history group it has members in."""

    __slots__ = (
        "again",
        "early",
        "epoch",
        "group",
        "last",
        "mark",
        "pending",
        "prefix",
        "ready",
        "retired",
    )

    def __init__(self, group: str) -> None:
        self.group = group
        self.prefix = f"{group}:".encode()  # + "<epoch>:<offset>" from the wire: the stamp
        self.epoch: str | None = None  # None: no starting point yet
        self.mark = b""  # b"<epoch>:" of ``epoch``: how its copies' positions start
        self.last = 0  # the offset last handed to the members
        self.pending: dict[int, Item] = {}  # copies past a hole, by offset
        self.early: list[_Offer] | None = None  # a read is under way: copies wait here
        self.again = False  # read once more when this read returns
        self.ready = asyncio.Event()  # the first read has returned
        self.retired: deque[str] = deque(maxlen=RETIRED)

    def follow(self, epoch: str, last: int) -> None:
        self.epoch, self.last = epoch, last
        self.mark = f"{epoch}:".encode()


@dataclass
class HealingStats:
    """What gap healing has done in this process (``layer.stats()["history_*"]``)."""

    reads: int = 0  # stream reads made to start or heal
    healed: int = 0  # messages handed on from the stream (missed on pub/sub)
    missed: int = 0  # messages the stream no longer had (trimmed, expired, unreachable)
    epochs_lost: int = 0  # histories found lost (a new epoch): how much was missed is unknown
    duplicates: int = 0  # copies dropped because they had been handed on already
    stale: int = 0  # late copies of a history already found lost, dropped
    waited: int = 0  # copies that waited for an earlier one (on its way, or read)


class GapHealer:
    """The :class:`_Stream` of each history group with local members (see the module)."""

    def __init__(
        self,
        *,
        deliver: Callable[[str, float, bytes], None],
        read: Callable[[str, StreamPosition | None], Awaitable[Read]],
        unseal: Callable[[bytes], bytes | None],
        subscribed: Callable[[str], bool],
        spawn: Callable[[Awaitable[None]], None],
        expiry: float,
        counters: LayerCounters,
    ) -> None:
        self._deliver = deliver  # (group, expires monotonic, stamped payload): the fan-out
        self._read = read  # the stream after a position (None: the position only)
        self._unseal = unseal
        self._subscribed = subscribed
        self._spawn = spawn
        self._expiry = expiry
        self._counters = counters
        self._streams: dict[str, _Stream] = {}
        self._log = RateLimitedLog()  # a restart loses every group's history at once
        self.stats = HealingStats()

    def __contains__(self, group: str) -> bool:
        return group in self._streams

    def track(self, group: str) -> None:
        """Follow ``group`` (its first local member joins), until :meth:`forget`."""
        if group not in self._streams:
            self._streams[group] = _Stream(group)

    def forget(self, group: str) -> None:
        stream = self._streams.pop(group, None)
        if stream is not None:
            stream.ready.set()

    def clear(self) -> None:
        for group in list(self._streams):
            self.forget(group)

    def restart(self) -> None:
        """A new home loop: reads of the old one are gone; resubscriptions start new ones."""
        for stream in self._streams.values():
            stream.early, stream.again = None, False
            was_ready = stream.ready.is_set()
            stream.ready = asyncio.Event()
            if was_ready:
                stream.ready.set()

    async def started(self, group: str) -> None:
        """Return once ``group``'s first read has returned (its starting point is known); call
        it once subscribed (the confirmation normally starts that read)."""
        stream = self._streams.get(group)
        if stream is not None:
            if not stream.ready.is_set() and stream.early is None:
                self._sync(stream)
            await stream.ready.wait()

    # What arrives -------------------------------------------------------------------------

    def on_subscribed(self, group: str) -> None:
        """The subscription to ``group`` is confirmed (first time or again): read the stream."""
        stream = self._streams.get(group)
        if stream is not None:
            self._sync(stream)

    def on_published(self, group: str, data: bytes) -> bool:
        """A history message from the subscription (see :mod:`~roomcast.layers.redis.history`
        for its bytes); False when ``group`` is not followed here. Raises ``ValueError`` for
        bytes that are not such a message."""
        stream = self._streams.get(group)
        if stream is None:
            return False
        end = 2 + data[1]
        position = data[2:end]
        mark = stream.mark
        try:
            (expires,) = _EXPIRY.unpack_from(data, end)
            if mark and position.startswith(mark):
                offset = int(position[len(mark) :])
                if offset == stream.last + 1 and stream.early is None:
                    self._next_in_line(stream, offset, position, expires, data[end + _PLAIN_HEAD :])
                    return True
                epoch = stream.epoch
            else:
                raw, _, digits = position.rpartition(b":")
                epoch, offset = raw.decode("ascii"), int(digits)
            if not epoch or not digits_only(position):
                raise ValueError(f"bad position {position[:80]!r}")
        except (ValueError, struct.error) as exc:
            raise ValueError(f"malformed history message: {exc}") from None
        item = Item(time.monotonic() + (expires - time.time()), data[end + _PLAIN_HEAD :], True)
        self._offer(stream, _Offer(epoch, offset, item, True))
        return True

    def _next_in_line(
        self, stream: _Stream, offset: int, position: bytes, expires: float, sealed: bytes
    ) -> None:
        """The common case, kept short: the copy that comes next, handed on at once."""
        stream.last = offset
        remaining = expires - time.time()
        if remaining <= 0:
            self._counters.expired += 1
        else:
            payload = self._unseal(sealed)
            if payload is not None:
                try:
                    data = stamp_encoded(payload, stream.prefix + position)
                except (ValueError, IndexError):
                    self._counters.rejected += 1
                else:
                    self._deliver(stream.group, time.monotonic() + remaining, data)
        if stream.pending:
            self._drain(stream)

    def on_sent(self, group: str, epoch: str, offset: int, expires: float, stamped: bytes) -> None:
        """This process's own send, as the script answered it."""
        stream = self._streams.get(group)
        if stream is not None:
            self._offer(stream, _Offer(epoch, offset, Item(expires, stamped, False), False))

    # Ordering -----------------------------------------------------------------------------

    def _offer(self, stream: _Stream, offer: _Offer) -> None:
        if stream.early is not None:
            if len(stream.early) < MAX_PENDING:  # else: read from the stream after this read
                stream.early.append(offer)
            return
        epoch, offset = offer.epoch, offer.offset
        if epoch != stream.epoch:
            if epoch in stream.retired:
                self.stats.stale += 1  # a late copy of a history already found lost
                return
            if stream.epoch is None:  # no starting point (its read failed): start here
                stream.follow(epoch, offset - 1)
            else:
                self._epoch_lost(stream, epoch)
        last = stream.last
        if offset <= last:
            self.stats.duplicates += 1
            return
        if offset == last + 1:
            stream.last = offset
            self._hand_on(stream, offset, offer.item)
            if stream.pending:
                self._drain(stream)
            return
        stream.pending[offset] = offer.item
        self.stats.waited += 1
        if len(stream.pending) > MAX_PENDING:
            self._give_up(stream)
        elif offer.proven or not self._subscribed(stream.group):
            self._sync(stream)

    def _drain(self, stream: _Stream) -> None:
        """Hand on the waiting copies that are next in line."""
        pending = stream.pending
        for offset in [offset for offset in pending if offset <= stream.last]:
            del pending[offset]
        while pending:
            item = pending.pop(stream.last + 1, None)
            if item is None:
                return
            stream.last += 1
            self._hand_on(stream, stream.last, item)

    def _give_up(self, stream: _Stream) -> None:
        """Hand on every waiting copy in order, leaving the holes (counted as missed)."""
        for offset in sorted(stream.pending):
            if offset > stream.last:
                self.stats.missed += offset - stream.last - 1
                stream.last = offset
                self._hand_on(stream, offset, stream.pending[offset])
        stream.pending.clear()

    def _epoch_lost(self, stream: _Stream, epoch: str) -> None:
        """The history ``stream`` followed is gone (a new epoch): start over in ``epoch``."""
        self._give_up(stream)
        assert stream.epoch is not None
        stream.retired.append(stream.epoch)
        self._log.warning(
            "epoch lost",
            "group %s: its history was lost (epoch %s is now %s): messages sent meanwhile "
            "cannot be recovered",
            stream.group,
            stream.epoch,
            epoch,
        )
        stream.follow(epoch, 0)
        self.stats.epochs_lost += 1

    def _hand_on(self, stream: _Stream, offset: int, item: Item) -> None:
        if item.expires <= time.monotonic():
            self._counters.expired += 1
            return
        data = item.data
        if item.sealed:
            payload = self._unseal(data)
            if payload is None:
                return  # counted in rejected by unseal
            try:
                data = stamp_payload(payload, stamp(stream.group, str(stream.epoch), offset))
            except (ValueError, IndexError):
                self._counters.rejected += 1
                return
        self._deliver(stream.group, item.expires, data)

    # Reading the stream -------------------------------------------------------------------

    def _sync(self, stream: _Stream) -> None:
        if stream.early is not None:
            stream.again = True  # a read is under way: one more after it
            return
        stream.early = []
        self._spawn(self._run_sync(stream))

    async def _run_sync(self, stream: _Stream) -> None:
        group = stream.group
        try:
            while True:
                stream.again = False
                since = None if stream.epoch is None else StreamPosition(stream.epoch, stream.last)
                self.stats.reads += 1
                try:
                    read = await self._read(group, since)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # unreachable, or a reply we cannot read
                    if self._streams.get(group) is not stream:
                        return
                    self._log.warning(
                        "read failed",
                        "group %s: cannot read its history to fill a gap (%s); what waits is "
                        "handed on as it is",
                        group,
                        exc,
                    )
                    self._give_up(stream)
                    break
                if self._streams.get(group) is not stream:
                    return  # forgotten meanwhile
                self._apply(stream, since, read)
                if not stream.again:
                    break
        except asyncio.CancelledError:
            stream.early = None
            raise
        early, stream.early = stream.early or [], None
        for offer in early:
            self._offer(stream, offer)
        stream.ready.set()

    def _apply(self, stream: _Stream, since: StreamPosition | None, read: Read) -> None:
        position = read.position
        if since is None:
            if stream.epoch is None:  # a new member's starting point: the current position
                stream.follow(position.epoch, position.offset)
            return
        if position.epoch != stream.epoch:
            self._epoch_lost(stream, position.epoch)
        # Every offset up to the position is in the answer, waiting here, or gone for good.
        answer = {entry.offset: entry for entry in read.entries if entry.offset > stream.last}
        pending = stream.pending
        waiting = [offset for offset in pending if stream.last < offset <= position.offset]
        now_wall, now = time.time(), time.monotonic()
        for offset in sorted({*answer, *waiting}):
            if offset > stream.last + 1:
                self.stats.missed += offset - stream.last - 1
            stream.last = offset
            item = pending.pop(offset, None)
            if item is None:
                entry = answer[offset]
                self.stats.healed += 1
                item = Item(now + (entry.sent + self._expiry - now_wall), entry.sealed, True)
            self._hand_on(stream, offset, item)
        if position.offset > stream.last:  # the rest is no longer there (past its ttl)
            self.stats.missed += position.offset - stream.last
            stream.last = position.offset
        self._drain(stream)


def digits_only(position: bytes) -> bool:
    """Whether ``"<epoch>:<offset>"`` ends in a plain decimal offset (``int()`` would take
    ``+1``, `` 1`` or ``1_0`` too)."""
    return position.rpartition(b":")[2].isdigit()


__all__ = ["GapHealer", "HealingStats", "Item"]
