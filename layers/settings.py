"""Which channel layer a process uses: the ``CHANNEL_LAYERS`` setting, Channels-style.

``CHANNEL_LAYERS`` maps an alias to a backend and its options, exactly as in Django Channels::

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "roomcast.layers.redis.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://localhost:6379/0"], "capacity": 500},
        },
    }

:func:`get_channel_layer` returns the layer for an alias, built on first use and then shared
(one instance per alias per process). The setting is looked for in this order; the first source
that has it wins and the others are not consulted:

1. **Django settings**, when Django is importable and configured (``settings.configure()`` was
   called, or ``DJANGO_SETTINGS_MODULE`` is set) and they define ``CHANNEL_LAYERS``.
2. **A plain settings module** named by ``ROOMCAST_SETTINGS`` (for example
   ``examples.chat.settings``): its ``CHANNEL_LAYERS`` attribute. If the variable is set, the
   module must import and must define ``CHANNEL_LAYERS``; otherwise :class:`LayerConfigError`.
3. **A URL** in ``ROOMCAST_LAYER_URL`` (see :func:`layer_config_from_url`): ``memory://`` for
   the in-memory layer, or one or more comma-separated ``redis://``, ``rediss://`` or
   ``unix://`` URLs for the Redis layer, one per shard. Layer options ride along as query
   parameters: ``redis://cache:6379/0?prefix=chat&capacity=500``.
4. **The built-in default**: the in-memory layer under ``"default"``.

An environment variable set to the empty string counts as unset. Backends are imported by
dotted path when first built, so naming the Redis layer costs nothing until it is used.

Every mistake is reported as :class:`~roomcast.layers.exceptions.LayerConfigError` with the place
it was
found, e.g. ``CHANNEL_LAYERS['default']['CONFIG']: unknown option 'capasity' for
roomcast.layers.memory.InMemoryChannelLayer (accepted: ...)``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from .base import BaseChannelLayer
from .exceptions import LayerConfigError

__all__ = [
    "DEFAULT_CHANNEL_LAYER",
    "DEFAULT_CHANNEL_LAYERS",
    "ENV_LAYER_URL",
    "ENV_SETTINGS_MODULE",
    "MEMORY_BACKEND",
    "REDIS_BACKEND",
    "REDIS_ONLY_OPTIONS",
    "URL_LAYER_OPTIONS",
    "ChannelLayerManager",
    "build_layer",
    "channel_layers",
    "get_channel_layer",
    "layer_config_from_url",
    "resolve_channel_layers",
]

DEFAULT_CHANNEL_LAYER = "default"
"""The alias used when none is given (Channels' name for it)."""

ENV_DJANGO_SETTINGS = "DJANGO_SETTINGS_MODULE"
ENV_SETTINGS_MODULE = "ROOMCAST_SETTINGS"
"""Names a plain Python module whose ``CHANNEL_LAYERS`` attribute is used."""
ENV_LAYER_URL = "ROOMCAST_LAYER_URL"
"""Holds a layer URL (``memory://``, ``redis://...``), turned into ``CHANNEL_LAYERS``."""

MEMORY_BACKEND = "roomcast.layers.memory.InMemoryChannelLayer"
REDIS_BACKEND = "roomcast.layers.redis.RedisChannelLayer"

DEFAULT_CHANNEL_LAYERS: dict[str, dict[str, Any]] = {
    DEFAULT_CHANNEL_LAYER: {"BACKEND": MEMORY_BACKEND},
}
"""What is used when no source defines ``CHANNEL_LAYERS``."""

_ENTRY_KEYS = ("BACKEND", "CONFIG", "TEST_CONFIG")  # TEST_CONFIG: for make_test_backend only


def _to_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


URL_LAYER_OPTIONS: dict[str, Callable[[str], Any]] = {
    "prefix": str,
    "expiry": _to_float,
    "group_expiry": _to_float,
    "capacity": int,
    "max_message_size": int,
    "retry_timeout": _to_float,
    "liveness_timeout": _to_float,
}
"""Query parameters of a layer URL that are layer options, with their converters; every other
parameter of a Redis URL is left in it for redis-py."""

REDIS_ONLY_OPTIONS = ("prefix", "retry_timeout", "liveness_timeout")
"""The URL layer options that only the Redis layer takes (refused on ``memory://``)."""

_REDIS_SCHEMES = ("redis", "rediss", "unix")
_URL_START = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.\-]*://)")
_USERINFO = re.compile(r"(?<=://)([^/?#@]*)@")


