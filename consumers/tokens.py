"""Users from a token, without Django: ``TokenAuthMiddleware`` and ``get_token``.

Give ``TokenAuthMiddleware`` an async function that takes the scope and returns a user object or
``None``; it sets ``scope["user"]`` to that user, or to ``AnonymousUser()`` (``is_authenticated``
false), or, with ``required=True``, refuses the connection (WebSocket closed before accept →
HTTP 403; HTTP 403)::

    from roomcast.consumers.tokens import TokenAuthMiddleware, get_token

    async def authenticate(scope):
        token = get_token(scope)            # "Authorization: Bearer …", else ?token=…
        if token is None:
            return None
        return await users.by_api_token(token)   # your lookup; None if unknown

    application = ProtocolTypeRouter({
        "websocket": TokenAuthMiddleware(URLRouter(routes), authenticate=authenticate),
    })

``get_token(scope, header="authorization", scheme="Bearer", cookie=None, query_param="token")``
looks in that order: the header (``scheme=None`` takes its whole value), the cookie named
``cookie`` (from ``scope["cookies"]`` or the ``Cookie`` header), the query parameter; pass
``None`` to skip a place. Browsers cannot set headers on a WebSocket, so browser clients send a
cookie or a query parameter; a query string may be written to access logs, so prefer short-lived
tokens there. Instead of ``authenticate=``, a subclass may override ``async authenticate(self,
scope)``. An exception from it propagates (the server answers 500, to a WebSocket handshake
too): errors fail closed. If ``scope["user"]`` is already authenticated (an outer middleware,
e.g. a session, found a user), the middleware leaves it alone, so several can be stacked;
``lifespan`` and ``channel`` scopes pass through untouched.

Roomcast's own (Channels has no token middleware); ``roomcast.consumers.auth`` and
``roomcast.consumers`` re-export these names. The check runs once, at connection time: a
reconnecting client is checked again, and a server restart or kill -9 keeps nothing here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from .middleware import ASGIApp, BaseMiddleware, Receive, Scope, Send, deny
from .sessions import cookie_header, parse_cookie

__all__ = ["AnonymousUser", "Authenticator", "TokenAuthMiddleware", "get_token"]


class AnonymousUser:
    """The user of an unauthenticated connection when there is no Django (like Django's)."""

    id = None
    pk = None
    username = ""
    is_active = False
    is_staff = False
    is_superuser = False
    is_authenticated = False
    is_anonymous = True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, type(self))

    def __hash__(self) -> int:
        return 1

    def __str__(self) -> str:
        return "AnonymousUser"

    def __repr__(self) -> str:
        return "AnonymousUser()"


def get_token(
    scope: Scope,
    *,
    header: str | None = "authorization",
    scheme: str | None = "Bearer",
    cookie: str | None = None,
    query_param: str | None = "token",
) -> str | None:
    """The connection's credential: the header, else the cookie, else the query parameter.

    ``header`` is matched case-insensitively; with ``scheme`` its value must be ``"<scheme>
    <token>"`` (scheme case-insensitive), with ``scheme=None`` the whole value is the token.
    ``cookie`` names a cookie (read from ``scope["cookies"]`` if ``CookieMiddleware`` ran,
    else from the ``Cookie`` header). Empty values count as absent. None if nothing is found.
    """
    if header is not None:
        wanted = header.lower().encode("latin-1")
        for name, raw in scope.get("headers", ()):
            if name.lower() != wanted:
                continue
            value: str = raw.decode("latin-1").strip()
            if scheme is not None:
                given, _, value = value.partition(" ")
                if given.lower() != scheme.lower():
                    continue
                value = value.strip()
            if value:
                return value
    if cookie is not None:
        cookies = scope.get("cookies")
        if cookies is None:
            header_value = cookie_header(scope)
            cookies = parse_cookie(header_value) if header_value is not None else {}
        found = cookies.get(cookie)
        if found:
            return str(found)
    if query_param is not None:
        query = scope.get("query_string", b"")
        text = query.decode("latin-1") if isinstance(query, bytes) else str(query)
        for name, value in parse_qsl(text):
            if name == query_param and value:
                return value
    return None


Authenticator = Callable[[Scope], Awaitable[Any]]


class TokenAuthMiddleware(BaseMiddleware):
    """Sets ``scope["user"]`` from ``await authenticate(scope)``, without Django (see module).

    ``authenticate`` returns a user object or None. None gives ``anonymous()`` (default
    :class:`AnonymousUser`), or with ``required=True`` refuses the connection with 403.
    """

    def __init__(
        self,
        inner: ASGIApp,
        authenticate: Authenticator | None = None,
        *,
        required: bool = False,
        anonymous: Callable[[], Any] = AnonymousUser,
    ) -> None:
        super().__init__(inner)
        self._authenticate = authenticate
        self.required = required
        self.anonymous = anonymous

    async def authenticate(self, scope: Scope) -> Any:
        """The user for this scope, or None; override this or pass ``authenticate=``."""
        if self._authenticate is None:
            raise NotImplementedError(
                f"{type(self).__name__}: pass authenticate=<async function of the scope> "
                "or override authenticate()"
            )
        return await self._authenticate(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        if scope.get("type") not in ("http", "websocket"):
            return await self.inner(scope, receive, send)
        scope = dict(scope)
        if getattr(scope.get("user"), "is_authenticated", False) is True:
            return await self.inner(scope, receive, send)
        user = await self.authenticate(scope)
        if user is None:
            if self.required:
                return await deny(scope, receive, send, status=403)
            user = self.anonymous()
        scope["user"] = user
        return await self.inner(scope, receive, send)
