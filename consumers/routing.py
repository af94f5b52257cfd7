"""Routers: ProtocolTypeRouter, URLRouter with path() and re_path(), ChannelNameRouter.

Every router is an ASGI application, so they nest::

    application = ProtocolTypeRouter({
        "http": page_app,
        "websocket": AllowedHostsOriginValidator(URLRouter([
            path("ws/chat/<str:room>/", ChatConsumer.as_asgi()),
            path("ws/admin/", URLRouter([
                path("rooms/<int:room_id>/", AdminConsumer.as_asgi()),
            ])),
            re_path(r"^ws/legacy/(?P<room>\\w+)/$", LegacyConsumer.as_asgi()),
        ])),
        "channel": ChannelNameRouter({"thumbnails": ThumbnailConsumer.as_asgi()}),
    })

No Django is needed. ``path()`` takes Django's route syntax and converters (``str``, ``int``,
``slug``, ``uuid``, ``path``, and any added with :func:`register_converter`); ``re_path()``
takes a regular expression, its named groups become keyword arguments and, when it has none,
its unnamed groups positional ones (Django's rule). Django's own ``django.urls.path()`` and
``re_path()`` entries are accepted too, as in Channels.

What ``URLRouter`` does, as Channels does it:

- it matches ``scope["path"]`` with ``scope["root_path"]`` removed (the ASGI path includes the
  root path) and leading slashes stripped, so routes are written without a leading ``/``;
- a match calls the route's application with ``scope["url_route"] = {"args": (...), "kwargs":
  {...}}`` (converted values plus the route's ``kwargs=``) and ``scope["path_remaining"]``, the
  part of the path the route did not consume;
- a route whose application is a ``URLRouter`` (or middleware around one) matches its pattern
  as a prefix; the nested router routes ``path_remaining``, adds its own args and kwargs to the
  outer ones, and if none of its routes matches, the outer router goes on with its next route;
- no route: a WebSocket is closed before it is accepted (the client sees HTTP 403) with a
  warning in the ``roomcast.consumers.routing`` log, an HTTP request is answered 404 (logged at
  info);
  any other scope type raises ``ValueError``.

``ProtocolTypeRouter`` dispatches on ``scope["type"]`` and ``ChannelNameRouter`` (for workers)
on ``scope["channel"]``; an unknown value raises ``ValueError`` naming it. The router also
answers the ``lifespan`` scope: it builds and checks the configured channel layers at
start-up (see :mod:`.startup`), then hands over to the mapping's own ``"lifespan"``
application if there is one.
"""

from __future__ import annotations

import importlib
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .middleware import ASGIApp, Receive, Scope, Send, deny
from .startup import LifespanChecks

__all__ = [
    "ChannelNameRouter",
    "Converter",
    "ProtocolTypeRouter",
    "RegexPattern",
    "Route",
    "RouteNotFound",
    "RoutePattern",
    "URLRouter",
    "get_default_application",
    "path",
    "re_path",
    "register_converter",
]

logger = logging.getLogger(__name__)

Match = tuple[str, tuple[Any, ...], dict[str, Any]]


class RouteNotFound(ValueError):
    """Raised by a nested ``URLRouter`` none of whose routes matches; its parent tries on."""

    def __init__(self, path: str) -> None:
        super().__init__(f"No route found for path {path!r}.")
        self.path = path


# -- converters (Django's) ------------------------------------------------------------------


class Converter(Protocol):
    """A ``path()`` converter: ``regex`` to match, ``to_python`` raising ValueError to reject."""

    regex: str

    def to_python(self, value: str) -> Any: ...


class StringConverter:
    regex = "[^/]+"

    def to_python(self, value: str) -> Any:
        return value

    def to_url(self, value: Any) -> str:
        return str(value)


class IntConverter(StringConverter):
    regex = "[0-9]+"

    def to_python(self, value: str) -> Any:
        return int(value)


class SlugConverter(StringConverter):
    regex = "[-a-zA-Z0-9_]+"


