"""Cookies, sessions and users in the scope: with Django, or with your own token check.

**With Django** (Channels' API; Django is imported only when these run)::

    application = ProtocolTypeRouter({
        "http": get_asgi_application(),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(routes))),
    })

- ``CookieMiddleware`` puts the request's cookies in ``scope["cookies"]`` (a dict, as Django's
  ``request.COOKIES``); it needs no Django.
- ``SessionMiddleware`` (below ``CookieMiddleware``; ``SessionMiddlewareStack`` is both) puts the
  Django session named by the session cookie in ``scope["session"]``. For HTTP it saves a
  modified session and sets or deletes the cookie on ``http.response.start``, as Django's
  middleware does; for a WebSocket save it yourself: ``await scope["session"].asave()``
  (Django 5.1+) or ``await sync_to_async(scope["session"].save)()`` (asgiref).
- ``AuthMiddleware`` (below ``SessionMiddleware``; ``AuthMiddlewareStack`` is all three) puts the
  session's user in ``scope["user"]``: the ``User`` (through a ``UserLazyObject``, already
  resolved, as in Channels) or Django's ``AnonymousUser``. The session is verified as Django's
  ``get_user()`` verifies it (a password change logs the session out).
- ``await login(scope, user)`` and ``await logout(scope)`` change the session and
  ``scope["user"]`` as Channels' do (and fire ``user_logged_in``/``user_logged_out`` with
  ``request=None``); save the session afterwards on a WebSocket.

Database work runs in a thread (``sync_to_async``, old connections closed around it), so none of
this blocks the event loop.

**Without Django**, ``TokenAuthMiddleware`` is the hook. Give it an async function that takes the
scope and returns a user object or ``None``; it sets ``scope["user"]`` to that user, or to
``AnonymousUser()`` (``is_authenticated`` false), or, with ``required=True``, refuses the
connection (WebSocket closed before accept → HTTP 403; HTTP 403)::

    from roomcast.consumers.auth import TokenAuthMiddleware, get_token

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
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import formatdate
from http.cookies import SimpleCookie
from importlib import import_module
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from .db import database_sync_to_async
from .middleware import ASGIApp, BaseMiddleware, Message, Receive, Scope, Send, deny

__all__ = [
    "AnonymousUser",
    "AuthMiddleware",
    "AuthMiddlewareStack",
    "CookieMiddleware",
    "SessionMiddleware",
    "SessionMiddlewareStack",
    "TokenAuthMiddleware",
    "get_token",
    "get_user",
    "login",
    "logout",
    "parse_cookie",
]

T = TypeVar("T")


# -- cookies (no Django) --------------------------------------------------------------------

_UNQUOTE = re.compile(r"\\(?:([0-3][0-7][0-7])|(.))")


def _unquote(value: str) -> str:
    """The stdlib's cookie unquoting: ``"a\\"b"`` → ``a"b``, octal escapes decoded."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    return _UNQUOTE.sub(lambda m: chr(int(m[1], 8)) if m[1] else m[2], value[1:-1])


def parse_cookie(cookie: str) -> dict[str, str]:
    """A ``Cookie`` header as a dict, exactly as Django's ``django.http.parse_cookie``."""
    cookies: dict[str, str] = {}
    for chunk in cookie.split(";"):
        if "=" in chunk:
            key, value = chunk.split("=", 1)
        else:
            key, value = "", chunk  # a nameless cookie, as browsers send it
        key, value = key.strip(), value.strip()
        if key or value:
            cookies[key] = _unquote(value)
    return cookies


def _cookie_header(scope: Scope) -> str | None:
    """The scope's ``Cookie`` headers joined (HTTP/2 may split them), or None."""
    values = [value for name, value in scope.get("headers", ()) if name.lower() == b"cookie"]
    return b"; ".join(values).decode("latin-1") if values else None


