"""Django users in the scope: Channels' ``channels.auth``.

With Django (imported only when these run)::

    application = ProtocolTypeRouter({
        "http": get_asgi_application(),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(routes))),
    })

- ``AuthMiddleware`` (below ``SessionMiddleware`` of :mod:`roomcast.consumers.sessions`;
  ``AuthMiddlewareStack`` is cookies, session and user) puts the session's user in
  ``scope["user"]``: the ``User`` (through a ``UserLazyObject``, already resolved, as in
  Channels) or Django's ``AnonymousUser``. The session is verified as Django's ``get_user()``
  verifies it (a password change logs the session out).
- ``await get_user(scope)`` is that user; ``await login(scope, user)`` and
  ``await logout(scope)`` change the session and ``scope["user"]`` as Channels' do (and fire
  ``user_logged_in``/``user_logged_out`` with ``request=None``); save the session afterwards on
  a WebSocket (``await scope["session"].asave()``).

Database work runs in a thread (``database_sync_to_async``, old connections closed around it),
so none of this blocks the event loop. The user is read once, when the connection opens: a user
logged out elsewhere stays in ``scope["user"]`` until the client reconnects (as in Channels); a
database that is down fails the connection (HTTP 500 / handshake refused) rather than letting
it in anonymous.

For compatibility this module also exports the cookie and session names
(:mod:`roomcast.consumers.sessions`) and the token ones (:mod:`roomcast.consumers.tokens`), where
roomcast had them before they were split out.
"""

from __future__ import annotations

import functools
from typing import Any

from .db import database_sync_to_async
from .middleware import ASGIApp, BaseMiddleware, Receive, Scope, Send
from .sessions import CookieMiddleware, SessionMiddleware, SessionMiddlewareStack, parse_cookie
from .tokens import AnonymousUser, TokenAuthMiddleware, get_token

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
    return await database_sync_to_async(django_get_user)(_SessionRequest(session))


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
    await database_sync_to_async(_login)(scope, user, backend)


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
    await database_sync_to_async(_logout)(scope)


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
