"""Apps for the operations tests (logs, limits, metrics), as ``tests.gateway.ops_apps:<name>``.

``project_loggers`` logs one line on each of a layer's and a consumer's loggers during its
start-up (what the Redis layer and the consumers do when Redis is down), then serves: ``/boom``
raises (the gateway logs the error with the request's decoded path), a WebSocket is an echo,
anything else answers ``hello``.
"""

from __future__ import annotations

import logging

from roomcast.gateway.config import Receive, Scope, Send

from tests.gateway.apps import drain_body, lifespan, respond


async def project_loggers(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        logging.getLogger("roomcast.layers.redis.test").warning("layer line: Redis unreachable")
        logging.getLogger("roomcast.consumers.test").warning("consumer line: handler failed")
        await lifespan(scope, receive, send)
        return
    if scope["type"] == "websocket":
        while True:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif message["type"] == "websocket.receive":
                reply = {key: message[key] for key in ("text", "bytes") if message.get(key)}
                await send({"type": "websocket.send", **reply})
            else:
                return
    await drain_body(receive)
    if scope["path"].startswith("/boom"):
        raise RuntimeError("boom on purpose")
    await respond(send, b"hello")
