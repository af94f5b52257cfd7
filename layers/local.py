"""Process-local state: channel buffers with waiting receivers, and group membership tables.

The in-memory layer is nothing but these two; the Redis layer uses them for the channels that
live in its process, so that a message reaching a process (one copy per process) is fanned out
to that process's members here, without another trip to Redis.

Buffers hold encoded bytes (see :mod:`roomcast.layers.serializers`) with an expiry time; the clock
is
``time.monotonic`` passed in by the caller, so one reading serves a whole fan-out. A fan-out of
a message whose values are all immutable (str, bytes, numbers, booleans, None: what chat
messages are) buffers the message decoded once instead (:func:`shareable`), and each receiver
gets its own shallow copy, which is then a full copy: copying a flat dict costs a sixth of
decoding it again for every member.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias

from .base import LayerCounters

Payload: TypeAlias = "bytes | dict[str, Any]"
"""What a buffer holds: encoded bytes, or a flat decoded message that is copied per receiver."""

_IMMUTABLE = frozenset({str, bytes, int, float, bool, type(None)})


def shareable(payload: bytes, decode: Callable[[bytes], dict[str, Any]], members: int) -> Payload:
    """What a fan-out to ``members`` local channels buffers: the message decoded once when all
    its values are immutable, else (or for one member, or undecodable bytes) ``payload``."""
    if members < 2:
        return payload
    try:
        message = decode(payload)
    except Exception:  # the receivers decode it themselves, and count it rejected
        return payload
    for value in message.values():
        if value.__class__ not in _IMMUTABLE:
            return payload
    return message


def unpack(payload: Payload, decode: Callable[[bytes], dict[str, Any]]) -> dict[str, Any]:
    """A receiver's own message from what a buffer held."""
    if isinstance(payload, dict):
        return payload.copy()
    return decode(payload)


class _Channel:
    __slots__ = ("buffer", "capacity", "waiters")

    def __init__(self, capacity: int) -> None:
        self.buffer: deque[tuple[float, Payload]] = deque()
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.capacity = capacity

    def drop_expired(self, now: float) -> int:
        buffer = self.buffer
        dropped = 0
        while buffer and buffer[0][0] < now:
            buffer.popleft()
            dropped += 1
        return dropped

    def wake_one(self) -> None:
        """Wake the first receiver still waiting; it takes the oldest message itself."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class LocalChannels:
    """Bounded FIFO buffers for the channels of one process, with async receivers."""

    def __init__(self, get_capacity: Callable[[str], int], counters: LayerCounters) -> None:
        self._channels: dict[str, _Channel] = {}
        self._get_capacity = get_capacity
        self._counters = counters
        self._last_sweep = 0.0

    def __len__(self) -> int:
        return len(self._channels)

    def __contains__(self, name: str) -> bool:
        return name in self._channels

    def _channel(self, name: str) -> _Channel:
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel(self._get_capacity(name))
        return channel

    def put(self, name: str, expires: float, payload: Payload, now: float) -> bool:
        """Buffer one message; False (and nothing buffered) if the channel is full."""
        channel = self._channel(name)
        buffer = channel.buffer
        if len(buffer) >= channel.capacity:
            self._counters.expired += channel.drop_expired(now)
            if len(buffer) >= channel.capacity:
                return False
        buffer.append((expires, payload))
        if channel.waiters:
            channel.wake_one()
        return True

    def put_many(self, names: list[str], expires: float, payload: Payload, now: float) -> int:
        """:meth:`put` to each of ``names`` (one fan-out); returns how many were full."""
        channels = self._channels
        dropped = 0
        for name in names:
            channel = channels.get(name)
            if channel is None:
                channel = channels[name] = _Channel(self._get_capacity(name))
            buffer = channel.buffer
            if len(buffer) >= channel.capacity:
                self._counters.expired += channel.drop_expired(now)
                if len(buffer) >= channel.capacity:
                    dropped += 1
                    continue
            buffer.append((expires, payload))
            if channel.waiters:
                channel.wake_one()
        return dropped

    def take(self, name: str, now: float) -> Payload | None:
        """The oldest unexpired message of ``name`` if one is buffered; never waits.

        The fast path of a receive: a consumer that is behind takes its backlog without a
        future or a trip through the event loop per message.
        """
        channel = self._channels.get(name)
        if channel is None:
            return None
        buffer = channel.buffer
        while buffer:
            expires, payload = buffer.popleft()
            if expires >= now:
                self._counters.delivered += 1
                return payload
            self._counters.expired += 1
        return None

    def is_full(self, name: str, now: float) -> bool:
        channel = self._channels.get(name)
        if channel is None or len(channel.buffer) < channel.capacity:
            return False
        self._counters.expired += channel.drop_expired(now)
        return len(channel.buffer) >= channel.capacity

    async def get(self, name: str, clock: Callable[[], float]) -> Payload:
        """Wait for and take the oldest unexpired message of ``name``.

        Cancellation is safe: a receiver cancelled after being woken passes the wake-up on, so
        no message is stranded while another receiver waits. A channel whose last receiver
        leaves that way is forgotten at once; one that is merely idle goes at the next sweep
        (a consumer calls receive again and again: keeping its channel saves remaking it).
        """
        channel = self._channel(name)
        while True:
            buffer = channel.buffer
            if buffer:
                now = clock()
                while buffer:
                    expires, payload = buffer.popleft()
                    if expires >= now:
                        self._counters.delivered += 1
                        return payload
                    self._counters.expired += 1
            waiter = asyncio.get_running_loop().create_future()
            channel.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.cancelled():  # never woken: still queued
                    with contextlib.suppress(ValueError):
                        channel.waiters.remove(waiter)
                elif channel.buffer:  # woken but leaving: pass the wake-up on
                    channel.wake_one()
                idle = not channel.buffer and not channel.waiters
                if idle and self._channels.get(name) is channel:
                    del self._channels[name]
                raise

    def buffered(self, now: float) -> dict[str, list[tuple[float, Payload]]]:
        """Introspection: every channel holding unexpired messages -> them, oldest first.

        Reads only: nothing is taken, dropped or counted.
        """
        found: dict[str, list[tuple[float, Payload]]] = {}
        for name, channel in self._channels.items():
            items = [item for item in channel.buffer if item[0] >= now]
            if items:
                found[name] = items
        return found

    def discard(self, name: str) -> None:
        """Forget a channel's buffered messages (its receivers keep waiting)."""
        channel = self._channels.get(name)
        if channel is not None:
            channel.buffer.clear()

    def sweep(self, now: float, interval: float) -> None:
        """At most every ``interval`` seconds, free channels that hold only expired messages."""
        if now - self._last_sweep < interval:
            return
        self._last_sweep = now
        for name, channel in list(self._channels.items()):
            self._counters.expired += channel.drop_expired(now)
            if not channel.buffer and not channel.waiters:
                del self._channels[name]

    def clear(self) -> None:
        for channel in self._channels.values():
            channel.buffer.clear()


