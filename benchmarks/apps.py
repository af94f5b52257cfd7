"""The plain ASGI 3 applications every server runs in the benchmarks (no framework).

- ``benchmarks.apps:hello``: any HTTP request gets ``200 Hello, world!`` (``text/plain``, with
  ``content-length``); a WebSocket is refused (closed before accept, so a 403).
- ``benchmarks.apps:echo``: a WebSocket is accepted and every message is sent back as it came
  (text as text, bytes as bytes); HTTP requests get the hello-world answer, which the harness
  uses to check that a server is up.

Both answer the lifespan protocol (Daphne never sends it; uvicorn and the gateway do), so no
server logs a lifespan failure. Nothing here allocates per request beyond what ASGI needs: the
point is to measure the server, not the app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY = b"Hello, world!"
START: dict[str, Any] = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(BODY)).encode()),
    ],
}
RESPONSE_BODY: dict[str, Any] = {"type": "http.response.body", "body": BODY}


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "http":
        # A fresh dict per message: a server may annotate or keep what it is given.
        await send(dict(START))
        await send(dict(RESPONSE_BODY))
    elif kind == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1000})
    elif kind == "lifespan":
        await lifespan(receive, send)


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind != "websocket":
        await hello(scope, receive, send)
        return
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return  # websocket.disconnect
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
