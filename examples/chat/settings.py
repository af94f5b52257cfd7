"""Settings of the chat example: which channel layer the rooms live on, their history, presence.

In memory by default (one process). Point ``ROOMCAST_LAYER_URL`` at Redis
(``redis://127.0.0.1:6379/0``) and several gateway processes share the rooms, their members
and (once the layer keeps history) their history.

Rooms keep their last ``CHAT_HISTORY_SIZE`` messages (default 500) for ``CHAT_HISTORY_TTL``
seconds (default 3600), so a page that reconnects gets what it missed and a newcomer gets the
last ``CHAT_RECENT`` (default 50). History is configured only on a layer that keeps it (its
``extensions`` list ``"history"``): both of roomcast's layers do (on Redis the history
survives a gateway's restart); on a layer that does not, rooms have no history and pages
reconnect without resuming.

Rooms tell their members who comes and goes (``CONFIG["presence"]``), at most every
``CHAT_PRESENCE_INTERVAL`` seconds (default 0.5): a page shows who is online.
"""

from __future__ import annotations

import importlib
import os

from roomcast.layers.settings import layer_config_from_url

CHANNEL_LAYERS = layer_config_from_url(os.environ.get("ROOMCAST_LAYER_URL") or "memory://")
# A busy room bursts: each member's channel must hold a burst while its consumer writes it out
# (the layer drops, and counts, what does not fit). The URL's own ?capacity= wins.
_CONFIG = CHANNEL_LAYERS["default"].setdefault("CONFIG", {})
_CONFIG.setdefault("capacity", 1000)

CHAT_RECENT = int(os.environ.get("CHAT_RECENT") or 50)
ROOM_HISTORY = {
    "chat_*": {
        "size": int(os.environ.get("CHAT_HISTORY_SIZE") or 500),
        "ttl": float(os.environ.get("CHAT_HISTORY_TTL") or 3600),
    }
}
_module, _, _class = CHANNEL_LAYERS["default"]["BACKEND"].rpartition(".")
if "history" in getattr(importlib.import_module(_module), _class).extensions:
    _CONFIG.setdefault("history", ROOM_HISTORY)
_CONFIG.setdefault(
    "presence", {"chat_*": {"interval": float(os.environ.get("CHAT_PRESENCE_INTERVAL") or 0.5)}}
)

# Origins allowed to open the chat's WebSocket (the page itself is served from these hosts).
ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("CHAT_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
    if host.strip()
]
