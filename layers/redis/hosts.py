"""channels_redis's ``hosts`` option, turned into connection recipes for the layer's own links.

Each entry is one shard:

* a URL: ``redis://[[user]:password@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path.sock``,
  with redis-py's query options (``?socket_timeout=2&ssl_ca_certs=/ca.pem``);
* a ``(host, port)`` tuple or list;
* a dict: ``{"address": URL or (host, port), **options}``,
  ``{"host": ..., "port": ..., **options}``, or Sentinel: ``{"sentinels": [(host, port), ...],
  "master_name": "mymaster", "sentinel_kwargs": {...}, **options}``.

The layer opens its sockets itself (:mod:`roomcast.layers.redis.link`), so of redis-py's options
it honours those that say how to reach and greet a server: ``host``, ``port``, ``path`` /
``unix_socket_path``, ``db``, ``username``, ``password``, ``credential_provider``,
``client_name``, ``protocol`` (2 or 3), ``socket_timeout``, ``socket_connect_timeout``,
``socket_keepalive``, ``ssl`` and every ``ssl_*`` option (``ssl_cert_reqs``, ``ssl_ca_certs``,
``ssl_ca_data``, ``ssl_ca_path``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_password``,
``ssl_check_hostname``, ``ssl_min_version``, ``ssl_ciphers``, ``ssl_include_verify_flags``,
``ssl_exclude_verify_flags``). The options of redis-py's pool and client machinery
(``max_connections``, ``health_check_interval``, ``retry``, ``decode_responses``, ...) are
accepted, so a channels_redis ``CONFIG`` keeps working, and have no effect: the layer keeps a
few connections per host whatever the load, retries by its own ``retry_timeout``, and always
reads bytes. Any other name is refused when the layer is built.

Sentinel: the master's address is asked of the Sentinels (redis-py's public
``Sentinel.discover_master``) each time a link connects, and the server is then asked its
``ROLE``: a link never settles on a replica, so after a failover every link finds the new master.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel

from ..exceptions import LayerConfigError

DEFAULT_HOST = ("localhost", 6379)
# Timeouts bound how long a dead or partitioned server can hold a caller; the socket timeout
# must exceed the blocking timeouts the layer uses (its blocking pops wait at most 2 s).
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_SOCKET_TIMEOUT = 10.0

HONOURED = frozenset(
    {
        "host",
        "port",
        "path",
        "unix_socket_path",
        "db",
        "username",
        "password",
        "credential_provider",
        "client_name",
        "protocol",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "ssl",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
        "ssl_include_verify_flags",
        "ssl_exclude_verify_flags",
    }
)
IGNORED = frozenset(
    {
        "max_connections",
        "health_check_interval",
        "retry",
        "retry_on_timeout",
        "retry_on_error",
        "decode_responses",
        "encoding",
        "encoding_errors",
        "socket_read_size",
        "socket_keepalive_options",
        "single_connection_client",
        "auto_close_connection_pool",
        "lib_name",
        "lib_version",
        "driver_info",
        "legacy_responses",
        "timeout",  # the pool's wait for a free connection: there is no pool
        "connection_class",
    }
)

_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


@dataclass(frozen=True)
class Address:
    """Where one server listens, and how to speak to it once connected."""

    host: str | None = None  # TCP host (None for a unix socket)
    port: int = 6379
    path: str | None = None  # unix socket path
    ssl: ssl.SSLContext | None = None
    server_hostname: str | None = None
    username: str | None = None
    password: str | None = None
    credential_provider: Any = None  # redis-py's CredentialProvider: get_credentials_async()
    db: int = 0
    client_name: str | None = None
    protocol: int = 2
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT
    socket_timeout: float | None = DEFAULT_SOCKET_TIMEOUT
    keepalive: bool = False
    require_master: bool = False  # Sentinel: refuse a server whose ROLE is not master
    extra: dict[str, Any] = field(default_factory=dict)  # accepted options that do nothing

    def at(self, host: str, port: int) -> Address:
        return replace(self, host=host, port=port, path=None, server_hostname=host)


class HostSpec:
    """One shard's connection recipe; ``await address()`` says where to connect now."""

    def __init__(self, entry: Any) -> None:
        self.description, self._address, self._sentinel = _parse(entry)
        self._sentinel_client: Sentinel | None = None
        self._sentinel_loop: asyncio.AbstractEventLoop | None = None

    @property
    def connect_timeout(self) -> float | None:
        return self._address.connect_timeout

    @property
    def socket_timeout(self) -> float | None:
        return self._address.socket_timeout

    async def address(self) -> Address:
        """The address to connect to: fixed, or the master the Sentinels name now."""
        if self._sentinel is None:
            return self._address
        loop = asyncio.get_running_loop()
        if self._sentinel_loop is not loop or self._sentinel_client is None:
            _, sentinels, sentinel_kwargs = self._sentinel
            if sentinel_kwargs is None:  # a dead Sentinel must not hold a reconnection up
                timeout = self._address.connect_timeout
                sentinel_kwargs = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
            self._sentinel_client = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
            self._sentinel_loop = loop  # redis-py's connections belong to the loop that made them
        sentinel = self._sentinel_client
        host, port = await sentinel.discover_master(self._sentinel[0])
        return self._address.at(str(host), int(port))

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


