"""Origin checks: ``OriginValidator``, ``AllowedHostsOriginValidator``, ``WebsocketDenier``.

Channels' ``channels.security.websocket``; ``roomcast.consumers.security`` exports the same names.

Browsers send an ``Origin`` header with every WebSocket handshake and let any page open a
WebSocket to any site, so a WebSocket endpoint that relies on cookies must check it (cross-site
WebSocket hijacking)::

    application = ProtocolTypeRouter({
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(routes))),
    })

Patterns in ``allowed_origins``, as in Channels:

- ``"*"`` allows every origin, and a missing one;
- ``"example.com"`` (no scheme) matches that host with any scheme and port;
  ``"example.com:8000"`` that host on that port (Channels never matches a scheme-less pattern
  with a port; here it means what it says);
- ``"http://example.com"`` matches scheme, host and port, the port defaulting to 80 for
  ``http``/``ws`` and 443 for ``https``/``wss`` on both sides (``"https://example.com:8443"``);
- a host beginning with a period matches the domain and all its subdomains:
  ``".example.com"`` matches ``example.com`` and ``chat.example.com``, not ``badexample.com``;
  ``"https://.example.com"`` the same with the scheme and port checked.

Hosts compare case-insensitively; IPv6 hosts are written in brackets (``"[::1]"``).

A request without an ``Origin`` header is allowed only if ``"*"`` is in the list (Channels'
rule; ``allow_missing=True`` allows it anyway, ``False`` never does). ``Origin: null`` (sandboxed
frames, ``file:``) and an unparsable origin match only ``"*"``; so do several ``Origin``
headers (Channels used the last one).

Refusal: a WebSocket is closed before it is accepted, which the server turns into an HTTP 403
for the handshake; an HTTP request is answered 403. Either is logged as a warning in the
``roomcast.consumers.security`` log with the origin. Other scope types (``lifespan``, ``channel``)
pass
through unchecked. Note that browsers omit ``Origin`` on same-origin ``GET`` requests, so around
HTTP pages use ``allow_missing=True``.

``AllowedHostsOriginValidator(app)`` takes its patterns from Django's ``settings.ALLOWED_HOSTS``
when Django is configured (with ``DEBUG`` and an empty list: ``localhost``, ``127.0.0.1`` and
``[::1]``, as Channels does); without Django, pass ``allowed_hosts=[...]``.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Iterable
from typing import Any, NamedTuple
from urllib.parse import ParseResult, urlparse

from ..middleware import ASGIApp, BaseMiddleware, Receive, Scope, Send, deny

__all__ = ["AllowedHostsOriginValidator", "OriginValidator", "WebsocketDenier"]

logger = logging.getLogger("roomcast.consumers.security")  # the name documented above

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
_DEBUG_HOSTS = ["localhost", "127.0.0.1", "[::1]"]


class _OriginPattern(NamedTuple):
    scheme: str | None  # None: any scheme
    host: str  # lower case; a leading "." matches subdomains too
    port: int | None  # None: any port (scheme-less) or a scheme without a default port


@functools.lru_cache(maxsize=256)
def _parse_pattern(pattern: str) -> _OriginPattern | None:
    """``pattern`` as scheme, host and port; None if empty; ``ValueError`` if it is no origin.

    A path is ignored (``"https://example.com/"`` is ``"https://example.com"``), as in Channels.
    """
    text = pattern.strip().lower()
    if not text:
        return None  # e.g. "".split(",") from an unset environment variable: matches nothing
    try:
        if "://" in text:
            parsed = urlparse(text)
            scheme: str | None = parsed.scheme
            port = parsed.port if parsed.port is not None else _DEFAULT_PORTS.get(parsed.scheme)
        else:
            parsed = urlparse("//" + text)
            scheme = None
            port = parsed.port
    except ValueError as exc:  # a port that is not a number in 0-65535
        raise ValueError(f"allowed origin {pattern!r}: {exc}") from None
    host = parsed.hostname
    if not host:
        raise ValueError(f"allowed origin {pattern!r} is not [scheme://]host[:port]")
    return _OriginPattern(scheme, host, port)


def _same_domain(host: str, pattern: str) -> bool:
    """Django's ``is_same_domain``: exact, or ``.example.com`` for the domain and subdomains."""
    if pattern.startswith("."):
        return host.endswith(pattern) or host == pattern[1:]
    return host == pattern


