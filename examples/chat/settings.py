"""Settings of the chat example: which channel layer the rooms live on, and their history.

In memory by default (one process). Point ``ROOMCAST_LAYER_URL`` at Redis
(``redis://127.0.0.1:6379/0``) and several gateway processes share the rooms.

Rooms keep their last ``CHAT_HISTORY_SIZE`` messages (default 500) for ``CHAT_HISTORY_TTL``
seconds (default 3600), so a page that reconnects gets what it missed. In memory the history
lives as long as the process; on Redis it survives a gateway's restart (and, with Redis's own
persistence, Redis's).
"""

from __future__ import annotations

import os

from roomcast.layers.settings import layer_config_from_url

CHANNEL_LAYERS = layer_config_from_url(os.environ.get("ROOMCAST_LAYER_URL") or "memory://")
# A busy room bursts: each member's channel must hold a burst while its consumer writes it out
# (the layer drops, and counts, what does not fit). The URL's own ?capacity= wins.
CHANNEL_LAYERS["default"].setdefault("CONFIG", {}).setdefault("capacity", 1000)

ROOM_HISTORY = {
    "chat_*": {
        "size": int(os.environ.get("CHAT_HISTORY_SIZE") or 500),
        "ttl": float(os.environ.get("CHAT_HISTORY_TTL") or 3600),
    }
}
CHANNEL_LAYERS["default"]["CONFIG"].setdefault("history", ROOM_HISTORY)

# Origins allowed to open the chat's WebSocket (the page itself is served from these hosts).
ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("CHAT_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
    if host.strip()
]