# Layer URLs ------------------------------------------------------------------------------


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for error messages."""

    def hide(match: re.Match[str]) -> str:
        user, colon, _ = match.group(1).partition(":")
        return f"{user}:***@" if colon else "***@"

    return _USERINFO.sub(hide, url, count=1)


def _split_urls(url: str) -> list[str]:
    """Comma-separated URLs; a comma only separates where a new ``scheme://`` starts."""
    return [part.strip() for part in _URL_START.split(url.strip()) if part.strip()]


def _take_layer_options(url: str) -> tuple[str, dict[str, Any]]:
    """Remove the layer options from ``url``'s query; return the rest of the URL unchanged."""
    head, question, rest = url.partition("?")
    if not question:
        return url, {}
    query, hash_, fragment = rest.partition("#")
    options: dict[str, Any] = {}
    kept: list[str] = []
    for piece in query.split("&"):
        if not piece:
            continue
        pairs = parse_qsl(piece, keep_blank_values=True)
        name, value = pairs[0] if pairs else (piece, "")
        convert = URL_LAYER_OPTIONS.get(name)
        if convert is None:
            kept.append(piece)  # redis-py's business (db, ssl_cert_reqs, ...), kept as written
            continue
        if name in options:
            raise LayerConfigError(f"{_redact(url)}: option {name!r} is given more than once")
        try:
            options[name] = convert(value)
        except ValueError:
            kind = "an integer" if convert is int else "a number"
            raise LayerConfigError(
                f"{_redact(url)}: option {name}={value!r} must be {kind}"
            ) from None
    rebuilt = head + (f"?{'&'.join(kept)}" if kept else "") + hash_ + fragment
    return rebuilt, options


