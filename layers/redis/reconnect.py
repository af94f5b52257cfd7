"""Reconnect pacing and logging shared by the layer's background readers."""

from __future__ import annotations

import asyncio
import logging
import random
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger("layers.redis")

# What a lost, partitioned or restarting server raises through redis-py and the socket below.
LOST_CONNECTION = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
# What a background reader survives by reconnecting (a restarting server may also answer
# LOADING or READONLY errors for a moment).
CONNECTION_ERRORS = (RedisError, OSError, asyncio.TimeoutError, EOFError)


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