class OriginValidator(BaseMiddleware):
    """Lets a connection through only if its ``Origin`` matches ``allowed_origins`` (see module).

    ``application`` is the wrapped application (also ``self.inner``). The method names are
    Channels', so a subclass may override ``valid_origin(parsed_origin)`` (the whole decision,
    ``parsed_origin`` None when the header is missing) or ``validate_origin(parsed_origin)``.
    """

    def __init__(
        self,
        application: ASGIApp,
        allowed_origins: Iterable[str],
        *,
        allow_missing: bool | None = None,
    ) -> None:
        super().__init__(application)
        if isinstance(allowed_origins, str):
            raise TypeError("allowed_origins must be a list of patterns, not one string")
        self.allowed_origins = list(allowed_origins)
        for pattern in self.allowed_origins:
            if pattern != "*":
                _parse_pattern(pattern)  # a bad pattern fails here, not on a connection
        self.allow_missing = allow_missing

    @property
    def application(self) -> ASGIApp:
        return self.inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        if scope.get("type") not in ("websocket", "http"):
            return await self.inner(scope, receive, send)
        origins = [value for name, value in scope.get("headers", ()) if name.lower() == b"origin"]
        parsed_origin: ParseResult | None
        if not origins:
            parsed_origin = None
        elif len(origins) > 1:
            parsed_origin = urlparse("")  # no hostname: matches only "*"
        else:
            parsed_origin = urlparse(origins[0].decode("latin-1").strip())
        if self.valid_origin(parsed_origin):
            return await self.inner(scope, receive, send)
        logger.warning(
            "Origin %s not allowed for %s %r: refused (allowed origins: %s)",
            "missing" if not origins else repr(b", ".join(origins).decode("latin-1")),
            "WebSocket" if scope["type"] == "websocket" else "HTTP",
            scope.get("path"),
            self.allowed_origins,
        )
        return await deny(scope, receive, send, status=403)

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        """Whether to let the connection through; ``parsed_origin`` is None if it had none."""
        if parsed_origin is None:
            if self.allow_missing is not None:
                return self.allow_missing
            return "*" in self.allowed_origins
        return self.validate_origin(parsed_origin)

    def validate_origin(self, parsed_origin: ParseResult | None) -> bool:
        """Whether the origin matches one of ``allowed_origins``."""
        return any(
            pattern == "*" or self.match_allowed_origin(parsed_origin, pattern)
            for pattern in self.allowed_origins
        )

    def match_allowed_origin(self, parsed_origin: ParseResult | None, pattern: str) -> bool:
        """Whether the origin matches one pattern (``"*"`` excepted: see ``validate_origin``)."""
        if parsed_origin is None or not parsed_origin.hostname:
            return False
        try:
            origin_port = self.get_origin_port(parsed_origin)
        except ValueError:  # a port that is not a number in 0-65535: not an origin
            return False
        allowed = _parse_pattern(pattern)
        if allowed is None or not _same_domain(parsed_origin.hostname, allowed.host):
            return False
        if allowed.scheme is not None and allowed.scheme != parsed_origin.scheme:
            return False
        if allowed.scheme is None and allowed.port is None:
            return True  # a bare host: any scheme, any port
        return origin_port == allowed.port

    def get_origin_port(self, origin: ParseResult) -> int | None:
        """The origin's port, or its scheme's default (80, 443), or None for other schemes."""
        if origin.port is not None:
            return origin.port
        return _DEFAULT_PORTS.get(origin.scheme)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r}, {self.allowed_origins!r})"


def _django_allowed_hosts() -> list[str] | None:
    """Django's ``ALLOWED_HOSTS`` (localhost ones in DEBUG if empty); None without Django."""
    module_env = os.environ.get("DJANGO_SETTINGS_MODULE", "").strip()
    if not module_env and "django.conf" not in sys.modules:
        return None
    try:
        from django.conf import settings
    except ImportError:
        return None
    if not module_env and not settings.configured:
        return None
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:
        hosts = list(_DEBUG_HOSTS)
    return hosts


class AllowedHostsOriginValidator(OriginValidator):
    """An ``OriginValidator`` allowing Django's ``ALLOWED_HOSTS``, or ``allowed_hosts`` if given.

    Django's settings are read when this is built, as Channels does. Without Django (or to
    override it), pass the hosts: ``AllowedHostsOriginValidator(app, allowed_hosts=[...])``.
    """

    def __init__(
        self,
        application: ASGIApp,
        allowed_hosts: Iterable[str] | None = None,
        *,
        allow_missing: bool | None = None,
    ) -> None:
        if allowed_hosts is None:
            allowed_hosts = _django_allowed_hosts()
            if allowed_hosts is None:
                raise ValueError(
                    "AllowedHostsOriginValidator: Django settings are not configured, so there "
                    "is no ALLOWED_HOSTS; pass allowed_hosts=[...] "
                    '(e.g. ["chat.example.com", ".example.com"])'
                )
        super().__init__(application, allowed_hosts, allow_missing=allow_missing)


class WebsocketDenier:
    """An ASGI application that refuses every connection: WebSocket closed before accept."""

    @classmethod
    def as_asgi(cls) -> WebsocketDenier:
        return cls()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await deny(scope, receive, send, status=403)
