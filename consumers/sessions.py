"""Cookies and Django sessions in the scope: Channels' ``channels.sessions``.

- ``CookieMiddleware`` puts the request's cookies in ``scope["cookies"]`` (a dict, as Django's
  ``request.COOKIES``); it needs no Django. Its classmethods ``set_cookie(message, key, ...)``
  and ``delete_cookie(message, key, ...)`` add ``Set-Cookie`` headers to an
  ``http.response.start`` message, with Channels' signatures.
- ``SessionMiddleware`` (below ``CookieMiddleware``; ``SessionMiddlewareStack`` is both) puts the
  Django session named by the session cookie in ``scope["session"]``. For HTTP it saves a
  modified session and sets or deletes the cookie on ``http.response.start``, as Django's
  middleware does; for a WebSocket save it yourself: ``await scope["session"].asave()``
  (Django 5.1+) or ``await database_sync_to_async(scope["session"].save)()``.

The session is loaded lazily (on first use) and saved in a thread (``database_sync_to_async``),
so none of this blocks the event loop; Django is imported only when a session is made. Users
on top of the session are :mod:`roomcast.consumers.auth`; tokens without Django are
:mod:`roomcast.consumers.tokens`.

Faults: nothing here holds state across connections. A session backend that is down (database,
cache) raises from the first session access inside the consumer, or from the save on the HTTP
response (the server answers 500); a restart or a kill -9 of the server loses no session saved
before it (Django's store keeps them).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from email.utils import formatdate
from http.cookies import SimpleCookie
from importlib import import_module
from typing import Any

from .db import database_sync_to_async
from .middleware import ASGIApp, BaseMiddleware, Message, Receive, Scope, Send

__all__ = [
    "CookieMiddleware",
    "SessionMiddleware",
    "SessionMiddlewareStack",
    "cookie_header",
    "parse_cookie",
]


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


def cookie_header(scope: Scope) -> str | None:
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
        header = cookie_header(scope)
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


class _SessionSaver:
    """Wraps ``send``: saves a modified session and sets its cookie on ``http.response.start``."""

    def __init__(self, scope: Scope, send: Send) -> None:
        self.scope = scope
        self.real_send = send

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and self._may_save():
            message = dict(message)
            await database_sync_to_async(self._save)(message)
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
