"""channels_redis's ``hosts`` option, turned into Redis clients.

Each entry is one shard:

* a URL: ``redis://[:password@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path.sock``;
* a ``(host, port)`` tuple or list;
* a dict: ``{"address": URL, **client_options}``, ``{"host": ..., "port": ..., **options}``,
  or Sentinel: ``{"sentinels": [(host, port), ...], "master_name": "mymaster",
  "sentinel_kwargs": {...}, **options}``.

Clients are made per event loop (redis-py connections belong to the loop that opened them).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, ConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..exceptions import LayerConfigError

DEFAULT_HOST = ("localhost", 6379)
# Timeouts bound how long a dead or partitioned server can hold a caller; they must exceed the
# blocking timeouts the layer uses (BLPOP waits at most 2 s).
_DEFAULTS: dict[str, Any] = {"socket_connect_timeout": 5.0, "socket_timeout": 10.0}


class HostSpec:
    """One shard's connection recipe; ``client()`` makes a fresh client on the running loop."""

    def __init__(self, entry: Any) -> None:
        self.description, self._make = _parse(entry)

    def client(self, *, retries: int = 2) -> Redis:
        """A client whose commands retry a dropped connection ``retries`` times, with backoff."""
        retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries)
        client: Redis = self._make(retry)
        return client

    def __repr__(self) -> str:
        return f"HostSpec({self.description})"


def parse_hosts(hosts: Sequence[Any] | None) -> list[HostSpec]:
    if hosts is None:
        hosts = [DEFAULT_HOST]
    if isinstance(hosts, (str, bytes)) or not isinstance(hosts, Sequence):
        raise LayerConfigError(f"hosts must be a list of hosts, got {hosts!r}")
    if not hosts:
        raise LayerConfigError("hosts must name at least one Redis host")
    return [HostSpec(entry) for entry in hosts]


def _options(extra: Mapping[str, Any], retry: Retry) -> dict[str, Any]:
    options = {**_DEFAULTS, **extra}
    options.setdefault("retry", retry)
    options.setdefault("retry_on_error", [RedisConnectionError, RedisTimeoutError])
    return options


def _parse(entry: Any) -> tuple[str, Any]:
    if isinstance(entry, str):
        return _from_url(entry, {})
    if isinstance(entry, (tuple, list)):
        if len(entry) != 2 or not isinstance(entry[0], str) or not isinstance(entry[1], int):
            raise LayerConfigError(f"a host tuple must be (host: str, port: int), got {entry!r}")
        host, port = entry
        return f"{host}:{port}", lambda retry: Redis(host=host, port=port, **_options({}, retry))
    if isinstance(entry, Mapping):
        options = dict(entry)
        if "sentinels" in options:
            return _from_sentinel(options)
        if "address" in options:
            address = options.pop("address")
            if isinstance(address, str):
                return _from_url(address, options)
            return _parse({**options, "host": address[0], "port": address[1]})
        description = f"{options.get('host', 'localhost')}:{options.get('port', 6379)}"
        return description, lambda retry: Redis(**_options(options, retry))
    raise LayerConfigError(f"a host must be a URL, a (host, port) tuple or a dict, got {entry!r}")


def _from_url(url: str, options: Mapping[str, Any]) -> tuple[str, Any]:
    scheme = url.partition("://")[0]
    if scheme not in ("redis", "rediss", "unix"):
        raise LayerConfigError(f"host URL {url!r} must start with redis://, rediss:// or unix://")
    _check_url_options(url)
    description = url.rpartition("@")[2] if "@" in url else url.partition("://")[2]
    return f"{scheme}://{description}", lambda retry: Redis.from_url(
        url, **_options(options, retry)
    )


def _check_url_options(url: str) -> None:
    """A misspelt query option fails here, not as a TypeError at the first connection."""
    try:
        options = parse_url(url)
    except ValueError as exc:
        raise LayerConfigError(f"host URL {url!r}: {exc}") from None
    connection_class: Any = options.pop("connection_class", Connection)  # a class: hashable
    unknown = sorted(set(options) - _accepted(connection_class))
    if unknown:
        raise LayerConfigError(
            f"host URL {url!r}: unknown option(s) {', '.join(unknown)} "
            f"(redis-py's {connection_class.__name__} does not take them)"
        )


@cache
def _accepted(connection_class: type) -> frozenset[str]:
    """Keyword arguments a connection (and its pool, which URLs also configure) accepts."""
    names: set[str] = set()
    for cls in (*connection_class.__mro__, ConnectionPool):
        init = cls.__dict__.get("__init__")
        if init is not None:
            names.update(inspect.signature(init).parameters)
    return frozenset(names - {"self", "kwargs", "connection_kwargs"})


def _from_sentinel(options: dict[str, Any]) -> tuple[str, Any]:
    sentinels = [tuple(s) for s in options.pop("sentinels")]
    master_name = options.pop("master_name", None)
    if not master_name:
        raise LayerConfigError("a Sentinel host needs 'master_name' beside 'sentinels'")
    sentinel_kwargs = options.pop("sentinel_kwargs", None)

    def make(retry: Retry) -> Redis:
        sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **_DEFAULTS)
        client: Redis = sentinel.master_for(master_name, **_options(options, retry))
        return client

    return f"sentinel:{master_name}", make
