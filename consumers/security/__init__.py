"""Origin checks for WebSocket handshakes; the code is in :mod:`.websocket`, Channels' path
(``channels.security.websocket``), and the names are re-exported here."""

from .websocket import AllowedHostsOriginValidator, OriginValidator, WebsocketDenier

__all__ = ["AllowedHostsOriginValidator", "OriginValidator", "WebsocketDenier"]