class UUIDConverter(StringConverter):
    regex = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

    def to_python(self, value: str) -> Any:
        return uuid.UUID(value)


class PathConverter(StringConverter):
    regex = ".+"


_CONVERTERS: dict[str, Converter] = {
    "int": IntConverter(),
    "path": PathConverter(),
    "slug": SlugConverter(),
    "str": StringConverter(),
    "uuid": UUIDConverter(),
}


def register_converter(converter: type[Any] | Converter, type_name: str) -> None:
    """Make ``<type_name:name>`` usable in later ``path()`` routes (Django's function).

    ``converter`` is a class (instantiated here, as Django does) or an instance with a
    ``regex`` and a ``to_python(value)`` that raises ``ValueError`` for a value it refuses.
    """
    if type_name in _CONVERTERS:
        raise ValueError(f"converter {type_name!r} is already registered")
    _CONVERTERS[type_name] = converter() if isinstance(converter, type) else converter


# -- patterns -------------------------------------------------------------------------------

_PARAMETER = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<parameter>[^>]+)>")


class RoutePattern:
    """A ``path()`` route such as ``"ws/chat/<str:room>/"``, compiled as Django compiles it."""

    def __init__(self, route: str, *, is_endpoint: bool = True) -> None:
        self.route = route
        self.is_endpoint = is_endpoint
        parts = ["^"]
        self.converters: dict[str, Converter] = {}
        end = 0
        for found in _PARAMETER.finditer(route):
            name_converter, name = found.group("converter") or "str", found.group("parameter")
            if any(c.isspace() for c in found.group(0)):
                raise ValueError(f"route {route!r} has whitespace in angle brackets <...>")
            if not name.isidentifier():
                raise ValueError(f"route {route!r}: {name!r} is not a valid Python identifier")
            if name in self.converters:
                raise ValueError(f"route {route!r} names the parameter {name!r} twice")
            try:
                converter = _CONVERTERS[name_converter]
            except KeyError:
                known = ", ".join(sorted(_CONVERTERS))
                raise ValueError(
                    f"route {route!r} uses unknown converter {name_converter!r} (known: {known})"
                ) from None
            self.converters[name] = converter
            parts.append(re.escape(route[end : found.start()]))
            parts.append(f"(?P<{name}>{converter.regex})")
            end = found.end()
        parts.append(re.escape(route[end:]))
        if is_endpoint:
            parts.append(r"\Z")
        self.regex = re.compile("".join(parts))

    def match(self, path: str) -> Match | None:
        found = self.regex.search(path)
        if found is None:
            return None
        kwargs: dict[str, Any] = {}
        for name, value in found.groupdict().items():
            try:
                kwargs[name] = self.converters[name].to_python(value)
            except ValueError:
                return None
        return path[found.end() :], (), kwargs

    def __str__(self) -> str:
        return self.route


class RegexPattern:
    """A ``re_path()`` pattern; Django's matching rules (search, full match if it ends in ``$``)."""

    def __init__(self, regex: str | re.Pattern[str], *, is_endpoint: bool = True) -> None:
        self.regex = re.compile(regex)
        self.is_endpoint = is_endpoint

    def match(self, path: str) -> Match | None:
        if self.is_endpoint and self.regex.pattern.endswith("$"):
            found = self.regex.fullmatch(path)
        else:
            found = self.regex.search(path)
        if found is None:
            return None
        named = found.groupdict()
        args = () if named else found.groups()
        kwargs = {key: value for key, value in named.items() if value is not None}
        return path[found.end() :], args, kwargs

    def __str__(self) -> str:
        return self.regex.pattern


class _Pattern(Protocol):
    def match(self, path: str) -> Match | None: ...


