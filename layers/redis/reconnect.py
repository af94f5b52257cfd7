"""What the layer's connections survive by reconnecting, and how their tasks are stopped."""

from __future__ import annotations

import asyncio
import logging

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

    A task may swallow one ``cancel()`` (``asyncio.wait_for`` on Python 3.11 does, when the
    cancellation lands as what it waits for completes), so it is cancelled again until done.
    A cancellation of our caller still propagates.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("%s ended with %r", task.get_name(), task.exception())
