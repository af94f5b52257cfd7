"""The chat consumer: one WebSocket per member of a room; the room is a channel-layer group."""

from __future__ import annotations

import re
from typing import Any

from roomcast.consumers import AsyncJsonWebsocketConsumer

ROOM = re.compile(r"^[A-Za-z0-9._-]{1,50}$")
MAX_MESSAGE = 2000


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """Joins ``chat_<room>``, broadcasts what its client says, relays what the room says."""

    async def connect(self) -> None:
        room = self.scope["url_route"]["kwargs"]["room"]
        if not ROOM.match(room):
            await self.close()  # before accept: the client gets HTTP 403
            return
        self.group = f"chat_{room}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        message = content.get("message") if isinstance(content, dict) else None
        if isinstance(message, str) and message.strip():
            await self.channel_layer.group_send(
                self.group, {"type": "chat.message", "message": message[:MAX_MESSAGE]}
            )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"message": event["message"]})