_Sentinel = tuple[str, list[tuple[str, int]], dict[str, Any] | None]


def _parse(entry: Any) -> tuple[str, Address, _Sentinel | None]:
    if isinstance(entry, str):
        return _from_url(entry, {})
    if isinstance(entry, (tuple, list)):
        if len(entry) != 2 or not isinstance(entry[0], str) or not isinstance(entry[1], int):
            raise LayerConfigError(f"a host tuple must be (host: str, port: int), got {entry!r}")
        host, port = entry
        return f"{host}:{port}", _address({"host": host, "port": port}, f"host {entry!r}"), None
    if isinstance(entry, Mapping):
        options = dict(entry)
        if "sentinels" in options:
            return _from_sentinel(options)
        if "address" in options:
            address = options.pop("address")
            if isinstance(address, str):
                return _from_url(address, options)
            if not isinstance(address, (tuple, list)) or len(address) != 2:
                raise LayerConfigError(
                    f"a host's 'address' must be a URL or (host, port), got {address!r}"
                )
            return _parse({**options, "host": address[0], "port": address[1]})
        where = f"host {_redacted(options)!r}"
        if "path" in options or "unix_socket_path" in options:
            path = options.get("path") or options.get("unix_socket_path")
            return f"unix://{path}", _address(options, where), None
        description = f"{options.get('host', 'localhost')}:{options.get('port', 6379)}"
        return description, _address(options, where), None
    raise LayerConfigError(f"a host must be a URL, a (host, port) tuple or a dict, got {entry!r}")


def _redacted(options: Mapping[str, Any]) -> dict[str, Any]:
    return {key: "***" if "password" in key else value for key, value in options.items()}


def _from_url(url: str, options: Mapping[str, Any]) -> tuple[str, Address, None]:
    scheme = url.partition("://")[0]
    if scheme not in ("redis", "rediss", "unix"):
        raise LayerConfigError(f"host URL {url!r} must start with redis://, rediss:// or unix://")
    description = url.rpartition("@")[2] if "@" in url else url.partition("://")[2]
    shown = f"{scheme}://{description}"
    try:
        parsed: dict[str, Any] = dict(parse_url(url))
    except ValueError as exc:
        raise LayerConfigError(f"host URL {shown!r}: {exc}") from None
    parsed.pop("connection_class", None)
    if scheme == "rediss":
        parsed["ssl"] = True
    merged = {**parsed, **options}
    if scheme == "unix" and "path" not in merged:
        raise LayerConfigError(f"host URL {shown!r} names no socket path")
    return shown, _address(merged, f"host URL {shown!r}"), None


def _from_sentinel(options: dict[str, Any]) -> tuple[str, Address, _Sentinel]:
    raw = options.pop("sentinels")
    try:
        sentinels = [(str(host), int(port)) for host, port in raw]
    except (TypeError, ValueError):
        raise LayerConfigError(
            f"'sentinels' must be a list of (host, port) pairs, got {raw!r}"
        ) from None
    if not sentinels:
        raise LayerConfigError("'sentinels' must name at least one Sentinel")
    master_name = options.pop("master_name", None)
    if not master_name:
        raise LayerConfigError("a Sentinel host needs 'master_name' beside 'sentinels'")
    sentinel_kwargs = options.pop("sentinel_kwargs", None)
    if sentinel_kwargs is not None and not isinstance(sentinel_kwargs, Mapping):
        raise LayerConfigError(f"'sentinel_kwargs' must be a dict, got {sentinel_kwargs!r}")
    address = _address({**options, "host": "sentinel-named"}, f"Sentinel host {master_name!r}")
    address = replace(address, require_master=True)
    kwargs = dict(sentinel_kwargs) if sentinel_kwargs is not None else None
    return f"sentinel:{master_name}", address, (str(master_name), sentinels, kwargs)


