"""The chat example wrapped in a recorder of its scopes: how each request reached the app.

``roomcast serve tests.e2e.h2_chat_app:application`` serves ``examples.chat.asgi:application``
unchanged, and appends one JSON line per HTTP request or WebSocket to the file named by
``ROOMCAST_SCOPE_LOG`` (if set): its ``type``, ``http_version``, ``scheme``, ``path`` and
``client`` (address and port: which TCP connection it came on). The
gateway's access log has no WebSocket lines, so this is how a test sees, from the server's
side, whether a browser's WebSocket came as an HTTP/1.1 Upgrade (``"1.1"``) or as an RFC 8441
extended CONNECT on an HTTP/2 stream (``"2"``).
"""

from __future__ import annotations

import json
import os

from roomcast.consumers.middleware import Receive, Scope, Send

from examples.chat.asgi import application as chat

SCOPE_LOG_ENV = "ROOMCAST_SCOPE_LOG"


def record(scope: Scope) -> None:
    """Append the scope's protocol facts to the file named by ``ROOMCAST_SCOPE_LOG``."""
    path = os.environ.get(SCOPE_LOG_ENV)
    if not path:
        return
    line = {key: scope.get(key) for key in ("type", "http_version", "scheme", "path", "client")}
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\n")


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] in ("http", "websocket"):
        record(scope)
    await chat(scope, receive, send)
