"""What the layer says about Redis being down: once when it starts, once when it ends.

Every connection of a layer (the command pipeline, the inbox reader, the group subscriber, the
plain-channel reader) reports its failures and recoveries here, per host. The first failure of
a host that was up starts an *outage*: one warning line, and the process is reported not ready
(:mod:`roomcast.readiness`) under the layer's name. The first successful connection to every
host ends it: one line with its duration and the number of layer calls that failed meanwhile,
and the process is reported ready again. Other errors are rate-limited: one line per kind per
``interval`` with the number of occurrences, never a traceback per call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from roomcast import readiness

from .reconnect import logger

LOG_INTERVAL = 10.0  # seconds: at most one line per kind of repeated error in this long


class RateLimitedLog:
    """One log line per kind per interval; the lines left out are counted into the next."""

    def __init__(self, log: logging.Logger = logger, interval: float = LOG_INTERVAL) -> None:
        self._log = log
        self.interval = interval
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        if skipped:
            message += " (%d more like it in the last %.0f s)"
            args = (*args, skipped, now - last if last is not None else self.interval)
        self._log.warning(message, *args)


@dataclass
class _Host:
    description: str
    down_since: float | None = None  # monotonic time the outage began
    reason: str = ""
    failed_calls: int = 0  # layer calls that raised LayerConnectionError in this outage
    attempts: int = 0  # connection attempts that failed in this outage


class Health:
    """The up/down state of a layer's hosts, logged and reported to readiness."""

    def __init__(self, name: str, hosts: list[str]) -> None:
        self.name = name  # "channel layer 'default'": the readiness key and the log prefix
        self._hosts = [_Host(description) for description in hosts]
        self.log = RateLimitedLog()
        self.outages = 0  # outages that have begun (for tests and figures)
        self.on_back: Callable[[int], None] | None = None  # an outage of a host has ended

    def is_up(self, shard: int) -> bool:
        return self._hosts[shard].down_since is None

    @property
    def all_up(self) -> bool:
        return all(host.down_since is None for host in self._hosts)

    def down_for(self, shard: int) -> float:
        since = self._hosts[shard].down_since
        return 0.0 if since is None else time.monotonic() - since

    def lost(self, shard: int, error: BaseException) -> None:
        """A connection to ``shard`` failed or could not be made."""
        host = self._hosts[shard]
        if host.down_since is not None:
            host.attempts += 1
            return
        host.down_since = time.monotonic()
        host.reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        host.failed_calls = 0
        host.attempts = 1
        self.outages += 1
        logger.warning(
            "%s: Redis at %s is unreachable (%s); calls wait for it, reconnecting",
            self.name,
            host.description,
            host.reason,
        )
        self._report()

    def back(self, shard: int) -> None:
        """A connection to ``shard`` was made (and greeted)."""
        host = self._hosts[shard]
        if host.down_since is None:
            return
        duration = time.monotonic() - host.down_since
        host.down_since = None
        logger.warning(
            "%s: Redis at %s is back after %.1f s (%d layer call(s) failed meanwhile)",
            self.name,
            host.description,
            duration,
            host.failed_calls,
        )
        self._report()
        if self.on_back is not None:
            self.on_back(shard)

    def call_failed(self, shard: int) -> None:
        """A layer call gave up on ``shard`` and raised LayerConnectionError."""
        host = self._hosts[shard]
        host.failed_calls += 1
        if host.down_since is None:  # e.g. a server that answers too slowly: rate-limited
            self.log.warning(
                f"call failed {shard}",
                "%s: a call to Redis at %s failed",
                self.name,
                host.description,
            )

    def _report(self) -> None:
        down = [host for host in self._hosts if host.down_since is not None]
        if down:
            reasons = "; ".join(f"Redis at {host.description}: {host.reason}" for host in down)
            readiness.report_not_ready(self.name, reasons)
        else:
            readiness.report_ready(self.name)

    def forget(self) -> None:
        """The layer is closed: it no longer holds the process's readiness back."""
        readiness.report_ready(self.name)
