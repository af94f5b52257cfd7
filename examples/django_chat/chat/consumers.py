"""The Channels tutorial's ``ChatConsumer`` on roomcast, with each message signed by its sender.

The sender is the Django user that ``AuthMiddlewareStack`` found in the session cookie
(``scope["user"]``), or ``"anonymous"``.
"""

from __future__ import annotations

import json
from typing import Any

from roomcast.consumers import AsyncWebsocketConsumer

from .rooms import group_name, is_room_name

MAX_MESSAGE = 2000
ANONYMOUS = "anonymous"


class ChatConsumer(AsyncWebsocketConsumer):
    """Joins the room's group, broadcasts what its client says, relays what the room says."""

    async def connect(self) -> None:
        self.room_name: str = self.scope["url_route"]["kwargs"]["room_name"]
        if not is_room_name(self.room_name):
            await self.close()  # before accept: the client gets HTTP 403
            return
        user = self.scope.get("user")
        # The user is loaded already (AuthMiddleware resolves it): no database access here.
        if user is not None and user.is_authenticated:
            self.username: str = user.get_username()
        else:
            self.username = ANONYMOUS
        self.room_group_name = group_name(self.room_name)
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "room_group_name"):
            await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """``{"message": "..."}`` from the client; anything else is ignored."""
        try:
            data: Any = json.loads(text_data) if text_data is not None else None
        except ValueError:
            return
        message = data.get("message") if isinstance(data, dict) else None
        if not isinstance(message, str) or not message.strip():
            return
        await self.channel_layer.group_send(
            self.room_group_name,
            {"type": "chat.message", "message": message[:MAX_MESSAGE], "username": self.username},
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        """A message to the room (``group_send`` type ``chat.message``): relay it to the client."""
        await self.send(
            text_data=json.dumps({"message": event["message"], "username": event["username"]})
        )
