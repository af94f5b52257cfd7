"""The chat example's settings with room history on the Redis layer too.

``examples/chat/settings.py`` gives rooms history only on the in-memory layer (its Redis
condition predates the Redis half of issue 13). The e2e tests of resuming on Redis name this
module in ``ROOMCAST_SETTINGS``: the example's settings, plus the same ``chat_*`` history for
whatever backend ``ROOMCAST_LAYER_URL`` names. Once the example drops its condition this adds
nothing (``setdefault``) and the tests can name ``examples.chat.settings`` again.
"""

from __future__ import annotations

import os

from examples.chat.settings import *  # noqa: F403
from examples.chat.settings import CHANNEL_LAYERS

CHANNEL_LAYERS["default"].setdefault("CONFIG", {}).setdefault(
    "history",
    {
        "chat_*": {
            "size": int(os.environ.get("CHAT_HISTORY_SIZE") or 500),
            "ttl": float(os.environ.get("CHAT_HISTORY_TTL") or 3600),
        }
    },
)
