"""The chat consumer: one WebSocket per member of a room; the room is a channel-layer group.

Rooms keep history (``settings.ROOM_HISTORY``), so the consumer resumes: a page that comes back
with ``?since=<position>`` gets what was said while it was away, then the live conversation
(see :mod:`roomcast.consumers.resume` for the protocol). Every message frame carries its
``position``; the page keeps the last one per room.
"""

from __future__ import annotations

import re
from typing import Any

from roomcast.consumers import AsyncJsonWebsocketConsumer
from roomcast.consumers.resume import ResumableGroupsMixin, position_text

ROOM = re.compile(r"^[A-Za-z0-9._-]{1,50}$")
MAX_MESSAGE = 2000


class ChatConsumer(ResumableGroupsMixin, AsyncJsonWebsocketConsumer):
    """Joins ``chat_<room>``, broadcasts what its client says, relays what the room says."""

    async def connect(self) -> None:
        room = self.scope["url_route"]["kwargs"]["room"]
        if not ROOM.match(room):
            await self.close()  # before accept: the client gets HTTP 403
            return
        self.group = f"chat_{room}"
        # Joined (and the history read) before the handshake completes; the report and the
        # replay follow the accept. Left when the connection ends.
        await self.resume_group(self.group)
        await self.accept()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        message = content.get("message") if isinstance(content, dict) else None
        if isinstance(message, str) and message.strip():
            await self.channel_layer.group_send(
                self.group, {"type": "chat.message", "message": message[:MAX_MESSAGE]}
            )

    async def chat_message(self, event: dict[str, Any]) -> None:
        frame = {"message": event["message"]}
        position = position_text(event)
        if position is not None:
            frame["position"] = position
        await self.send_json(frame)