class CookieMiddleware(BaseMiddleware):
    """Parses the ``Cookie`` header(s) into ``scope["cookies"]`` (Django's ``request.COOKIES``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        if "headers" not in scope:
            raise ValueError(
                "CookieMiddleware was passed a scope that did not have a headers key "
                "(make sure it is only passed HTTP or WebSocket connections)"
            )
        header = _cookie_header(scope)
        cookies = parse_cookie(header) if header is not None else {}
        return await self.inner(dict(scope, cookies=cookies), receive, send)

    @classmethod
    def set_cookie(
        cls,
        message: Message,
        key: str,
        value: str = "",
        max_age: int | None = None,
        expires: str | datetime | None = None,
        path: str | None = "/",
        domain: str | None = None,
        secure: bool | None = False,
        httponly: bool | None = False,
        samesite: str | None = "lax",
    ) -> None:
        """Add a ``Set-Cookie`` header to the ``http.response.start`` ``message`` (Channels' API).

        ``expires`` is an HTTP date string or a ``datetime`` (naive means UTC), which is turned
        into ``max_age``; with ``max_age`` alone ``expires`` is set to match.
        """
        cookies: SimpleCookie = SimpleCookie()
        cookies[key] = str(value)
        morsel = cookies[key]
        if isinstance(expires, datetime):
            when = expires if expires.tzinfo is not None else expires.replace(tzinfo=UTC)
            delta = when - datetime.now(UTC)
            max_age = max(0, int(delta.total_seconds()) + 1)
            expires = None
        if expires is not None:
            morsel["expires"] = expires
        if max_age is not None:
            morsel["max-age"] = str(max_age)
            if not expires:
                morsel["expires"] = formatdate(time.time() + max_age, usegmt=True)
        if path is not None:
            morsel["path"] = path
        if domain is not None:
            morsel["domain"] = domain
        if secure:
            morsel["secure"] = True
        if httponly:
            morsel["httponly"] = True
        if samesite is not None:
            if samesite.lower() not in ("strict", "lax", "none"):
                raise ValueError("samesite must be 'strict', 'lax' or 'none'")
            morsel["samesite"] = samesite
        headers = list(message.get("headers", ()))
        headers.append((b"set-cookie", morsel.OutputString().encode("latin-1")))
        message["headers"] = headers

    @classmethod
    def delete_cookie(
        cls, message: Message, key: str, path: str | None = "/", domain: str | None = None
    ) -> None:
        """Add a ``Set-Cookie`` header that deletes cookie ``key`` to ``message``."""
        cls.set_cookie(
            message,
            key,
            max_age=0,
            path=path,
            domain=domain,
            expires="Thu, 01 Jan 1970 00:00:00 GMT",
        )


# -- Django sessions ------------------------------------------------------------------------


async def _in_db_thread(func: Callable[..., T], *args: Any) -> T:
    """Run Django database code in a thread, closing stale connections around it."""
    return await database_sync_to_async(func)(*args)


class _SessionSaver:
    """Wraps ``send``: saves a modified session and sets its cookie on ``http.response.start``."""

    def __init__(self, scope: Scope, send: Send) -> None:
        self.scope = scope
        self.real_send = send

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and self._may_save():
            message = dict(message)
            await _in_db_thread(self._save, message)
        await self.real_send(message)

    def _may_save(self) -> bool:
        """Whether ``_save`` has anything to do (cheap: no database, no thread)."""
        from django.conf import settings

        session = self.scope["session"]
        if session.modified or settings.SESSION_SAVE_EVERY_REQUEST:
            return True
        return settings.SESSION_COOKIE_NAME in self.scope["cookies"] and bool(session.is_empty())

    def _save(self, message: Message) -> None:
        """Django's ``SessionMiddleware.process_response``, on an ASGI message."""
        from django.conf import settings
        from django.contrib.sessions.backends.base import UpdateError
        from django.contrib.sessions.exceptions import SessionInterrupted

        session = self.scope["session"]
        empty = session.is_empty()
        if settings.SESSION_COOKIE_NAME in self.scope["cookies"] and empty:
            CookieMiddleware.delete_cookie(
                message,
                settings.SESSION_COOKIE_NAME,
                path=settings.SESSION_COOKIE_PATH,
                domain=settings.SESSION_COOKIE_DOMAIN,
            )
            return
        if empty or not (session.modified or settings.SESSION_SAVE_EVERY_REQUEST):
            return
        if message.get("status", 200) >= 500:
            return
        max_age = None if session.get_expire_at_browser_close() else session.get_expiry_age()
        try:
            session.save()
        except UpdateError:
            raise SessionInterrupted(
                "The request's session was deleted before the request completed. The user "
                "may have logged out in a concurrent request, for example."
            ) from None
        CookieMiddleware.set_cookie(
            message,
            settings.SESSION_COOKIE_NAME,
            session.session_key,
            max_age=max_age,
            domain=settings.SESSION_COOKIE_DOMAIN,
            path=settings.SESSION_COOKIE_PATH,
            secure=settings.SESSION_COOKIE_SECURE or None,
            httponly=settings.SESSION_COOKIE_HTTPONLY or None,
            samesite=settings.SESSION_COOKIE_SAMESITE,
        )


class SessionMiddleware(BaseMiddleware):
    """Puts the Django session of the session cookie in ``scope["session"]`` (needs cookies).

    If the scope already has a session (a session middleware further out), it is kept and
    that one saves it.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        if "session" in scope:
            return await self.inner(dict(scope), receive, send)
        if "cookies" not in scope:
            raise ValueError(
                "No cookies in scope - SessionMiddleware needs to run inside of CookieMiddleware."
            )
        from django.conf import settings

        store = import_module(settings.SESSION_ENGINE).SessionStore
        session_key = scope["cookies"].get(settings.SESSION_COOKIE_NAME)
        scope = dict(scope, session=store(session_key))  # loads lazily, on first use
        saver = _SessionSaver(scope, send)
        return await self.inner(scope, receive, saver.send)


def SessionMiddlewareStack(inner: ASGIApp) -> CookieMiddleware:
    """``CookieMiddleware(SessionMiddleware(inner))``."""
    return CookieMiddleware(SessionMiddleware(inner))


# -- Django users ---------------------------------------------------------------------------


class _SessionRequest:
    """What Django's ``get_user(request)`` reads of a request: its session."""

    def __init__(self, session: Any) -> None:
        self.session = session


def _session_of(scope: Scope, who: str) -> Any:
    try:
        return scope["session"]
    except KeyError:
        raise ValueError(
            f"{who} cannot find session in scope. You should wrap your consumer in "
            "SessionMiddleware (or use AuthMiddlewareStack)."
        ) from None


async def get_user(scope: Scope) -> Any:
    """The user of the scope's Django session, or Django's ``AnonymousUser``."""
    from django.contrib.auth import get_user as django_get_user

    session = _session_of(scope, "get_user")
    return await _in_db_thread(django_get_user, _SessionRequest(session))


def _login(scope: Scope, user: Any, backend: str | None) -> None:
    from django.conf import settings
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
        user_logged_in,
    )
    from django.utils.crypto import constant_time_compare

    session = _session_of(scope, "login")
    if user is None:
        user = scope.get("user")
    if user is None:
        raise ValueError("User must be passed as an argument or must be present in the scope.")
    session_auth_hash = ""
    if hasattr(user, "get_session_auth_hash"):
        session_auth_hash = user.get_session_auth_hash()
    if SESSION_KEY in session:
        session_user = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
        if session_user != user.pk or (
            session_auth_hash
            and not constant_time_compare(session.get(HASH_SESSION_KEY, ""), session_auth_hash)
        ):
            # Another user's session: start an empty one rather than reuse it.
            session.flush()
    else:
        session.cycle_key()
    backend = backend or getattr(user, "backend", None)
    if backend is None:
        backends = list(settings.AUTHENTICATION_BACKENDS)
        if len(backends) != 1:
            raise ValueError(
                "You have multiple authentication backends configured and therefore must "
                "provide the `backend` argument or set the `backend` attribute on the user."
            )
        backend = backends[0]
    session[SESSION_KEY] = user._meta.pk.value_to_string(user)
    session[BACKEND_SESSION_KEY] = backend
    session[HASH_SESSION_KEY] = session_auth_hash
    scope["user"] = user
    user_logged_in.send(sender=user.__class__, request=None, user=user)