def layer_config_from_url(url: str) -> dict[str, dict[str, Any]]:
    """The ``CHANNEL_LAYERS`` dict that a layer URL stands for (the ``"default"`` alias only).

    * ``memory://`` (optionally ``memory://?capacity=500&expiry=30``) is the in-memory layer.
    * ``redis://``, ``rediss://`` and ``unix://`` URLs are the Redis layer, with the URL as its
      one host; several URLs separated by commas are several hosts (shards), in order.

    The query parameters ``prefix``, ``expiry``, ``group_expiry``, ``capacity``,
    ``max_message_size``, ``retry_timeout`` and ``liveness_timeout`` are layer options: they are
    taken out of the URL and put in ``CONFIG`` (``expiry``, ``group_expiry``, ``retry_timeout``,
    ``liveness_timeout`` as float, ``capacity``/``max_message_size`` as int; the layer then
    checks their ranges). ``prefix``, ``retry_timeout`` and ``liveness_timeout`` are the Redis
    layer's only. Any other parameter stays in the Redis URL, for redis-py. When there are
    several URLs, an option may be given on any of them but must not be given two different
    values.

    >>> layer_config_from_url("redis://cache:6379/0?capacity=500&ssl_cert_reqs=none")
    {'default': {'BACKEND': 'roomcast.layers.redis.RedisChannelLayer', 'CONFIG': {'hosts': \
['redis://cache:6379/0?ssl_cert_reqs=none'], 'capacity': 500}}}

    Raises :class:`LayerConfigError` for an empty URL, an unknown scheme, a bad option value,
    or ``memory://`` given with other URLs or with anything but layer options.
    """
    urls = _split_urls(url)
    if not urls:
        raise LayerConfigError("the layer URL is empty; expected memory:// or redis://host:port")
    hosts: list[str] = []
    config: dict[str, Any] = {}
    memory = False
    for one in urls:
        scheme = urlsplit(one).scheme.lower() if "://" in one else ""
        if not scheme:
            raise LayerConfigError(
                f"{_redact(one)!r} is not a layer URL; expected memory://, redis://host:port, "
                f"rediss://host:port or unix:///path/to/redis.sock"
            )
        if scheme not in ("memory", *_REDIS_SCHEMES):
            raise LayerConfigError(
                f"unknown layer URL scheme {scheme!r} in {_redact(one)!r}; "
                f"expected memory, redis, rediss or unix"
            )
        rest, options = _take_layer_options(one)
        for name, value in options.items():
            if name in config and config[name] != value:
                raise LayerConfigError(
                    f"option {name!r} is given different values in the layer URLs: "
                    f"{config[name]!r} and {value!r}"
                )
            config[name] = value
        if scheme == "memory":
            memory = True
            if rest.strip("/").lower() != "memory:":
                raise LayerConfigError(
                    f"{_redact(one)!r}: memory:// takes no host, path or other parameters, only "
                    f"layer options "
                    f"({', '.join(o for o in URL_LAYER_OPTIONS if o not in REDIS_ONLY_OPTIONS)})"
                )
        else:
            hosts.append(rest)
    if memory:
        if hosts:
            raise LayerConfigError("memory:// cannot be combined with other layer URLs")
        for name in REDIS_ONLY_OPTIONS:
            if name in config:
                raise LayerConfigError(f"memory://: {name!r} is an option of the Redis layer only")
        return {DEFAULT_CHANNEL_LAYER: {"BACKEND": MEMORY_BACKEND, "CONFIG": config}}
    return {DEFAULT_CHANNEL_LAYER: {"BACKEND": REDIS_BACKEND, "CONFIG": {"hosts": hosts, **config}}}


# Building one layer ------------------------------------------------------------------------


_LAYER_METHODS = ("send", "receive", "new_channel", "group_add", "group_discard", "group_send")


def _import_backend(alias: str, path: Any) -> type[BaseChannelLayer]:
    where = f"CHANNEL_LAYERS[{alias!r}]['BACKEND']"
    if not isinstance(path, str) or not path:
        raise LayerConfigError(
            f"{where} must be a dotted path such as {MEMORY_BACKEND!r}, got {path!r}"
        )
    module_name, dot, name = path.rpartition(".")
    if not dot or not module_name or not name:
        raise LayerConfigError(
            f"{where}: cannot import {path!r}: not a dotted path to a class (module.Class)"
        )
    try:
        backend = getattr(importlib.import_module(module_name), name)
    except ImportError as exc:
        raise LayerConfigError(f"{where}: cannot import {path!r}: {exc}") from exc
    except AttributeError:
        raise LayerConfigError(
            f"{where}: cannot import {path!r}: module {module_name!r} has no attribute {name!r}"
        ) from None
    # Any class with Channels' layer methods will do (channels_redis's included), so that a
    # project can switch backends by changing one string.
    # (channels_redis's pub/sub layer lends its methods through __getattr__ on instances.)
    if not isinstance(backend, type) or not (
        all(callable(getattr(backend, method, None)) for method in _LAYER_METHODS)
        or hasattr(backend, "__getattr__")
    ):
        raise LayerConfigError(
            f"{where}: {path!r} is not a channel layer class (it needs {', '.join(_LAYER_METHODS)})"
        )
    return cast("type[BaseChannelLayer]", backend)


def _check_options(
    alias: str, path: str, backend: type, config: Mapping[str, Any], config_key: str
) -> None:
    """Every key of ``config`` must be a keyword the backend's constructor accepts."""
    where = f"CHANNEL_LAYERS[{alias!r}][{config_key!r}]"
    try:
        signature = inspect.signature(backend)
    except (TypeError, ValueError):  # pragma: no cover - a constructor with no signature
        return
    params = signature.parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        accepted = sorted(
            p.name
            for p in params
            if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )
        for key in config:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise LayerConfigError(
                    f"{where}: unknown option {key!r} for {path} "
                    f"(accepted: {', '.join(accepted) or 'none'}){hint}"
                )
    try:
        signature.bind(**config)
    except TypeError as exc:
        raise LayerConfigError(f"{where}: {exc} (for {path})") from None


