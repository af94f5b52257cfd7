"""The chat example's ASGI application: ``gateway examples.chat.asgi:application``."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("ROOMCAST_SETTINGS", "examples.chat.settings")

from consumers.middleware import Receive, Scope, Send
from consumers.routing import ProtocolTypeRouter, URLRouter, path
from consumers.security import AllowedHostsOriginValidator

from . import settings
from .consumers import ChatConsumer

PAGE = (Path(__file__).parent / "static" / "index.html").read_bytes()


async def page(scope: Scope, receive: Receive, send: Send) -> None:
    """The chat page at ``/``; 404 elsewhere."""
    if scope["path"] in ("/", "/index.html"):
        status, body, kind = 200, PAGE, b"text/html; charset=utf-8"
    else:
        status, body, kind = 404, b"Not Found\n", b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


application = ProtocolTypeRouter(
    {
        "http": page,
        "websocket": AllowedHostsOriginValidator(
            URLRouter([path("ws/chat/<str:room>/", ChatConsumer.as_asgi())]),
            allowed_hosts=settings.ALLOWED_HOSTS,
        ),
    }
)