async def login(scope: Scope, user: Any, backend: str | None = None) -> None:
    """Log ``user`` in on the scope's session and set ``scope["user"]`` (Channels' ``login``).

    The session is not saved: on a WebSocket, save it afterwards
    (``await scope["session"].asave()``, or ``sync_to_async(scope["session"].save)``); over
    HTTP ``SessionMiddleware`` saves it with the response.
    """
    await _in_db_thread(_login, scope, user, backend)


def _logout(scope: Scope) -> None:
    from django.contrib.auth import user_logged_out
    from django.contrib.auth.models import AnonymousUser as DjangoAnonymousUser

    session = _session_of(scope, "logout")
    user: Any = scope.get("user")
    if hasattr(user, "is_authenticated") and not user.is_authenticated:
        user = None
    if user is not None:
        user_logged_out.send(sender=user.__class__, request=None, user=user)
    session.flush()
    if "user" in scope:
        scope["user"] = DjangoAnonymousUser()


async def logout(scope: Scope) -> None:
    """Flush the scope's session and make ``scope["user"]`` anonymous (Channels' ``logout``)."""
    await _in_db_thread(_logout, scope)


@functools.cache
def _user_lazy_object_class() -> type[Any]:
    from django.utils.functional import LazyObject

    class UserLazyObject(LazyObject):  # type: ignore[misc]
        """Channels' placeholder: ``scope["user"]`` until ``AuthMiddleware`` resolves it."""

        def _setup(self) -> None:
            raise ValueError("Accessing scope user before it is ready.")

    UserLazyObject.__module__ = __name__
    return UserLazyObject