def _takes_alias(backend: type) -> bool:
    """Whether ``backend`` is a roomcast layer with an ``alias`` option (the Redis layer)."""
    if not issubclass(backend, BaseChannelLayer):
        return False  # someone else's ``alias`` might mean something else
    try:
        return "alias" in inspect.signature(backend).parameters
    except (TypeError, ValueError):  # pragma: no cover - a constructor with no signature
        return False


def build_layer(
    alias: str, entry: Mapping[str, Any], *, config_key: str = "CONFIG"
) -> BaseChannelLayer:
    """A new layer from one ``CHANNEL_LAYERS`` entry (``{"BACKEND": ..., "CONFIG": {...}}``).

    ``alias`` names the layer in error messages, and is given to a roomcast layer that takes an
    ``alias`` option (the Redis layer reports its readiness under it) unless the options set
    one. The entry is checked before anything is built:
    its keys (``BACKEND``, ``CONFIG`` and Channels' ``TEST_CONFIG``), that ``BACKEND`` imports
    and is a layer class (Channels' layer methods), and that every key of the options is a
    keyword its constructor takes. The options are ``entry[config_key]``: ``CONFIG``, or
    ``TEST_CONFIG`` for :meth:`ChannelLayerManager.make_test_backend` (which must then be
    there). A :class:`LayerConfigError` raised by the constructor (a bad option value) is
    re-raised with the alias in front.
    """
    where = f"CHANNEL_LAYERS[{alias!r}]"
    if not isinstance(entry, Mapping):
        raise LayerConfigError(
            f"{where} must be a dict with 'BACKEND' and 'CONFIG', got {type(entry).__name__}"
        )
    for key in entry:
        if key not in _ENTRY_KEYS:
            raise LayerConfigError(
                f"{where}: unknown key {key!r} (allowed: {', '.join(_ENTRY_KEYS)})"
            )
    if "BACKEND" not in entry:
        raise LayerConfigError(
            f"{where} has no 'BACKEND'; for example {{'BACKEND': {MEMORY_BACKEND!r}}}"
        )
    if config_key not in ("CONFIG", "TEST_CONFIG"):
        raise ValueError(f"config_key must be 'CONFIG' or 'TEST_CONFIG', got {config_key!r}")
    if config_key == "TEST_CONFIG" and "TEST_CONFIG" not in entry:
        raise LayerConfigError(
            f"{where} has no 'TEST_CONFIG' (make_test_backend builds the layer from it; "
            f"for example 'TEST_CONFIG': {{'expiry': 1}})"
        )
    path = entry["BACKEND"]
    backend = _import_backend(alias, path)
    config = entry.get(config_key)
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise LayerConfigError(
            f"{where}[{config_key!r}] must be a dict of options, got {type(config).__name__}"
        )
    for key in config:
        if not isinstance(key, str):
            raise LayerConfigError(
                f"{where}[{config_key!r}]: option names must be str, got {key!r}"
            )
    _check_options(alias, path, backend, config, config_key)
    if "alias" not in config and _takes_alias(backend):
        config = {**config, "alias": alias}
    try:
        return backend(**config)
    except LayerConfigError as exc:
        raise LayerConfigError(f"{where}[{config_key!r}]: {exc}") from exc


