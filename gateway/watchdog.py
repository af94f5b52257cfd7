"""A thread that notices a blocked event loop, and ends the process when a stop cannot happen.

An application that never yields (CPU-bound code or blocking I/O in a coroutine, a ``while
True`` without an ``await``) stops every connection of the process, and the loop cannot even
run the signal handler that would shut it down. So the watch is kept outside the loop:

- the loop sets a heartbeat every ``tick`` seconds (one timer callback, nothing per request);
- a daemon thread looks at the heartbeat as often; when it is more than ``threshold`` seconds
  late it logs a warning with the lag (``--loop-lag-threshold``; at most one line per
  ``WARN_EVERY`` seconds while the loop stays blocked, and one line when it runs again);
- the server's signal handlers are Python-level ones (they run between two bytecodes even
  while the loop is blocked) and tell the watchdog about the stop: if the loop is still
  blocked ``graceful_timeout + EXIT_MARGIN`` seconds after the first SIGTERM/SIGINT (or at
  once after a second one), the thread logs one line saying why and ends the process with
  ``os._exit(EXIT_BLOCKED)``: no lifespan shutdown, no drain (they need the loop).

A kill -9 needs no help; a loop that turns shuts down the ordinary way and the watchdog never
acts. Works alike on asyncio's loop and uvloop: it uses only ``call_later`` and a thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time

from roomcast.metrics import Histogram

logger = logging.getLogger("roomcast.gateway.error")

WARN_EVERY = 10.0  # seconds between two lag warnings of one blocked stretch
EXIT_MARGIN = 2.0  # seconds past graceful_timeout (the drain's own clean-up takes ~1 s)
EXIT_BLOCKED = 70  # EX_SOFTWARE: the process ended itself because its loop never turned
BLOCKED_FOR_EXIT = 1.0  # a loop this late is blocked, not merely busy


class LoopWatchdog:
    """Watches one running loop from a daemon thread; ``start()`` on the loop, ``stop()`` after."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threshold: float,
        graceful: float,
        lag: Histogram | None = None,
    ) -> None:
        """``threshold``: seconds of lag worth a warning (0: no warnings, the exit still works);
        ``graceful``: the server's graceful timeout; ``lag``: observes, on the loop, how late
        each tick's timer ran (the gateway's loop-lag metric)."""
        self.loop = loop
        self.threshold = threshold
        self.graceful = graceful
        self.tick = min(0.25, max(0.02, threshold / 4)) if threshold > 0 else 0.25
        self.last_beat = time.monotonic()
        self.max_lag = 0.0  # the longest lag seen (tests and curious operators)
        self.lag = lag
        self._handle: asyncio.TimerHandle | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop_at: float | None = None
        self._forced = False
        self._announced = False

    def start(self) -> None:
        self.last_beat = time.monotonic()
        self._handle = self.loop.call_later(self.tick, self._beat)
        self._thread = threading.Thread(target=self._watch, name="roomcast-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def stop_requested(self) -> None:
        """A stop signal arrived (called from the signal handler: assignments only)."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        else:
            self._forced = True

    def _beat(self) -> None:
        now = time.monotonic()
        if self.lag is not None:
            self.lag.observe(max(0.0, now - self.last_beat - self.tick))
        self.last_beat = now
        if not self._done.is_set():
            self._handle = self.loop.call_later(self.tick, self._beat)

    def _watch(self) -> None:
        # Signals go to the main thread, whose wait they interrupt, not to this one.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        stall = 0.0  # the lag of the stall under way, 0 when the loop turns
        warned = False  # that stall was reported
        unreported = 0  # stalls left unreported by the rate limit
        last_warning = -WARN_EVERY
        while not self._done.wait(self.tick):
            now = time.monotonic()
            lag = now - self.last_beat - self.tick
            self.max_lag = max(self.max_lag, lag)
            if self.threshold > 0 and lag >= self.threshold:
                if not stall:
                    warned = False
                stall = max(stall, lag)
                if now - last_warning >= WARN_EVERY:
                    more = (
                        f" ({unreported} shorter stalls since the last line)" if unreported else ""
                    )
                    logger.warning(
                        "event loop %sblocked for %.1fs (over %gs) in process %d: an "
                        "application runs without yielding (CPU-bound code or blocking I/O in "
                        "a coroutine?) and every connection waits%s",
                        "still " if warned else "",
                        lag,
                        self.threshold,
                        os.getpid(),
                        more,
                    )
                    last_warning, warned, unreported = now, True, 0
            elif stall:
                if warned:
                    logger.warning("event loop running again after a %.1fs stall", stall)
                else:
                    unreported += 1
                stall = 0.0
            self._maybe_exit(now, lag)

    def _maybe_exit(self, now: float, lag: float) -> None:
        stop_at = self._stop_at
        if stop_at is None or lag < BLOCKED_FOR_EXIT:
            return
        if not self._forced and now < stop_at + self.graceful + EXIT_MARGIN:
            if not self._announced:
                self._announced = True
                logger.warning(
                    "stop signal received while the event loop is blocked: the process ends "
                    "in %.0fs unless the loop turns (at once on a second signal)",
                    stop_at + self.graceful + EXIT_MARGIN - now,
                )
            return
        logger.error(
            "event loop blocked for %.1fs, %.1fs after the stop signal: exiting without a "
            "graceful shutdown (an application never yields)",
            lag,
            now - stop_at,
        )
        for handler in logging.getLogger("roomcast.gateway.error").handlers:
            handler.flush()
        os._exit(EXIT_BLOCKED)
