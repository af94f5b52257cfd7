"""Thumbnails made by a worker process, off the request path.

A view or a WebSocket consumer hands the slow work off and goes on::

    reply_channel = self.channel_name            # or await layer.new_channel()
    await self.channel_layer.send("thumbnails", {
        "type": "thumbnails.make",
        "image": "photos/cat.jpg",
        "size": 128,
        "reply_channel": reply_channel,          # optional: where "thumbnail.done" goes
    })

and one or more workers consume the ``thumbnails`` channel (several share the work)::

    ROOMCAST_LAYER_URL=redis://127.0.0.1:6379/0 \\
        python -m roomcast.consumers.worker examples.thumbnails.app:application thumbnails

The "processing" here only names the thumbnail (and waits ``seconds``, default 0, to stand in
for real work); the reply says which worker process made it. A request without ``image``
raises: the worker logs it and goes on with the next message.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
from typing import Any

from roomcast.consumers import AsyncConsumer
from roomcast.consumers.routing import ChannelNameRouter, ProtocolTypeRouter

__all__ = ["ThumbnailConsumer", "application", "thumbnail_name"]


def thumbnail_name(image: str, size: int) -> str:
    """``photos/cat.jpg``, 128 → ``photos/cat.128x128.jpg``."""
    stem, extension = posixpath.splitext(image)
    return f"{stem}.{size}x{size}{extension}"


class ThumbnailConsumer(AsyncConsumer):
    """Handles ``thumbnails.make`` on the ``thumbnails`` channel."""

    async def thumbnails_make(self, event: dict[str, Any]) -> None:
        image = event["image"]
        if not isinstance(image, str) or not image:
            raise ValueError(f"'image' must be a non-empty str, got {image!r}")
        size = int(event.get("size", 128))
        await asyncio.sleep(float(event.get("seconds", 0)))  # the real work would go here
        reply_channel = event.get("reply_channel")
        if reply_channel is None or self.channel_layer is None:
            return
        await self.channel_layer.send(
            reply_channel,
            {
                "type": "thumbnail.done",
                "image": image,
                "size": size,
                "thumbnail": thumbnail_name(image, size),
                "worker": os.getpid(),
            },
        )


application = ProtocolTypeRouter(
    {"channel": ChannelNameRouter({"thumbnails": ThumbnailConsumer.as_asgi()})}
)
