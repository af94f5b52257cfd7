"""The one switch that said whether the Redis half of issue 13 (resumable groups) was built.

The history tests are written for every backend. The Redis half is built
(``roomcast.layers.redis.history`` and ``healing``): ``REDIS_HISTORY_BUILT`` is True, so the
contract tests and the browser restart test run on Redis too. The switch stays so that a
backend still without history (a third-party one under test) can be skipped from one place.
"""

from __future__ import annotations

import pytest

REDIS_HISTORY_BUILT = True
PENDING_REASON = "Redis half of issue 13 not built yet"


def skip_unless_history(backend: str) -> None:
    """Skip the calling test when ``backend`` ("memory", "redis") does not keep history yet."""
    if backend == "redis" and not REDIS_HISTORY_BUILT:
        pytest.skip(PENDING_REASON)