# Finding CHANNEL_LAYERS ------------------------------------------------------------------


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _from_django() -> Any | None:
    """Django's ``settings.CHANNEL_LAYERS``, or None if Django is absent, unconfigured or lacks it.

    Django is imported only if ``DJANGO_SETTINGS_MODULE`` is set or something already imported
    ``django.conf`` (``settings.configure()`` cannot have been called otherwise).
    """
    module_env = _env(ENV_DJANGO_SETTINGS)
    if module_env is None and "django.conf" not in sys.modules:
        return None
    try:
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured
    except ImportError:
        return None
    if module_env is None and not settings.configured:
        return None
    try:
        return getattr(settings, "CHANNEL_LAYERS", None)
    except (ImportError, ImproperlyConfigured) as exc:
        where = f"{ENV_DJANGO_SETTINGS}={module_env!r}" if module_env else "Django settings"
        raise LayerConfigError(f"{where}: cannot load Django settings: {exc}") from exc


def _from_settings_module(module_name: str) -> Any:
    where = f"{ENV_SETTINGS_MODULE}={module_name!r}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LayerConfigError(f"{where}: cannot import module {module_name!r}: {exc}") from exc
    try:
        return module.CHANNEL_LAYERS
    except AttributeError:
        raise LayerConfigError(
            f"{where}: module {module_name!r} has no CHANNEL_LAYERS setting"
        ) from None


def resolve_channel_layers() -> tuple[dict[str, Any], str]:
    """``CHANNEL_LAYERS`` from the first source that has it, and a description of that source.

    The order is Django settings, ``ROOMCAST_SETTINGS``, ``ROOMCAST_LAYER_URL``, then the
    in-memory default (see the module docstring). Reads the environment afresh on each call.
    """
    raw: Any = _from_django()
    source = "Django settings"
    if raw is None and (module_name := _env(ENV_SETTINGS_MODULE)) is not None:
        raw = _from_settings_module(module_name)
        source = f"{ENV_SETTINGS_MODULE}={module_name}"
    if raw is None and (url := _env(ENV_LAYER_URL)) is not None:
        try:
            raw = layer_config_from_url(url)
        except LayerConfigError as exc:
            raise LayerConfigError(f"{ENV_LAYER_URL}: {exc}") from exc
        source = ENV_LAYER_URL
    if raw is None:
        raw = DEFAULT_CHANNEL_LAYERS
        source = "the built-in default"
    if not isinstance(raw, Mapping):
        raise LayerConfigError(
            f"CHANNEL_LAYERS (from {source}) must be a dict of alias -> "
            f"{{'BACKEND': ..., 'CONFIG': ...}}, got {type(raw).__name__}"
        )
    for alias in raw:
        if not isinstance(alias, str):
            raise LayerConfigError(
                f"CHANNEL_LAYERS (from {source}): aliases must be str, got {alias!r}"
            )
    return dict(raw), source


# The per-process registry ------------------------------------------------------------------


