"""Settings of the chat example: which channel layer the rooms live on.

In memory by default (one process). Point ``ROOMCAST_LAYER_URL`` at Redis
(``redis://127.0.0.1:6379/0``) and several gateway processes share the rooms.
"""

from __future__ import annotations

import os

from roomcast.layers.settings import layer_config_from_url

CHANNEL_LAYERS = layer_config_from_url(os.environ.get("ROOMCAST_LAYER_URL") or "memory://")
# A busy room bursts: each member's channel must hold a burst while its consumer writes it out
# (the layer drops, and counts, what does not fit). The URL's own ?capacity= wins.
CHANNEL_LAYERS["default"].setdefault("CONFIG", {}).setdefault("capacity", 1000)

# Origins allowed to open the chat's WebSocket (the page itself is served from these hosts).
ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("CHAT_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
    if host.strip()
]
