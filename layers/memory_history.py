"""The in-memory layer's group history: the last messages of each history group, in memory.

Each history group has a record: its epoch (random, made with the record), its last offset and
its retained messages as ``(offset, time sent, encoded message with its position)``, at most
``size`` of them and none older than ``ttl``. The record is made by the group's first
``group_send``, ``group_history`` or ``group_position``; it is forgotten once it holds no
message and nothing used it for ``idle_after`` seconds (the layer's ``group_expiry``), and a
later use starts a new epoch. Without ``ttl`` a record keeps its ``size`` messages for the
life of the layer: give a ``ttl`` to patterns whose group names are made up at will.

Faults: everything lives in this process, so a restart (SIGTERM, kill -9, a crash) loses every
history and the next process starts new epochs: a client resuming with an old position gets
``recovered=False`` and the new, empty, history. ``flush()`` does the same inside a process.
There is no connection to lose, hence nothing to reconnect or fail over.
"""

from __future__ import annotations

from collections import deque

from .history import HistoryPolicy, StreamPosition, new_epoch, stamp, stamp_payload

SWEEP_INTERVAL = 60.0  # seconds between two looks for records to forget, at most


class _Record:
    __slots__ = ("entries", "epoch", "offset", "ttl", "used")

    def __init__(self, policy: HistoryPolicy, now: float) -> None:
        self.epoch = new_epoch()
        self.offset = 0
        self.entries: deque[tuple[int, float, bytes]] = deque(maxlen=policy.size)
        self.ttl = policy.ttl
        self.used = now

    def trim(self, now: float) -> None:
        """Drop the messages older than ``ttl``."""
        if self.ttl is None:
            return
        entries, oldest = self.entries, now - self.ttl
        while entries and entries[0][1] < oldest:
            entries.popleft()


class MemoryHistories:
    """The records of one in-memory layer's history groups; times are ``time.monotonic``."""

    def __init__(self, idle_after: float) -> None:
        self.idle_after = idle_after
        self._records: dict[str, _Record] = {}
        self._last_sweep = 0.0
        self._sweep_every = min(SWEEP_INTERVAL, idle_after)

    def __len__(self) -> int:
        return len(self._records)

    def _record(self, group: str, policy: HistoryPolicy, now: float) -> _Record:
        if now - self._last_sweep >= self._sweep_every:
            self.sweep(now)
        record = self._records.get(group)
        if record is None:
            record = self._records[group] = _Record(policy, now)
        else:
            record.trim(now)
        record.used = now
        return record

    def append(self, group: str, policy: HistoryPolicy, payload: bytes, now: float) -> bytes:
        """Keep the encoded message ``payload`` as the group's next one; returns it stamped
        with its position (what every member gets)."""
        record = self._record(group, policy, now)
        offset = record.offset + 1
        stamped = stamp_payload(payload, stamp(group, record.epoch, offset))
        record.offset = offset
        record.entries.append((offset, now, stamped))
        return stamped

    def read(
        self, group: str, policy: HistoryPolicy, now: float
    ) -> tuple[StreamPosition, list[tuple[int, bytes]]]:
        """The group's current position and its retained messages, oldest first."""
        record = self._record(group, policy, now)
        entries = [(offset, payload) for offset, _, payload in record.entries]
        return StreamPosition(record.epoch, record.offset), entries

    def position(self, group: str, policy: HistoryPolicy, now: float) -> StreamPosition:
        record = self._record(group, policy, now)
        return StreamPosition(record.epoch, record.offset)

    def sweep(self, now: float) -> None:
        """Forget the records that hold no message younger than ``ttl`` and were idle for
        ``idle_after``: O(records), at most every ``SWEEP_INTERVAL`` (or ``idle_after``)."""
        self._last_sweep = now
        cutoff = now - self.idle_after
        for group, record in list(self._records.items()):
            if record.used < cutoff:
                record.trim(now)
                if not record.entries:
                    del self._records[group]

    def clear(self) -> None:
        self._records.clear()