class ChannelLayerManager:
    """The layers of this process, one per alias, built from ``CHANNEL_LAYERS`` on first use.

    ``CHANNEL_LAYERS`` is resolved once, on first need, and kept until :meth:`reset`. A failed
    resolution or build is not remembered: the next call tries again. Safe to use from several
    threads (one instance per alias even under a race).

    **Django's ``override_settings``.** Once the settings have been read with Django
    configured, the registry listens to Django's ``setting_changed`` signal, as Channels' does:
    a change of ``CHANNEL_LAYERS`` (``override_settings`` entering or leaving, pytest-django's
    ``settings`` fixture) resets it, so the next :func:`get_channel_layer` builds from the new
    value. Layers built before are dropped, not closed. Without Django nothing is imported and
    nothing listens.

    Channels' API is here too: ``configs`` and ``backends`` (the resolved setting and the
    layers built so far), ``alias in channel_layers``, ``channel_layers[alias]``,
    :meth:`set`, :meth:`make_backend` and :meth:`make_test_backend`.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._configs: dict[str, Any] | None = None
        self._source = ""
        self._layers: dict[str, BaseChannelLayer] = {}

    def _load(self) -> dict[str, Any]:
        with self._lock:
            if self._configs is None:
                self._configs, self._source = resolve_channel_layers()
                _follow_django_settings(self)
            return self._configs

    @property
    def configs(self) -> dict[str, Any]:
        """The resolved ``CHANNEL_LAYERS`` dict (a shallow copy), as Channels' property."""
        return dict(self._load())

    @property
    def backends(self) -> dict[str, BaseChannelLayer]:
        """The layers built (or :meth:`set`) so far, by alias (a copy), as Channels' attribute."""
        with self._lock:
            return dict(self._layers)

    @property
    def source(self) -> str:
        """Where ``CHANNEL_LAYERS`` came from, e.g. ``"ROOMCAST_LAYER_URL"``."""
        with self._lock:
            self._load()
            return self._source

    def _entry(self, alias: str) -> Any:
        configs = self._load()
        if alias not in configs:
            configured = ", ".join(repr(a) for a in configs) or "none"
            raise LayerConfigError(
                f"no channel layer {alias!r} in CHANNEL_LAYERS (from {self._source}); "
                f"configured: {configured}"
            )
        return configs[alias]

    def get(self, alias: str = DEFAULT_CHANNEL_LAYER) -> BaseChannelLayer:
        """The layer for ``alias``, built on first call and the same object afterwards."""
        with self._lock:
            layer = self._layers.get(alias)
            if layer is not None:
                return layer
            layer = build_layer(alias, self._entry(alias))
            self._layers[alias] = layer
            return layer

    __getitem__ = get

    def __contains__(self, alias: object) -> bool:
        """Whether ``CHANNEL_LAYERS`` configures ``alias``."""
        return alias in self._load()

    def make_backend(self, alias: str) -> BaseChannelLayer:
        """A new layer from ``alias``'s ``CONFIG``, not registered (Channels' method)."""
        with self._lock:
            entry = self._entry(alias)
        return build_layer(alias, entry)

    def make_test_backend(self, alias: str) -> BaseChannelLayer:
        """A new layer from ``alias``'s ``TEST_CONFIG``, not registered (Channels' method).

        Raises :class:`LayerConfigError` (an ``InvalidChannelLayerError``, as in Channels) if
        the entry has no ``TEST_CONFIG``.
        """
        with self._lock:
            entry = self._entry(alias)
        return build_layer(alias, entry, config_key="TEST_CONFIG")

    def set(self, alias: str, layer: BaseChannelLayer) -> BaseChannelLayer | None:
        """Use ``layer`` for ``alias`` (tests); returns the layer it replaces, if one was built."""
        with self._lock:
            old = self._layers.get(alias)
            self._layers[alias] = layer
            return old

    def reset(self) -> None:
        """Forget every layer and the resolved settings; the next use re-reads them.

        Forgotten layers are not closed (closing is async): close them first if they hold
        connections.
        """
        with self._lock:
            self._layers.clear()
            self._configs = None
            self._source = ""

    def _setting_changed(self, *, setting: str, **kwargs: Any) -> None:
        """Django's ``setting_changed`` receiver: ``CHANNEL_LAYERS`` changed, start afresh."""
        if setting == "CHANNEL_LAYERS":
            self.reset()


def _follow_django_settings(manager: ChannelLayerManager) -> None:
    """Connect ``manager`` to Django's ``setting_changed`` if Django is loaded and configured.

    Never imports Django on its own: only if something (``_from_django``, the project)
    already imported ``django.conf``. Connecting again is a no-op (Django keys a bound method
    by its object and function); the receiver is held weakly, so a dropped manager is
    disconnected.
    """
    if "django.conf" not in sys.modules:
        return
    try:
        from django.conf import settings
        from django.core.signals import setting_changed
    except ImportError:  # pragma: no cover - django.conf is loaded, so Django is there
        return
    if not settings.configured:
        return
    setting_changed.connect(manager._setting_changed)


channel_layers = ChannelLayerManager()
"""The process-wide registry behind :func:`get_channel_layer`."""


def get_channel_layer(alias: str = DEFAULT_CHANNEL_LAYER) -> BaseChannelLayer:
    """The channel layer for ``alias``: one instance per alias per process (see the module doc).

    Raises :class:`LayerConfigError` if the settings are wrong or ``alias`` is not configured.
    """
    return channel_layers.get(alias)
