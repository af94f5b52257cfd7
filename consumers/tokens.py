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

Tokens that expire
------------------
``authenticate`` may return ``(user, expires_at)`` instead of ``user``: ``expires_at`` is a Unix
time in seconds (a JWT's ``exp``; the middleware's ``clock``, default :func:`time.time`) or a
timezone-aware :class:`~datetime.datetime`; ``None`` means it does not expire. Then:

* a token already expired when the connection starts is refused whatever ``required`` says:
  HTTP gets **401** with ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750); a
  WebSocket is accepted and closed at once with :data:`TOKEN_EXPIRED_CODE` (**4001**, reason
  ``"token expired"``), because a browser cannot read the status of a refused handshake but
  can read a close code;
* otherwise ``scope["token_expiry"]`` is a :class:`TokenExpiry`. A consumer with a
  ``token_expired`` handler (the WebSocket consumers have one) gets a ``{"type":
  "token.expired", "expires_at": ...}`` message, in turn with its other messages, when the
  token expires; the default closes with 4001. An HTTP request is checked once, when it
  arrives: a response in progress (a long poll) runs on unless its consumer defines
  ``token_expired`` too.

Before it expires, the client may send a new token and the consumer renews the connection
with ``await self.refresh_token(token)`` (sync consumers: ``self.refresh_token(token)``). That
runs the same ``authenticate`` on the connection's scope with ``scope["refresh_token"] =
token`` (:func:`get_token` returns it first, so an authenticate built on ``get_token`` needs no
change), and returns True and re-arms the expiry if it gives the **same user** (equal ``pk``
when both have one, as Django users do; else ``==``) with an expiry still ahead (or none);
False, leaving the old expiry, if the token is refused, already expired or someone else's. For JSON
consumers we suggest this shape (nothing intercepts it; your ``receive_json`` handles it)::

    # client -> server                    server -> client
    {"type": "token.refresh",             {"type": "token.refreshed", "expires_at": 1767225600}
     "token": "eyJ..."}                   {"type": "token.refused"}

    async def receive_json(self, content):
        if content.get("type") == "token.refresh":
            if await self.refresh_token(str(content.get("token"))):
                expiry = self.scope["token_expiry"].expires_at
                await self.send_json({"type": "token.refreshed", "expires_at": expiry})
            else:
                await self.send_json({"type": "token.refused"})

Pass ``clock=`` and ``sleep=`` (an async function of seconds) to control time in tests. The
timer re-reads the clock at least every 30 s, so a wall-clock step is noticed within that.

Roomcast's own (Channels has no token middleware); ``roomcast.consumers.auth`` and
``roomcast.consumers`` re-export ``TokenAuthMiddleware`` and ``get_token`` (``auth`` also
``AnonymousUser``). The check runs at connection time and expiries
are timers in the connection's consumer: a reconnecting client is checked again, and a server
restart or kill -9 keeps nothing here (the client reconnects with its current token).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from .middleware import ASGIApp, BaseMiddleware, Message, Receive, Scope, Send, deny
from .sessions import cookie_header, parse_cookie

__all__ = [
    "REFRESH_TOKEN_KEY",
    "TOKEN_EXPIRED_CODE",
    "AnonymousUser",
    "Authenticator",
    "TokenAuthMiddleware",
    "TokenExpiry",
    "get_token",
]

logger = logging.getLogger("roomcast.consumers")

