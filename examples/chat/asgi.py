"""The chat example's ASGI application: ``roomcast serve examples.chat.asgi:application``.

HTTP: the chat page at ``/`` (one self-contained file: no CDN, works offline) and a health
check at ``/healthz`` (used by the Docker HEALTHCHECK, the compose healthcheck and the
deployment tests). WebSocket: the rooms at ``/ws/chat/<room>/``; every room name reaches the
consumer, which refuses an invalid one with a close code and a reason the page can show (see
:mod:`examples.chat.consumers` for the protocol).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import Any

os.environ.setdefault("ROOMCAST_SETTINGS", "examples.chat.settings")

from roomcast.consumers.middleware import Receive, Scope, Send
from roomcast.consumers.routing import ProtocolTypeRouter, URLRouter, re_path
from roomcast.consumers.security import AllowedHostsOriginValidator
from roomcast.layers import LayerError, get_channel_layer

from . import settings
from .consumers import ChatConsumer

PAGE = (Path(__file__).parent / "static" / "index.html").read_bytes()
HEALTH_PATH = "/healthz"
HEALTH_TIMEOUT = 1.0  # seconds the layer has to carry one message from send to receive

logger = logging.getLogger("examples.chat")


async def layer_health() -> tuple[int, dict[str, Any]]:
    """Carry one message through the channel layer: 200 if it arrives within the timeout.

    The message goes to a throwaway plain channel (``healthz.<random>``), so on the Redis layer
    it makes the whole trip: a push to a list in Redis and a blocking pop from it. A Redis that
    is down, unreachable or too slow gives 503. A message left behind by a timed-out check
    expires with the layer's ``expiry``.
    """
    # Which process answered: in a container the hostname is the container's id.
    report: dict[str, Any] = {"layer": None, "replica": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        layer = get_channel_layer()
    except LayerError as exc:  # a bad CHANNEL_LAYERS / ROOMCAST_LAYER_URL
        logger.warning("health check failed: %s: %s", type(exc).__name__, exc)
        return 503, {"status": "unavailable", **report, "error": type(exc).__name__}
    report["layer"] = type(layer).__name__
    channel = f"healthz.{secrets.token_hex(8)}"
    token = secrets.token_hex(8)
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            await layer.send(channel, {"type": "healthz.ping", "token": token})
            reply = await layer.receive(channel)
    except TimeoutError:
        error = f"no round trip through the channel layer within {HEALTH_TIMEOUT:g} s"
        logger.warning("health check failed: %s", error)
    except Exception as exc:  # whatever stops a message is "unavailable", never a 500
        error = type(exc).__name__  # the details (hosts) go to the log, not to the client
        logger.warning("health check failed: %s: %s", error, exc)
    else:
        if reply.get("token") == token:
            return 200, {"status": "ok", **report}
        error = "the channel layer returned another message"
        logger.warning("health check failed: %s", error)
    return 503, {"status": "unavailable", **report, "error": error}


async def http_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The chat page at ``/``, the health check at ``/healthz``; 404 elsewhere."""
    extra: list[tuple[bytes, bytes]] = []
    if scope["path"] in ("/", "/index.html"):
        status, body, kind = 200, PAGE, b"text/html; charset=utf-8"
        extra.append((b"cache-control", b"no-cache"))
    elif scope["path"] == HEALTH_PATH:
        status, report = await layer_health()
        body, kind = json.dumps(report).encode() + b"\n", b"application/json"
        extra.append((b"cache-control", b"no-store"))
    else:
        status, body, kind = 404, b"Not Found\n", b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", kind),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": AllowedHostsOriginValidator(
            URLRouter([re_path(r"^ws/chat/(?P<room>.*)/$", ChatConsumer.as_asgi())]),
            allowed_hosts=settings.ALLOWED_HOSTS,
        ),
    }
)
