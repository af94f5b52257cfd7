"""One typed Config object: the CLI only fills it, everything else reads it.

It also loads the application (``module:attribute``, optionally a factory) and wraps ASGI 2
style applications with asgiref (``--asgi-protocol``: auto-detected as Daphne does, or forced),
so the rest of the gateway sees only ASGI 3 callables.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import ipaddress
import logging
import os
import re
import ssl
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

from asgiref.compatibility import double_to_single_callable, is_double_callable
from roomcast.gateway.endpoints import Endpoint, EndpointError, TLSFiles, parse_endpoint

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("roomcast.gateway.error")

SERVER_NAME = "roomcast"
MIB = 1024 * 1024
LOG_FORMAT = (
    "%(asctime)s %(levelname)-8s %(message)s"  # the roomcast.gateway.error lines (--log-fmt)
)
HEADER_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")  # RFC 9110 token: a header name


class ConfigError(Exception):
    """A setting is wrong or the application cannot be loaded; the message is one clear line."""


@dataclass
class Config:
    """Every setting of a gateway process, with the defaults a user gets from the CLI."""

    app: str | ASGIApp
    host: str = "127.0.0.1"
    port: int = 8000
    uds: str | None = None
    fd: int | None = None
    endpoints: list[str] = field(default_factory=list)  # Daphne's -e strings (endpoints.py)
    # Whether host/port is listened on beside uds/fd/endpoints: None, as in Daphne, when none
    # of those is given (the CLI sets True when -b or -p is).
    listen_tcp: bool | None = None
    root_path: str = ""
    proxy_headers: bool = False
    forwarded_allow_ips: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    access_log: str | None = "-"  # a path, "-" for stdout (Daphne's default), None for off
    verbosity: int = 1
    ping_interval: float = 20.0
    ping_timeout: float = 30.0
    websocket_max_message_size: int = MIB  # 0: no limit (Daphne's meaning; not advisable)
    websocket_max_frame_size: int = MIB  # one frame's payload on the wire; 0: no limit
    ws_protocols: list[str] = field(default_factory=list)  # subprotocols the server picks
    asgi_protocol: Literal["auto", "asgi2", "asgi3"] = "auto"
    websocket_per_message_deflate: bool = True
    websocket_write_buffer: int = MIB  # bytes queued for a client that does not read
    websocket_write_timeout: float = 10.0  # seconds over that limit before we close 1008
    application_close_timeout: float = 10.0
    server_name: str | None = SERVER_NAME
    workers: int = 1
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: str | None = None
    lifespan: Literal["auto", "on", "off"] = "auto"
    timeout_keep_alive: float = 5.0
    timeout_request_headers: float = 10.0  # slowloris: the whole head must arrive by then
    limit_concurrency: int | None = None
    limit_request_body: int = 16 * MIB
    limit_request_head: int = 64 * 1024  # request line and headers; over it: 431
    graceful_timeout: float = 30.0
    factory: bool = False
    backlog: int = 2048
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"  # auto: uvloop when installed
    http2: bool = True  # h2 by ALPN, by the connection preface and by Upgrade: h2c
    h2_max_concurrent_streams: int = 100  # SETTINGS_MAX_CONCURRENT_STREAMS; more: GOAWAY
    # Daphne's flags. Timeouts are seconds; None means no limit.
    http_timeout: float | None = None  # no http.response.start by then: 503, app cancelled
    websocket_timeout: float | None = None  # an accepted WebSocket is closed (1000) after this
    websocket_connect_timeout: float | None = 5.0  # not accepted by then: denied with 503
    proxy_headers_host: str = "X-Forwarded-For"  # with proxy_headers: the client's address
    proxy_headers_port: str = "X-Forwarded-Port"  # with proxy_headers: the client's port
    log_fmt: str = LOG_FORMAT  # logging format of roomcast.gateway.error (not the access log)
    loop_lag_threshold: float = 1.0  # seconds the loop may be blocked before a warning; 0: off
    reload: bool = False  # --reload: a supervisor restarts the server on changes (reload.py)
    reload_dirs: list[str] = field(default_factory=list)  # default: the current directory
    reload_includes: list[str] = field(default_factory=list)  # globs beside *.py
    reload_excludes: list[str] = field(default_factory=list)
    health_path: str | None = None  # answered by the gateway: 200 while the loop turns
    ready_path: str | None = None  # answered by the gateway: 503 while not ready (probes.py)
    # Operations (docs/operations.md): logs, metrics, limits per client and per WebSocket.
    log_format: Literal["text", "json"] = "text"  # every project logger and the access log
    log_config: str | None = None  # a dictConfig JSON/YAML or fileConfig ini replacing ours
    log_file: str | None = None  # the server's (not the access) lines; None: stderr
    metrics_port: int | None = None  # /metrics on its own port (roomcast.metrics), never the app's
    metrics_host: str = "127.0.0.1"
    limit_connections_per_client: int | None = None  # WebSockets + requests at once per address
    websocket_max_messages_per_second: float | None = None  # inbound, per connection
    websocket_max_bytes_per_second: float | None = None  # inbound payload bytes, per connection

    def __post_init__(self) -> None:
        for name in ("port", "workers", "backlog", "limit_request_body", "limit_request_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise ConfigError(f"loop must be auto, asyncio or uvloop, got {self.loop!r}")
        if self.lifespan not in ("auto", "on", "off"):
            raise ConfigError(f"lifespan must be auto, on or off, got {self.lifespan!r}")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ConfigError("--ssl-certfile and --ssl-keyfile go together")
        if not isinstance(self.h2_max_concurrent_streams, int) or not (
            1 <= self.h2_max_concurrent_streams <= 2**31 - 1
        ):
            raise ConfigError(
                "h2_max_concurrent_streams must be between 1 and 2**31-1, "
                f"got {self.h2_max_concurrent_streams!r}"
            )
        for name in ("websocket_max_message_size", "websocket_max_frame_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a number of bytes (0: no limit), got {value!r}")
        if self.asgi_protocol not in ("auto", "asgi2", "asgi3"):
            raise ConfigError(
                f"asgi_protocol must be auto, asgi2 or asgi3, got {self.asgi_protocol!r}"
            )
        for protocol in self.ws_protocols:
            if not HEADER_NAME.fullmatch(protocol):
                raise ConfigError(f"WebSocket subprotocol {protocol!r} is not a token")
        for name in ("http_timeout", "websocket_timeout", "websocket_connect_timeout"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or not value > 0):
                raise ConfigError(f"{name} must be a positive number of seconds or None")
        for name in ("proxy_headers_host", "proxy_headers_port"):
            if not HEADER_NAME.fullmatch(getattr(self, name)):
                raise ConfigError(f"{name} {getattr(self, name)!r} is not a header name")
        check_log_format(self.log_fmt)
        for name in ("health_path", "ready_path"):
            value = getattr(self, name)
            if value is not None and (not value.startswith("/") or "?" in value or " " in value):
                raise ConfigError(f"{name} {value!r} must be a path starting with /, no query")
        if self.reload and self.workers > 1:
            raise ConfigError("--reload runs one server process: it cannot go with --workers")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be text or json, got {self.log_format!r}")
        if self.metrics_port is not None and (
            isinstance(self.metrics_port, bool)
            or not isinstance(self.metrics_port, int)
            or not 0 <= self.metrics_port <= 65535
        ):
            raise ConfigError(f"metrics_port must be from 0 to 65535, got {self.metrics_port!r}")
        if self.metrics_port and self.metrics_port == self.port and not (self.uds or self.fd):
            raise ConfigError(f"--metrics-port {self.metrics_port} is the app's port: use another")
        if self.limit_connections_per_client is not None and (
            not isinstance(self.limit_connections_per_client, int)
            or self.limit_connections_per_client < 1
        ):
            raise ConfigError(
                "limit_connections_per_client must be a positive integer (None: no limit), "
                f"got {self.limit_connections_per_client!r}"
            )
        for name in ("websocket_max_messages_per_second", "websocket_max_bytes_per_second"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or not value > 0):
                raise ConfigError(f"{name} must be a positive number (None: none), got {value!r}")
        if self.health_path and self.health_path == self.ready_path:
            raise ConfigError("--health-path and --ready-path must differ")
        # Header names as connections hand them over: lower-cased bytes.
        self.proxy_host_header = self.proxy_headers_host.lower().encode("latin-1")
        self.proxy_port_header = self.proxy_headers_port.lower().encode("latin-1")
        self._forwarded_networks = [
            _network(entry) for entry in self.forwarded_allow_ips if entry != "*"
        ]
        try:
            self._endpoints = [parse_endpoint(text) for text in self.endpoints]
        except EndpointError as exc:
            raise ConfigError(str(exc)) from None
        self._ssl_contexts: dict[TLSFiles, ssl.SSLContext] = {}

    @property
    def has_probes(self) -> bool:
        """A probe path is set: the server answers it itself (see probes.py)."""
        return bool(self.health_path or self.ready_path)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for worker processes: without the loaded TLS contexts (not picklable)."""
        state = self.__dict__.copy()
        state["_ssl_contexts"] = {}
        return state

    @property
    def tls_files(self) -> TLSFiles | None:
        """``--ssl-certfile``/``--ssl-keyfile``: for host/port, ``-u`` and ``--fd`` listeners."""
        if not self.ssl_certfile or not self.ssl_keyfile:
            return None
        return TLSFiles(self.ssl_certfile, self.ssl_keyfile, self.ssl_keyfile_password)

    def listeners(self) -> list[Endpoint]:
        """Every socket to listen on: host/port (see ``listen_tcp``), ``fd``, ``uds``, then
        the ``endpoints`` strings, as Daphne listens on all it is given."""
        found: list[Endpoint] = []
        tcp = self.listen_tcp
        if tcp is None:
            tcp = not (self.uds or self.fd is not None or self.endpoints)
        tls = self.tls_files
        if tcp:
            found.append(Endpoint("tcp", host=self.host.strip("[]"), port=self.port, tls=tls))
        if self.fd is not None:
            found.append(Endpoint("fd", fileno=self.fd, tls=tls))
        if self.uds:
            found.append(Endpoint("unix", path=self.uds, tls=tls))
        found.extend(self._endpoints)
        return found

    def trusts_proxy(self, client_host: str | None) -> bool:
        """Whether proxy headers from ``client_host`` are honoured (``--forwarded-allow-ips``)."""
        if not self.proxy_headers:
            return False
        if "*" in self.forwarded_allow_ips:
            return True
        if client_host is None:  # a unix socket: the peer is on this machine
            return True
        try:
            address = ipaddress.ip_address(client_host)
        except ValueError:
            return client_host in self.forwarded_allow_ips
        return any(address in network for network in self._forwarded_networks)

    def loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop] | None:
        """The event loop to run on: uvloop (the ``fast`` extra) or asyncio's own (None)."""
        if self.loop == "asyncio":
            return None
        try:
            import uvloop
        except ImportError:
            if self.loop == "uvloop":
                raise ConfigError(
                    "--loop uvloop needs uvloop: pip install 'roomcast[fast]'"
                ) from None
            return None
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory

    def ssl_context(self, tls: TLSFiles | None = None) -> ssl.SSLContext | None:
        """The TLS context of ``tls`` (default: ``--ssl-certfile``/``--ssl-keyfile``), loaded
        once; None for a cleartext listener. Files that do not load are a ConfigError."""
        tls = tls or self.tls_files
        if tls is None:
            return None
        context = self._ssl_contexts.get(tls)
        if context is not None:
            return context
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(tls.certfile, tls.keyfile, password=tls.password)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load TLS certificate {tls.certfile!r} / key {tls.keyfile!r}: {exc}"
            ) from exc
        context.set_alpn_protocols(["h2", "http/1.1"] if self.http2 else ["http/1.1"])
        self._ssl_contexts[tls] = context
        return context

    def load_app(self) -> ASGIApp:
        """The ASGI 3 application, imported from ``module:attribute`` if given as a string."""
        app: Any = self.app
        if isinstance(app, str):
            app = import_from_string(app)
        if self.factory:
            if not callable(app):
                raise ConfigError(f"--factory: {self.app!r} is not callable")
            app = app()
        if not callable(app):
            raise ConfigError(f"{self.app!r} is not an ASGI application (not callable)")
        if self.asgi_protocol == "asgi2" or (self.asgi_protocol == "auto" and _is_asgi2(app)):
            return double_to_single_callable(app)  # type: ignore[no-any-return,no-untyped-call]
        return app  # type: ignore[no-any-return]