#: The WebSocket close code for "your token expired" (the private range 4000-4999).
TOKEN_EXPIRED_CODE = 4001
#: The scope key holding the new token while ``authenticate`` checks a refresh.
REFRESH_TOKEN_KEY = "refresh_token"
MAX_SLEEP = 30.0  # the expiry timer re-reads the clock at least this often

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]


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
    While a connection refreshes its token, the new token (``scope["refresh_token"]``) comes
    first.
    """
    refreshing = scope.get(REFRESH_TOKEN_KEY)
    if isinstance(refreshing, str) and refreshing:
        return refreshing
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


def _expiry_time(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"authenticate returned a naive datetime expiry {value!r}: give it a timezone "
                f"(datetime.now(UTC) + ...) or return a Unix time in seconds"
            )
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value):
        return float(value)
    raise TypeError(
        f"authenticate returned an expiry of {type(value).__name__} {value!r}: expected a Unix "
        f"time in seconds, an aware datetime or None"
    )


def split_result(result: Any) -> tuple[Any, float | None]:
    """What ``authenticate`` returned → ``(user or None, expires_at or None)``.

    A 2-tuple is ``(user, expires_at)``; anything else is the user itself (no expiry).
    """
    if isinstance(result, tuple):
        if len(result) != 2:
            raise TypeError(
                f"authenticate returned a tuple of {len(result)} items: return a user, None, "
                f"or (user, expires_at)"
            )
        user, expires_at = result
        return user, _expiry_time(expires_at) if user is not None else None
    return result, None


def _same_user(old: Any, new: Any) -> bool:
    old_pk, new_pk = getattr(old, "pk", None), getattr(new, "pk", None)
    if old_pk is not None and new_pk is not None:
        return bool(old_pk == new_pk) and type(old) is type(new)
    return bool(old == new)


async def _first_of(*waits: Awaitable[Any]) -> None:
    """Wait until one of ``waits`` is done; cancel the rest (and all of them if cancelled)."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class TokenExpiry:
    """``scope["token_expiry"]``: when the connection's token expires, and its renewal.

    ``expires_at`` (the middleware's clock, seconds) moves on with each accepted
    :meth:`refresh`; ``user`` is the user it was issued to.
    """

    def __init__(
        self,
        middleware: TokenAuthMiddleware,
        scope: Scope,
        user: Any,
        expires_at: float | None,
    ) -> None:
        self._middleware = middleware
        self._scope = dict(scope)  # what authenticate saw; a refresh adds the new token to it
        self.user = user
        self.expires_at = expires_at
        self._changed = asyncio.Event()
        self._told: float | None = None  # the expiry already announced

    @property
    def remaining(self) -> float | None:
        """Seconds left (0 when expired); None if the token no longer expires."""
        if self.expires_at is None:
            return None
        return max(0.0, self.expires_at - self._middleware.clock())

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= self._middleware.clock()

    async def refresh(self, token: str, scope: Scope | None = None) -> bool:
        """Run ``authenticate`` with ``scope["refresh_token"] = token``; True and re-armed if it
        gives the same user with a later (or no) expiry, else False and nothing changes.
        ``scope`` (the consumer's) gets the refreshed ``user``."""
        if not isinstance(token, str) or not token:
            return False
        middleware = self._middleware
        result = await middleware.authenticate({**self._scope, REFRESH_TOKEN_KEY: token})
        user, expires_at = split_result(result)
        if user is None or (expires_at is not None and expires_at <= middleware.clock()):
            return False
        if not _same_user(self.user, user):
            logger.warning(
                "token refresh refused on %s: the new token is another user's",
                self._scope.get("path"),
            )
            return False
        self.user = user
        self.expires_at = expires_at
        if scope is not None:
            scope["user"] = user
        self._changed.set()
        return True

    async def expired_message(self) -> Message:
        """Return ``{"type": "token.expired", ...}`` once the token expires (once per expiry);
        a consumer awaits this next to its other sources."""
        clock, sleep = self._middleware.clock, self._middleware.sleep
        while True:
            self._changed.clear()
            expires_at = self.expires_at
            if expires_at is None or expires_at == self._told:
                await self._changed.wait()  # told already (or never expires): wait for a refresh
                continue
            delay = expires_at - clock()
            if delay <= 0:
                self._told = expires_at
                return {"type": "token.expired", "expires_at": expires_at}
            await _first_of(sleep(min(delay, MAX_SLEEP)), self._changed.wait())


async def refuse_expired(scope: Scope, receive: Receive, send: Send) -> None:
    """An expired token: HTTP 401 (RFC 6750's ``invalid_token``); a WebSocket is accepted and
    closed with 4001, the one answer a browser can read."""
    if scope["type"] == "http":
        body = b"401 Unauthorized: the token expired\n"
        challenge = b'Bearer error="invalid_token", error_description="the token expired"'
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode("ascii")),
                    (b"www-authenticate", challenge),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # the client is gone already
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": TOKEN_EXPIRED_CODE, "reason": "token expired"})


class TokenAuthMiddleware(BaseMiddleware):
    """Sets ``scope["user"]`` from ``await authenticate(scope)``, without Django (see module).

    ``authenticate`` returns a user object, ``(user, expires_at)``, or None. None gives
    ``anonymous()`` (default :class:`AnonymousUser`), or with ``required=True`` refuses the
    connection with 403. An expiry puts a :class:`TokenExpiry` in ``scope["token_expiry"]``;
    ``clock`` (seconds) and ``sleep`` are the time it is measured with.
    """

    def __init__(
        self,
        inner: ASGIApp,
        authenticate: Authenticator | None = None,
        *,
        required: bool = False,
        anonymous: Callable[[], Any] = AnonymousUser,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(inner)
        self._authenticate = authenticate
        self.required = required
        self.anonymous = anonymous
        self.clock = clock
        self.sleep = sleep

    async def authenticate(self, scope: Scope) -> Any:
        """The user for this scope, ``(user, expires_at)``, or None; override this or pass
        ``authenticate=``."""
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
        user, expires_at = split_result(await self.authenticate(scope))
        if user is None:
            if self.required:
                return await deny(scope, receive, send, status=403)
            user = self.anonymous()
        elif expires_at is not None:
            if expires_at <= self.clock():
                return await refuse_expired(scope, receive, send)
            scope["token_expiry"] = TokenExpiry(self, scope, user, expires_at)
        scope["user"] = user
        return await self.inner(scope, receive, send)
