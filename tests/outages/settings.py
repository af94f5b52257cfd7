"""CHANNEL_LAYERS of the outage tests' gateways, from the environment the test sets.

``OUTAGE_REDIS`` (a URL, or a JSON list of hosts for Sentinel), ``OUTAGE_PREFIX``,
``OUTAGE_RETRY_TIMEOUT`` and ``OUTAGE_LIVENESS_TIMEOUT``.
"""

from __future__ import annotations

import json
import os
from typing import Any

_redis = os.environ.get("OUTAGE_REDIS", "redis://127.0.0.1:6379/0")
_hosts: list[Any] = json.loads(_redis) if _redis.startswith("[") else [_redis]
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "roomcast.layers.redis.RedisChannelLayer",
        "CONFIG": {
            "hosts": _hosts,
            "prefix": os.environ.get("OUTAGE_PREFIX", "outage"),
            "capacity": 1000,
            "retry_timeout": float(os.environ.get("OUTAGE_RETRY_TIMEOUT", "5")),
            "liveness_timeout": float(os.environ.get("OUTAGE_LIVENESS_TIMEOUT", "15")),
        },
    }
}