def __getattr__(name: str) -> Any:
    if name == "UserLazyObject":  # made on first use, so importing this module needs no Django
        return _user_lazy_object_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class AuthMiddleware(BaseMiddleware):
    """Puts the Django session's user in ``scope["user"]``; needs ``SessionMiddleware`` above.

    Channels' hooks: ``populate_scope(scope)`` checks the session and installs a
    ``UserLazyObject``; ``await resolve_scope(scope)`` loads the user into it.
    """

    def populate_scope(self, scope: Scope) -> None:
        if "session" not in scope:
            raise ValueError(
                "AuthMiddleware cannot find session in scope. SessionMiddleware must be above it."
            )
        if "user" not in scope:
            scope["user"] = _user_lazy_object_class()()

    async def resolve_scope(self, scope: Scope) -> None:
        user = await get_user(scope)
        if isinstance(scope.get("user"), _user_lazy_object_class()):
            scope["user"]._wrapped = user
        else:
            scope["user"] = user

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        scope = dict(scope)
        self.populate_scope(scope)
        await self.resolve_scope(scope)
        return await self.inner(scope, receive, send)


def AuthMiddlewareStack(inner: ASGIApp) -> CookieMiddleware:
    """``CookieMiddleware(SessionMiddleware(AuthMiddleware(inner)))``: the Django user."""
    return CookieMiddleware(SessionMiddleware(AuthMiddleware(inner)))


# -- without Django: tokens -----------------------------------------------------------------


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
            cookie_header = _cookie_header(scope)
            cookies = parse_cookie(cookie_header) if cookie_header is not None else {}
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