class Route:
    """One ``URLRouter`` entry: a pattern, the application it leads to, extra kwargs, a name."""

    __slots__ = ("callback", "default_args", "name", "pattern")

    def __init__(
        self,
        pattern: _Pattern,
        callback: ASGIApp,
        default_args: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        self.pattern = pattern
        self.callback = callback
        self.default_args = dict(default_args or {})
        self.name = name

    def __repr__(self) -> str:
        return f"<Route {str(self.pattern)!r} -> {self.callback!r}>"


def _is_router(app: object) -> bool:
    return getattr(app, "_path_routing", False) is True


def _check_app(view: object, where: str) -> ASGIApp:
    if isinstance(view, type):
        raise TypeError(
            f"{where}: got the class {view.__name__}; route to an ASGI application, "
            f"e.g. {view.__name__}.as_asgi()"
        )
    if not callable(view):
        raise TypeError(f"{where}: {view!r} is not an ASGI application")
    return view


def path(
    route: str,
    view: ASGIApp,
    kwargs: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Route:
    """A route in Django's syntax: ``path("ws/chat/<str:room>/", ChatConsumer.as_asgi())``.

    Leading slashes are ignored (paths are matched without theirs). A nested ``URLRouter``
    (or middleware around one) is matched as a prefix; anything else must match the whole path.
    """
    app = _check_app(view, f"path({route!r})")
    pattern = RoutePattern(route.lstrip("/"), is_endpoint=not _is_router(app))
    return Route(pattern, app, kwargs, name)


def re_path(
    route: str | re.Pattern[str],
    view: ASGIApp,
    kwargs: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Route:
    """A route as a regular expression: ``re_path(r"^ws/(?P<room>\\w+)/$", app)``."""
    app = _check_app(view, f"re_path({route!r})")
    return Route(RegexPattern(route, is_endpoint=not _is_router(app)), app, kwargs, name)


def _adopt(route: object) -> Route:
    """Our Route as is; a Django ``URLPattern`` adapted, as Channels' URLRouter does."""
    if isinstance(route, Route):
        return route
    callback = getattr(route, "callback", None)
    pattern: Any = getattr(route, "pattern", None)
    if callback is None and hasattr(route, "url_patterns"):
        raise ValueError(
            f"{route}: include() is not supported in URLRouter; nest URLRouter instances instead"
        )
    if callback is None or not callable(getattr(pattern, "match", None)):
        raise TypeError(f"URLRouter entries must come from path() or re_path(), not {route!r}")
    if _is_router(callback):
        # Django built the pattern as an endpoint; a nested router needs it as a prefix.
        if hasattr(pattern, "_route"):
            source = pattern._route
        elif hasattr(pattern, "_regex"):
            source = pattern._regex
        else:
            raise ValueError(f"unsupported pattern type {type(pattern).__name__}")
        pattern = type(pattern)(source, getattr(pattern, "name", None), is_endpoint=False)
    default_args = getattr(route, "default_args", None)
    return Route(pattern, callback, default_args, getattr(route, "name", None))


def _strip_root_path(full_path: str, root_path: str) -> str | None:
    """``full_path`` without ``root_path``; None if it is not under it."""
    root = root_path.rstrip("/")
    if not root:
        return full_path
    if full_path == root or full_path.startswith(root + "/"):
        return full_path[len(root) :]
    return None


# -- routers --------------------------------------------------------------------------------


class ProtocolTypeRouter:
    """Dispatches on ``scope["type"]``: ``ProtocolTypeRouter({"http": ..., "websocket": ...})``.

    ``check_layers=False`` skips the start-up checks of the channel layers (see the module).
    """

    def __init__(
        self, application_mapping: Mapping[str, ASGIApp], *, check_layers: bool = True
    ) -> None:
        self.application_mapping = dict(application_mapping)
        for kind, app in self.application_mapping.items():
            _check_app(app, f"ProtocolTypeRouter[{kind!r}]")
        self._lifespan = LifespanChecks(
            self.application_mapping.get("lifespan"), check_layers=check_layers
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        kind = scope["type"]
        if kind == "lifespan":
            return await self._lifespan(scope, receive, send)
        application = self.application_mapping.get(kind)
        if application is None:
            known = ", ".join(repr(k) for k in self.application_mapping) or "none"
            raise ValueError(
                f"No application configured for scope type {kind!r} (configured: {known})"
            )
        return await application(scope, receive, send)


class URLRouter:
    """Routes on the path to the first matching ``path()``/``re_path()`` entry (see the module)."""

    #: Marks a router: a ``path()`` leading here matches as a prefix, not the whole path.
    _path_routing = True

    def __init__(self, routes: Sequence[Any]) -> None:
        self.routes: list[Route] = [_adopt(route) for route in routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        nested = "path_remaining" in scope
        if nested:
            remaining: str = scope["path_remaining"]
        else:
            full_path = scope.get("path")
            if full_path is None:
                raise ValueError("No 'path' key in connection scope, cannot route URLs")
            stripped = _strip_root_path(full_path, scope.get("root_path") or "")
            if stripped is None:
                return await self._no_route(scope, receive, send)
            remaining = stripped
        remaining = remaining.lstrip("/")
        outer = scope.get("url_route") or {}
        for route in self.routes:
            found = route.pattern.match(remaining)
            if found is None:
                continue
            rest, args, kwargs = found
            child = dict(
                scope,
                path_remaining=rest,
                url_route={
                    "args": tuple(outer.get("args", ())) + tuple(args),
                    "kwargs": {**outer.get("kwargs", {}), **kwargs, **route.default_args},
                },
            )
            try:
                return await route.callback(child, receive, send)
            except RouteNotFound:
                continue  # a nested router had no route: try our next one, as Channels does
        if nested:
            raise RouteNotFound(remaining)
        return await self._no_route(scope, receive, send)

    @staticmethod
    async def _no_route(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        where = repr(scope.get("path"))
        if scope.get("root_path"):
            where += f" (root_path {scope['root_path']!r})"
        if kind == "websocket":
            logger.warning("No route found for WebSocket path %s: closing the connection", where)
            await deny(scope, receive, send)
        elif kind == "http":
            logger.info("No route found for HTTP path %s: 404", where)
            await deny(scope, receive, send, status=404)
        else:
            raise ValueError(f"No route found for path {where}.")

    def __repr__(self) -> str:
        return f"URLRouter({self.routes!r})"


class ChannelNameRouter:
    """Dispatches ``channel`` scopes (workers) on ``scope["channel"]``."""

    def __init__(self, application_mapping: Mapping[str, ASGIApp]) -> None:
        self.application_mapping = dict(application_mapping)
        for name, app in self.application_mapping.items():
            _check_app(app, f"ChannelNameRouter[{name!r}]")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        if "channel" not in scope:
            raise ValueError(
                "ChannelNameRouter got a scope without a 'channel' key. "
                "Did you make sure it's only being used for 'channel' type messages?"
            )
        application = self.application_mapping.get(scope["channel"])
        if application is None:
            known = ", ".join(repr(k) for k in self.application_mapping) or "none"
            raise ValueError(
                f"No application configured for channel name {scope['channel']!r} "
                f"(configured: {known})"
            )
        return await application(scope, receive, send)


# -- Django's ASGI_APPLICATION ----------------------------------------------------------------


def get_default_application() -> ASGIApp:
    """The application named by Django's ``ASGI_APPLICATION`` setting (Channels' function).

    ``ASGI_APPLICATION = "mysite.asgi.application"`` imports ``mysite.asgi`` and returns its
    ``application``. Anything wrong raises Django's ``ImproperlyConfigured`` naming the setting;
    an error inside the module is chained (Channels hides it), so its traceback shows the cause.
    """
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    value = getattr(settings, "ASGI_APPLICATION", None)
    if not isinstance(value, str) or "." not in value:
        raise ImproperlyConfigured(
            f"Cannot find ASGI_APPLICATION setting (a dotted path such as "
            f"'mysite.asgi.application'; got {value!r})."
        )
    module_path, name = value.rsplit(".", 1)
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"Cannot import ASGI_APPLICATION module {module_path!r}: {exc}"
        ) from exc
    try:
        application: ASGIApp = getattr(module, name)
    except AttributeError:
        raise ImproperlyConfigured(
            f"Cannot find {name!r} in ASGI_APPLICATION module {module_path!r}"
        ) from None
    return application