def _address(options: Mapping[str, Any], where: str) -> Address:
    """Check every option name and value; build the :class:`Address` they describe."""
    unknown = sorted(set(options) - HONOURED - IGNORED)
    if unknown:
        raise LayerConfigError(
            f"{where}: unknown option(s) {', '.join(unknown)} "
            f"(the layer takes redis-py's connection options: {', '.join(sorted(HONOURED))})"
        )
    get = options.get

    def number(name: str, default: float | None) -> float | None:
        value = get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise LayerConfigError(f"{where}: {name} must be a positive number, got {value!r}")
        return float(value)

    protocol = get("protocol", 2)
    if protocol in ("2", "3"):
        protocol = int(protocol)
    if protocol not in (2, 3):
        raise LayerConfigError(f"{where}: protocol must be 2 or 3, got {protocol!r}")
    db = get("db", 0)
    if isinstance(db, bool) or not isinstance(db, int) or db < 0:
        raise LayerConfigError(f"{where}: db must be a non-negative int, got {db!r}")
    port = get("port", 6379)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise LayerConfigError(f"{where}: port must be an int in 1-65535, got {port!r}")
    path = get("path") or get("unix_socket_path")
    host = None if path else str(get("host") or "localhost")
    context = _ssl_context(options, where) if get("ssl") else None
    return Address(
        host=host,
        port=port,
        path=path,
        ssl=context,
        server_hostname=host,
        username=get("username"),
        password=get("password"),
        credential_provider=get("credential_provider"),
        db=db,
        client_name=get("client_name"),
        protocol=protocol,
        connect_timeout=number("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        socket_timeout=number("socket_timeout", DEFAULT_SOCKET_TIMEOUT),
        keepalive=bool(get("socket_keepalive", False)),
        extra={key: options[key] for key in options if key in IGNORED},
    )


def _ssl_context(options: Mapping[str, Any], where: str) -> ssl.SSLContext:
    """An SSL context from redis-py's ``ssl_*`` options, with redis-py's defaults."""
    get = options.get
    cert_reqs = get("ssl_cert_reqs", "required")
    if isinstance(cert_reqs, str):
        if cert_reqs.lower() not in _CERT_REQS:
            raise LayerConfigError(
                f"{where}: ssl_cert_reqs must be none, optional or required, got {cert_reqs!r}"
            )
        cert_reqs = _CERT_REQS[cert_reqs.lower()]
    elif cert_reqs is None:
        cert_reqs = ssl.CERT_NONE
    if not isinstance(cert_reqs, ssl.VerifyMode):
        raise LayerConfigError(f"{where}: ssl_cert_reqs {cert_reqs!r} is not a verify mode")
    check_hostname = get("ssl_check_hostname", True)
    if isinstance(check_hostname, str):
        check_hostname = check_hostname.lower() in ("1", "true", "yes", "on")
    try:
        context = ssl.create_default_context()
        context.check_hostname = bool(check_hostname) and cert_reqs != ssl.CERT_NONE
        context.verify_mode = cert_reqs
        for flag in get("ssl_include_verify_flags") or ():
            context.verify_flags |= flag
        for flag in get("ssl_exclude_verify_flags") or ():
            context.verify_flags &= ~flag
        certfile = get("ssl_certfile") or get("ssl_keyfile")
        if certfile:
            context.load_cert_chain(
                certfile=certfile,
                keyfile=get("ssl_keyfile"),
                password=get("ssl_password"),
            )
        if get("ssl_ca_certs") or get("ssl_ca_data") or get("ssl_ca_path"):
            context.load_verify_locations(
                cafile=get("ssl_ca_certs"), capath=get("ssl_ca_path"), cadata=get("ssl_ca_data")
            )
        min_version = get("ssl_min_version")
        if min_version is not None:
            context.minimum_version = ssl.TLSVersion(min_version)
        ciphers = get("ssl_ciphers")
        if ciphers is not None:
            context.set_ciphers(str(ciphers))
    except (OSError, ssl.SSLError, ValueError, TypeError) as exc:
        raise LayerConfigError(f"{where}: bad TLS option: {exc}") from exc
    return context
