"""The gateways of the storm and outage tests: rooms over the Redis layer, and a stats page.

``python -m roomcast.gateway tests.outages.app:application`` with ``OUTAGE_*`` variables (see
:mod:`tests.outages.settings`). WebSocket ``/room/<room>/``: joins the group ``<room>`` and
answers ``{"joined": channel}``; a frame ``{"say": text, "n": n}`` is group_sent to the room and
every member answers its client ``{"heard": text, "n": n}``; on disconnect it leaves. HTTP
``GET /stats``: the layer's :meth:`~roomcast.layers.redis.RedisChannelLayer.stats` and process
id, as JSON; ``POST /publish/<room>/``: one group_send (a 503 when the layer is down).
"""

from __future__ import annotations

import json
import os
from typing import Any

os.environ.setdefault("ROOMCAST_SETTINGS", "tests.outages.settings")

from roomcast.consumers import AsyncHttpConsumer, AsyncJsonWebsocketConsumer
from roomcast.consumers.routing import ProtocolTypeRouter, URLRouter, path


class Room(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()
        await self.send_json({"joined": self.channel_name})

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "room"):
            await self.channel_layer.group_discard(self.room, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.channel_layer.group_send(
            self.room, {"type": "room.say", "text": content.get("say"), "n": content.get("n")}
        )

    async def room_say(self, event: dict[str, Any]) -> None:
        await self.send_json({"heard": event["text"], "n": event["n"]})


class Stats(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        layer: Any = self.channel_layer
        report = {"process": layer.process_id, **layer.stats()}
        await self.send_response(
            200, json.dumps(report).encode(), headers=[(b"content-type", b"application/json")]
        )


class Publish(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        room = self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_send(room, {"type": "room.say", "text": "news", "n": -1})
        await self.send_response(200, b"published\n")


application = ProtocolTypeRouter(
    {
        "websocket": URLRouter([path("room/<str:room>/", Room.as_asgi())]),
        "http": URLRouter(
            [
                path("stats", Stats.as_asgi()),
                path("publish/<str:room>/", Publish.as_asgi()),
            ]
        ),
    }
)
