"""ASGI middleware: ``BaseMiddleware``, the ASGI type aliases and the shared way to refuse.

``BaseMiddleware`` is Channels' base class: it keeps the inner application in ``self.inner``
and, when called, copies the scope (so what it adds never leaks to the outer application) and
awaits ``self.inner(scope, receive, send)``. Subclasses add to the scope before calling up::

    class TenantMiddleware(BaseMiddleware):
        async def __call__(self, scope, receive, send):
            scope = dict(scope, tenant=tenant_for(scope))
            return await self.inner(scope, receive, send)

A middleware instance serves every connection: keep per-connection state in the scope, never
on ``self``.

A middleware that wraps a ``URLRouter`` forwards the router's ``_path_routing`` marker, so
``path("api/", AuthMiddlewareStack(URLRouter([...])))`` matches ``api/`` as a prefix, exactly
like a bare nested router.

:func:`deny` is how routers and middleware here refuse a connection: a WebSocket is closed
before it is accepted (the server answers the handshake with HTTP 403), an HTTP request gets a
plain-text error response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

__all__ = ["ASGIApp", "BaseMiddleware", "Message", "Receive", "Scope", "Send", "deny"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[Any]]


class BaseMiddleware:
    """Base class for ASGI middleware (Channels' ``channels.middleware.BaseMiddleware``).

    Not per-connection: one instance serves every connection, so keep state in the scope.
    """

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    @property
    def _path_routing(self) -> bool:
        # A URLRouter below us makes us a router too: a path() above matches us as a prefix.
        return getattr(self.inner, "_path_routing", False) is True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        """Run the inner application with a copy of the scope (changes never go upstream)."""
        scope = dict(scope)
        return await self.inner(scope, receive, send)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"


async def deny(scope: Scope, receive: Receive, send: Send, *, status: int = 403) -> None:
    """Refuse the connection: close a WebSocket before accepting it, answer HTTP with ``status``.

    For a WebSocket the ``websocket.connect`` event is awaited first, then ``websocket.close`` is
    sent; a server turns a close before accept into an HTTP 403 for the handshake (whatever
    ``status`` says). Other scope types cannot be refused and raise ``ValueError``.
    """
    kind = scope.get("type")
    if kind == "websocket":
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.close"})
        # websocket.disconnect: the client is gone already, there is nothing to refuse.
    elif kind == "http":
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        body = f"{status} {phrase}\n".encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode("ascii")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
    else:
        raise ValueError(f"cannot refuse a connection of scope type {kind!r}")
