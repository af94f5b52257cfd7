"""The chat's WebSocket routes (Channels' ``routing.py``, with roomcast's ``path``)."""

from __future__ import annotations

from roomcast.consumers.routing import path

from . import consumers

websocket_urlpatterns = [
    path("ws/chat/<str:room_name>/", consumers.ChatConsumer.as_asgi()),
]
