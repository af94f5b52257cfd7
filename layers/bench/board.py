"""A board of shared counters: how the bench's processes see each other's progress.

One small file mapped into every process of a run (coordinator, members, sender): slot ``i``
is a signed 64-bit count written by exactly one process and read by the others without a
system call. Members publish how many messages they have received; the sender reads that to
keep at most ``--window`` messages in flight (so a run measures sustained throughput, not the
growth of a backlog), and the coordinator reads it for the progress bar and to see a run
drain. Nothing here goes through the layer under test, so the board costs the layer nothing.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from pathlib import Path

SLOTS = 8192
SENT = SLOTS - 1  # the sender's running count of messages sent
RECEIVER_SLOTS = SLOTS - 16  # slots 0 .. RECEIVER_SLOTS-1 count deliveries


class Board:
    """``SLOTS`` int64 counters in a shared file mapping."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with open(self.path, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), SLOTS * 8)
        self.values = memoryview(self._map).cast("q")

    @classmethod
    def create(cls) -> Board:
        """A new zeroed board in a temporary file (in ``/dev/shm`` when there is one)."""
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, name = tempfile.mkstemp(prefix="layer-bench-", suffix=".board", dir=directory)
        with os.fdopen(fd, "wb") as file:
            file.truncate(SLOTS * 8)
        return cls(name)

    def reset(self) -> None:
        for index in range(SLOTS):
            self.values[index] = 0

    def total(self, slots: range | list[int]) -> int:
        values = self.values
        return sum(values[i] for i in slots)

    def close(self, *, unlink: bool = False) -> None:
        self.values.release()
        self._map.close()
        if unlink:
            self.path.unlink(missing_ok=True)
