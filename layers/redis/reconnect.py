"""Reconnect pacing and logging shared by the layer's background readers."""

from __future__ import annotations

import asyncio
import logging
import random
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger("roomcast.layers.redis")

# What a lost, partitioned or restarting server raises through redis-py and the socket below.
LOST_CONNECTION = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
# What a background reader survives by reconnecting (a restarting server may also answer
# LOADING or READONLY errors for a moment).
CONNECTION_ERRORS = (RedisError, OSError, asyncio.TimeoutError, EOFError)


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` until it is done.

    One ``cancel()`` is not enough on Python 3.11: redis-py wraps socket writes in
    ``asyncio.wait_for``, which swallows a cancellation that lands as the write completes, and
    the task would read on. A cancellation of our caller still propagates.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("%s ended with %r", task.get_name(), task.exception())


class Backoff:
    """Exponential backoff with full jitter; logs the first failure and the recovery once."""

    def __init__(self, what: str, *, base: float = 0.05, cap: float = 2.0) -> None:
        self.what = what
        self.base = base
        self.cap = cap
        self.failures = 0
        self._down_since = 0.0

    async def failed(self, exc: BaseException) -> None:
        if self.failures == 0:
            self._down_since = time.monotonic()
            logger.warning("%s: lost Redis (%s); reconnecting", self.what, exc)
        self.failures += 1
        delay = min(self.cap, self.base * 2 ** min(self.failures, 16))
        await asyncio.sleep(random.uniform(delay / 2, delay))

    def succeeded(self) -> None:
        if self.failures:
            logger.warning(
                "%s: Redis is back after %.2f s (%d attempts)",
                self.what,
                time.monotonic() - self._down_since,
                self.failures,
            )
            self.failures = 0