class LocalGroups:
    """group -> {channel: time of the last group_add}; memberships lapse after ``expiry``."""

    def __init__(self, expiry: float) -> None:
        self.expiry = expiry
        self._groups: dict[str, dict[str, float]] = {}

    def __contains__(self, group: str) -> bool:
        return group in self._groups

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def add(self, group: str, channel: str, now: float) -> bool:
        """Add or renew; True if ``group`` had no members here before."""
        members = self._groups.get(group)
        if members is None:
            self._groups[group] = {channel: now}
            return True
        members[channel] = now
        return False

    def discard(self, group: str, channel: str) -> bool:
        """Remove; True if ``group`` has no members here any more."""
        members = self._groups.get(group)
        if members is None:
            return False
        members.pop(channel, None)
        if not members:
            del self._groups[group]
            return True
        return False

    def __len__(self) -> int:
        """The number of groups with members here."""
        return len(self._groups)

    def memberships(self) -> Iterator[tuple[str, str, float]]:
        """Every ``(group, channel, time of its last group_add)``, for a re-recording."""
        for group, members in list(self._groups.items()):
            for channel, added in list(members.items()):
                yield group, channel, added

    def count(self) -> int:
        """The number of memberships here, over all groups."""
        return sum(len(members) for members in self._groups.values())

    def members(self, group: str, now: float) -> list[str]:
        """The live members of ``group``; lapsed memberships are removed on the way."""
        members = self._groups.get(group)
        if not members:
            return []
        cutoff = now - self.expiry
        live = [channel for channel, added in members.items() if added >= cutoff]
        if len(live) != len(members):
            for channel in [c for c, added in members.items() if added < cutoff]:
                del members[channel]
            if not members:
                del self._groups[group]
        return live

    def joined(self, group: str, now: float) -> dict[str, float]:
        """Introspection: the live members of ``group`` -> when each last joined (the clock
        passed to :meth:`add`), in first-joining order; lapsed ones are skipped, not removed."""
        cutoff = now - self.expiry
        members = self._groups.get(group, {})
        return {channel: added for channel, added in members.items() if added >= cutoff}

    def counts(self) -> tuple[int, int]:
        """(groups, memberships), lapsed ones included until they are next looked at; for the
        metrics gauges, safe to call from another thread (no Python-level dict iteration)."""
        tables = list(self._groups.values())
        return len(tables), sum(map(len, tables))

    def clear(self) -> None:
        self._groups.clear()