def check_log_format(fmt: str) -> None:
    """Refuse a ``%``-style format that fails on a real record now, not on the first log line."""
    record = logging.LogRecord(
        "roomcast.gateway.error", logging.INFO, __file__, 0, "message", (), None
    )
    try:
        logging.Formatter(fmt, validate=True).format(record)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"log format {fmt!r} is not a logging format: {exc}") from None


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError as exc:
        raise ConfigError(f"--forwarded-allow-ips: {entry!r} is not an address") from exc


def import_from_string(path: str) -> Any:
    """``package.module:attribute.path`` → the object, with one-line errors."""
    module_name, colon, attributes = path.partition(":")
    if not colon or not module_name or not attributes:
        raise ConfigError(f"application {path!r} must look like 'module:attribute'")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: the current directory's modules load
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(f"cannot import module {module_name!r}: {exc}") from exc
        raise  # the module exists but fails inside: its traceback matters
    obj: Any = module
    for name in attributes.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attributes!r}") from None
    return obj


def _is_asgi2(app: Any) -> bool:
    """``--asgi-protocol auto``, as in Daphne: asgiref's ``is_double_callable``, except that a
    plain function taking ``(scope, receive, send)`` (returning a coroutine, say) is ASGI 3."""
    if not is_double_callable(app):  # type: ignore[no-untyped-call]
        return False
    if inspect.isclass(app):
        return True
    try:
        parameters = inspect.signature(app).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) < 3 and not any(p.kind is p.VAR_POSITIONAL for p in parameters)
