"""Defences against abusive HTTP/2 clients that h2 itself does not have.

h2 answers every PING and SETTINGS frame and accepts any number of RST_STREAMs, so a client can
make the server work for free (ping floods, rapid reset: CVE-2019-9512, CVE-2023-44487); and it
buffers a frame's whole declared length before checking it. These two small checks run on what
the connection receives, before and beside h2.
"""

from __future__ import annotations

import time

# Control frames a client may send (PING and its ACK, SETTINGS and its ACK, RST_STREAM,
# PRIORITY, empty DATA, unknown types): a burst, then so many per second (token bucket).
CONTROL_BURST = 1000
CONTROL_RATE = 200.0


class FloodGuard:
    """A token bucket: ``burst`` frames at once, ``rate`` per second sustained."""

    def __init__(self, burst: int = CONTROL_BURST, rate: float = CONTROL_RATE) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def spend(self) -> bool:
        """Take one token; False when the client has sent too many too fast."""
        self.tokens -= 1
        if self.tokens >= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens >= 0


class FrameSizeCheck:
    """Follows frame boundaries in the client's bytes to check each length at its header."""

    __slots__ = ("header", "skip")

    def __init__(self, preface: int) -> None:
        self.skip = preface  # bytes still to pass: the preface, then each frame's payload
        self.header = b""  # a frame header split across reads

    def feed(self, data: bytes, max_size: int) -> bool:
        """False as soon as a frame header declares more than ``max_size`` bytes."""
        pos, end = 0, len(data)
        while pos < end:
            if self.skip:
                step = min(self.skip, end - pos)
                self.skip -= step
                pos += step
                continue
            need = 9 - len(self.header)
            self.header += data[pos : pos + need]
            pos += need
            if len(self.header) < 9:
                return True
            length = int.from_bytes(self.header[:3], "big")
            if length > max_size:
                return False
            self.skip, self.header = length, b""
        return True
