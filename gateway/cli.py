"""``roomcast serve``: parse flags (and ROOMCAST_* variables) into a Config, then serve.

Flag names follow Daphne's (all of them: docs/daphne.md), so ``daphne`` can be swapped for
``roomcast serve`` in a Procfile. User mistakes (bad app path, port in use, bad TLS file,
failed start-up) end with one ``roomcast: error: ...`` line on stderr and a non-zero status,
never a traceback; an application module that raises while it is imported keeps its
traceback (the user needs it).

Exit status: 0 after a clean (signalled) shutdown, 1 for a configuration or bind error or
workers that keep dying, 2 for a usage error, 3 when the application's start-up failed.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from click.core import ParameterSource
from roomcast.gateway.config import HEADER_NAME, Config, ConfigError, check_log_format
from roomcast.gateway.lifespan import LifespanFailure

EXIT_CONFIG = 1
EXIT_STARTUP = 3
ENV_PREFIX = "ROOMCAST"

_DEFAULTS: dict[str, Any] = {
    f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    for f in dataclasses.fields(Config)
    if f.name != "app"
}

GROUPS = (
    "Where to listen",
    "TLS",
    "Application",
    "Proxies and headers",
    "HTTP timeouts and limits",
    "WebSocket",
    "Logging",
    "Metrics",
    "Other",
)


if TYPE_CHECKING:  # click 8.3+ types ParamType as generic; older clicks cannot subscript it
    _ParamType = click.ParamType[Any]
else:
    _ParamType = click.ParamType


class Number(_ParamType):
    """An int or float within bounds; unlike click's ranges it keeps ``--help`` uncluttered."""

    def __init__(
        self, kind: type[int] | type[float], minimum: float = 0, maximum: float | None = None
    ) -> None:
        self.kind = kind
        self.minimum = minimum
        self.maximum = maximum
        self.name = kind.__name__

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a valid {self.name}", param, ctx)
        if number < self.minimum or (self.maximum is not None and number > self.maximum):
            bounds = (
                f"from {self.minimum:g} to {self.maximum:g}"
                if self.maximum is not None
                else (f"at least {self.minimum:g}")
            )
            self.fail(f"{value!r} is out of range: must be {bounds}", param, ctx)
        return number


class Timeout(_ParamType):
    """Seconds above 0, or -1 for no limit (Daphne's convention) → None."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None:
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a valid float", param, ctx)
        if number == -1:
            return None
        if not 0 < number < float("inf"):
            self.fail(f"{value!r} is out of range: must be above 0, or -1 for no limit", param, ctx)
        return number


class HeaderName(_ParamType):
    """An HTTP header name (an RFC 9110 token), as a proxy would send it."""

    name = "header"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value).strip()
        if not HEADER_NAME.fullmatch(text):
            self.fail(f"{value!r} is not an HTTP header name", param, ctx)
        return text


class LogFormat(_ParamType):
    """A ``logging`` %-style format string, checked against a real record at start."""

    name = "format"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            check_log_format(str(value))
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


SECONDS = Number(float)
TIMEOUT = Timeout()
BYTES = Number(int, 1)
COUNT = Number(int, 1)
HELP_COLUMN = 36  # widest option column; wider options put their help on the next line


class _Option(click.Option):
    """A click option that knows which section of ``--help`` it belongs to."""

    def __init__(self, *args: Any, group: str = "Other", **kwargs: Any) -> None:
        kwargs.setdefault("show_envvar", True)
        super().__init__(*args, **kwargs)
        self.group = group


class _Command(click.Command):
    """Prints options in sections, in the order of GROUPS, aligned across sections; reads
    Daphne's ``--ws-protocol A B`` (argparse ``nargs="*"``) as ``--ws-protocol A --ws-protocol B``.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_ws_protocols(args))

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {title: [] for title in GROUPS}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections[getattr(param, "group", "Other")].append(record)
        rows = [row for section in sections.values() for row in section]
        width = min(HELP_COLUMN, max(len(name) for name, _ in rows))
        for title, section in sections.items():
            if section:
                with formatter.section(title):
                    formatter.write_dl(
                        [(name.ljust(width), text) for name, text in section], col_max=width
                    )


def spread_ws_protocols(args: list[str]) -> list[str]:
    """Daphne takes several values after one ``--ws-protocol``. A subprotocol is an HTTP token,
    which has no ``:``, and APP always has one, so the words after the flag are subprotocols
    up to the next option, the APP or ``--``."""
    spread: list[str] = []
    taking = False
    for arg in args:
        if arg == "--ws-protocol":
            taking = False
            spread.append(arg)
            continue
        if taking and not arg.startswith("-") and ":" not in arg:
            spread += ["--ws-protocol", arg]
            continue
        taking = bool(spread) and spread[-1] == "--ws-protocol"
        spread.append(arg)
    return spread


F = TypeVar("F", bound=Callable[..., Any])


def option(*decls: str, group: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*decls, cls=_Option, group=group, **kwargs)


LISTEN, TLS, APP, PROXY, HTTP, WS, LOG, METRICS = GROUPS[:8]


@click.command(
    cls=_Command,
    context_settings={
        "auto_envvar_prefix": ENV_PREFIX,
        "show_default": True,
        "max_content_width": 100,
        "help_option_names": ["-h", "--help"],
    },
)
@click.argument("app", envvar=f"{ENV_PREFIX}_APP", metavar="APP")
@option(
    "-b",
    "--bind",
    group=LISTEN,
    default=_DEFAULTS["host"],
    metavar="HOST",
    help="Address to listen on; IPv6 as ::1 or [::1].",
)
@option(
    "-p",
    "--port",
    group=LISTEN,
    type=Number(int, 0, 65535),
    default=_DEFAULTS["port"],
    metavar="PORT",
    help="TCP port to listen on.",
)
@option(
    "-u",
    "--unix-socket",
    group=LISTEN,
    metavar="PATH",
    help="Listen on this unix socket (TCP too only if -b/-p are given, as in Daphne).",
)
@option(
    "--fd",
    group=LISTEN,
    type=Number(int),
    metavar="FD",
    help="Serve an already-listening socket inherited as this file descriptor.",
)
@option(
    "-e",
    "--endpoint",
    "endpoints",
    group=LISTEN,
    multiple=True,
    metavar="ENDPOINT",
    help="Daphne's endpoint string, repeatable: tcp:port=8000:interface=0.0.0.0, tcp:8000, "
    "unix:/run/app.sock, ssl:443:privateKey=key.pem:certKey=cert.pem, fd:fileno=3.",
)
@option(
    "--workers",
    group=LISTEN,
    type=COUNT,
    default=_DEFAULTS["workers"],
    metavar="N",
    help="Worker processes sharing the socket; a worker that dies is replaced.",
)
@option(
    "--backlog",
    group=LISTEN,
    type=COUNT,
    default=_DEFAULTS["backlog"],
    metavar="N",
    help="Connections the kernel queues before we accept them.",
)
@option("--ssl-certfile", group=TLS, metavar="PATH", help="Certificate chain (PEM): serve HTTPS.")
@option("--ssl-keyfile", group=TLS, metavar="PATH", help="Private key (PEM) for --ssl-certfile.")
@option(
    "--ssl-keyfile-password",
    group=TLS,
    metavar="TEXT",
    help="Password of an encrypted --ssl-keyfile.",
)
@option(
    "--factory", group=APP, is_flag=True, help="APP is a callable returning the ASGI application."
)
@option(
    "--root-path",
    group=APP,
    default=_DEFAULTS["root_path"],
    show_default=False,
    metavar="PATH",
    help="Mount point of the app behind a proxy (ASGI root_path, like SCRIPT_NAME).",
)
@option(
    "--loop",
    group=APP,
    type=click.Choice(["auto", "asyncio", "uvloop"]),
    default=_DEFAULTS["loop"],
    help="Event loop: auto uses uvloop when installed (the 'fast' extra), else asyncio.",
)
@option(
    "--asgi-protocol",
    group=APP,
    type=click.Choice(["auto", "asgi2", "asgi3"]),
    default=_DEFAULTS["asgi_protocol"],
    help="ASGI version of APP: auto detects it (as Daphne); asgi2 apps are wrapped by asgiref.",
)
@option(
    "--lifespan",
    group=APP,
    type=click.Choice(["auto", "on", "off"]),
    default=_DEFAULTS["lifespan"],
    help="ASGI lifespan events: auto runs them if the app supports them; on requires them.",
)
@option(
    "--application-close-timeout",
    group=APP,
    type=SECONDS,
    default=_DEFAULTS["application_close_timeout"],
    metavar="SECONDS",
    help="How long an app may run on after its client disconnected.",
)
@option(
    "--graceful-timeout",
    group=APP,
    type=SECONDS,
    default=_DEFAULTS["graceful_timeout"],
    metavar="SECONDS",
    help="On SIGTERM/SIGINT, how long requests in flight may take before being cut.",
)
@option(
    "--loop-lag-threshold",
    group=APP,
    type=SECONDS,
    default=_DEFAULTS["loop_lag_threshold"],
    metavar="SECONDS",
    help="Warn when the event loop is blocked this long (an app that never yields); 0: off.",
)
@option(
    "--reload",
    group=APP,
    is_flag=True,
    help="Restart the server when a source file changes (development; one process).",
)
@option(
    "--reload-dir",
    "reload_dirs",
    group=APP,
    multiple=True,
    metavar="DIR",
    show_default="the current directory",
    help="With --reload: a directory to watch, repeatable.",
)
@option(
    "--reload-include",
    "reload_includes",
    group=APP,
    multiple=True,
    metavar="GLOB",
    help="With --reload: also watch files matching GLOB (beside *.py), repeatable.",
)
@option(
    "--reload-exclude",
    "reload_excludes",
    group=APP,
    multiple=True,
    metavar="GLOB",
    help="With --reload: ignore files or directories matching GLOB, repeatable.",
)
@option(
    "--health-path",
    group=APP,
    metavar="PATH",
    help="Answer this path in the server itself: 200 while the process runs (liveness).",
)
@option(
    "--ready-path",
    group=APP,
    metavar="PATH",
    help="Answer this path in the server itself: 200 when ready, 503 with the reasons during "
    "start-up, while draining, or while roomcast.readiness reports something (readiness).",
)
@option(
    "--proxy-headers",
    group=PROXY,
    is_flag=True,
    help="Take client address and scheme from X-Forwarded-For/-Proto.",
)
@option(
    "--proxy-headers-host",
    group=PROXY,
    type=HeaderName(),
    default=_DEFAULTS["proxy_headers_host"],
    metavar="HEADER",
    help="With --proxy-headers: the header holding the client address (X-Real-IP, say).",
)
@option(
    "--proxy-headers-port",
    group=PROXY,
    type=HeaderName(),
    default=_DEFAULTS["proxy_headers_port"],
    metavar="HEADER",
    help="With --proxy-headers: the header holding the client port.",
)
@option(
    "--forwarded-allow-ips",
    group=PROXY,
    default=",".join(_DEFAULTS["forwarded_allow_ips"]),
    metavar="IPS",
    help="Comma-separated proxies (addresses or networks) whose headers are trusted; * for all.",
)
@option(
    "-s",
    "--server-name",
    group=PROXY,
    default=_DEFAULTS["server_name"],
    metavar="NAME",
    help="Value of the Server response header.",
)
@option("--no-server-name", group=PROXY, is_flag=True, help="Send no Server header.")
@option(
    "-t",
    "--http-timeout",
    group=HTTP,
    type=TIMEOUT,
    default=_DEFAULTS["http_timeout"],
    metavar="SECONDS",
    show_default="no limit",
    help="An app that has not started its response by then is cancelled; the client gets 503.",
)
@option(
    "--timeout-keep-alive",
    group=HTTP,
    type=SECONDS,
    default=_DEFAULTS["timeout_keep_alive"],
    metavar="SECONDS",
    help="Close an idle keep-alive connection after this.",
)
@option(
    "--timeout-request-headers",
    group=HTTP,
    type=SECONDS,
    default=_DEFAULTS["timeout_request_headers"],
    metavar="SECONDS",
    help="A request head must arrive within this (slow clients are closed).",
)
@option(
    "--limit-concurrency",
    group=HTTP,
    type=COUNT,
    metavar="N",
    show_default="no limit",
    help="Requests and WebSockets served at once; more get 503.",
)
@option(
    "--limit-request-body",
    group=HTTP,
    type=BYTES,
    default=_DEFAULTS["limit_request_body"],
    metavar="BYTES",
    help="Largest request body; larger gets 413.",
)
@option(
    "--limit-request-head",
    group=HTTP,
    type=BYTES,
    default=_DEFAULTS["limit_request_head"],
    metavar="BYTES",
    help="Largest request line plus headers; larger gets 431.",
)
@option(
    "--http2/--no-http2",
    group=HTTP,
    default=_DEFAULTS["http2"],
    help="Speak HTTP/2: h2 by TLS ALPN, h2c by prior knowledge or Upgrade.",
)
@option(
    "--h2-max-concurrent-streams",
    group=HTTP,
    type=click.IntRange(1, 2**31 - 1),
    default=_DEFAULTS["h2_max_concurrent_streams"],
    metavar="N",
    help="Streams an HTTP/2 client may open at once; more close its connection.",
)
@option(
    "--ping-interval",
    group=WS,
    type=SECONDS,
    default=_DEFAULTS["ping_interval"],
    metavar="SECONDS",
    help="Ping each WebSocket client this often.",
)
@option(
    "--ping-timeout",
    group=WS,
    type=SECONDS,
    default=_DEFAULTS["ping_timeout"],
    metavar="SECONDS",
    help="Close a WebSocket whose client has not answered a ping by then.",
)
@option(
    "--websocket_timeout",
    "--websocket-timeout",
    "websocket_timeout",
    group=WS,
    type=TIMEOUT,
    default=_DEFAULTS["websocket_timeout"],
    metavar="SECONDS",
    show_default="no limit",
    help="Close a WebSocket (code 1000) once it has been open this long; -1 for no limit.",
)
@option(
    "--websocket_connect_timeout",
    "--websocket-connect-timeout",
    "websocket_connect_timeout",
    group=WS,
    type=TIMEOUT,
    default=_DEFAULTS["websocket_connect_timeout"],
    metavar="SECONDS",
    help="Deny (503) a WebSocket the app has not accepted by then; -1 for no limit.",
)
@option(
    "--websocket-max-message-size",
    group=WS,
    type=Number(int, 0),
    default=_DEFAULTS["websocket_max_message_size"],
    metavar="BYTES",
    help="Largest incoming message; larger closes with 1009. 0: no limit (not advisable).",
)
@option(
    "--websocket-max-frame-size",
    group=WS,
    type=Number(int, 0),
    default=_DEFAULTS["websocket_max_frame_size"],
    metavar="BYTES",
    help="Largest incoming frame (its payload on the wire); larger closes with 1009. 0: none.",
)
@option(
    "--ws-protocol",
    "ws_protocols",
    group=WS,
    multiple=True,
    metavar="NAME",
    help="A subprotocol the server supports, repeatable: the first the client offers is "
    "accepted unless the app picks one (Daphne's --ws-protocol; Daphne's 'NAME NAME' works).",
)
@option(
    "--ws-per-message-deflate/--no-ws-per-message-deflate",
    group=WS,
    default=_DEFAULTS["websocket_per_message_deflate"],
    show_default="on",
    help="Offer permessage-deflate compression.",
)
@option(
    "--websocket-write-buffer",
    group=WS,
    type=BYTES,
    default=_DEFAULTS["websocket_write_buffer"],
    metavar="BYTES",
    help="Outgoing bytes queued for a client that does not read.",
)
@option(
    "--websocket-write-timeout",
    group=WS,
    type=SECONDS,
    default=_DEFAULTS["websocket_write_timeout"],
    metavar="SECONDS",
    help="How long a client may stay over the write buffer before it is closed.",
)
@option(
    "--access-log",
    group=LOG,
    default=_DEFAULTS["access_log"],
    metavar="PATH",
    show_default="stdout, unless -v 0",
    help="Where the access log goes (requests, WebSocket connect/accept/close): PATH or - "
    "(stdout).",
)
@option("--no-access-log", group=LOG, is_flag=True, help="Write no access log.")
@option(
    "-v",
    "--verbosity",
    group=LOG,
    type=Number(int, 0, 3),
    default=_DEFAULTS["verbosity"],
    metavar="0-3",
    help="0 warnings only, 1 start/stop, 2 debug, 3 debug with asyncio.",
)
@option(
    "--log-fmt",
    group=LOG,
    type=LogFormat(),
    default=_DEFAULTS["log_fmt"],
    metavar="FORMAT",
    help="Python logging format of the server's own lines (not the access log).",
)
@option(
    "--log-format",
    group=LOG,
    type=click.Choice(["text", "json"]),
    default=_DEFAULTS["log_format"],
    help="text: timestamped lines; json: one JSON object per line (access lines with their "
    "fields), for every roomcast logger and the access log.",
)
@option(
    "--log-file",
    group=LOG,
    metavar="PATH",
    show_default="stderr",
    help="Where the server's own lines (not the access log) go; reopened on SIGHUP.",
)
@option(
    "--log-config",
    group=LOG,
    metavar="FILE",
    help="A logging configuration replacing roomcast's: dictConfig as .json/.yaml, or an ini "
    "file for fileConfig.",
)
@option(
    "--metrics-port",
    group=METRICS,
    type=Number(int, 0, 65535),
    metavar="PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics, never on the app's port "
    "(needs roomcast[metrics]); with --workers the supervisor serves all of them.",
)
@option(
    "--metrics-host",
    group=METRICS,
    default=_DEFAULTS["metrics_host"],
    metavar="HOST",
    help="The address --metrics-port listens on (0.0.0.0 in a container).",
)
@option(
    "--limit-connections-per-client",
    group=HTTP,
    type=COUNT,
    metavar="N",
    show_default="no limit",
    help="WebSockets and requests one client address may have open at once (the forwarded "
    "address with --proxy-headers); more get 429 or close 1008.",
)
@option(
    "--websocket-max-messages-per-second",
    group=WS,
    type=Number(float, 0.001),
    metavar="N",
    show_default="no limit",
    help="Incoming messages per second per WebSocket (a burst of one second's worth); more "
    "close it with 1008.",
)
@option(
    "--websocket-max-bytes-per-second",
    group=WS,
    type=Number(float, 1),
    metavar="BYTES",
    show_default="no limit",
    help="Incoming payload bytes per second per WebSocket (burst: one second's worth, at "
    "least one largest message); more close it with 1008.",
)
def main(**options: Any) -> None:
    """Serve the ASGI application APP over HTTP/1.1 and WebSocket.

    APP is 'module:attribute', e.g. myproject.asgi:application, imported from the current
    directory first.

    Every option can also be set in the environment as ROOMCAST_<OPTION>, e.g. ROOMCAST_PORT=9000,
    ROOMCAST_PROXY_HEADERS=true, and APP as ROOMCAST_APP; the command line wins.

    \b
    Examples:
      roomcast serve myproject.asgi:application
      roomcast serve -b 0.0.0.0 -p 8000 --workers 4 --proxy-headers myproject.asgi:application
      roomcast serve -u /run/app.sock --access-log - myproject.asgi:application
    """
    ctx = click.get_current_context()
    options["listen_tcp"] = _tcp_asked(ctx, options)
    options["access_log"] = _access_log(ctx, options)
    _check_proxy_options(ctx, options)
    _check_reload_options(ctx, options)
    try:
        config = build_config(options)
        if config.metrics_port is not None:
            from roomcast import metrics

            metrics.require()  # before anything starts: one line without prometheus-client
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    except RuntimeError as exc:  # roomcast.metrics.MetricsUnavailable
        fail(str(exc), EXIT_CONFIG)
    serve(config)


def build_config(options: dict[str, Any]) -> Config:
    """The Config the parsed options describe (the CLI's only job)."""
    server_name: str | None = options["server_name"] or None
    if options["no_server_name"]:
        server_name = None
    allowed = [ip.strip() for ip in options["forwarded_allow_ips"].split(",") if ip.strip()]
    return Config(
        app=options["app"],
        host=options["bind"],
        port=options["port"],
        uds=options["unix_socket"],
        fd=options["fd"],
        endpoints=list(options.get("endpoints", ())),
        listen_tcp=options.get("listen_tcp"),
        root_path=options["root_path"].rstrip("/"),
        proxy_headers=options["proxy_headers"],
        forwarded_allow_ips=allowed,
        access_log=options["access_log"],
        verbosity=options["verbosity"],
        ping_interval=options["ping_interval"],
        ping_timeout=options["ping_timeout"],
        websocket_max_message_size=options["websocket_max_message_size"],
        websocket_max_frame_size=options["websocket_max_frame_size"],
        ws_protocols=list(options["ws_protocols"]),
        asgi_protocol=options["asgi_protocol"],
        websocket_per_message_deflate=options["ws_per_message_deflate"],
        websocket_write_buffer=options["websocket_write_buffer"],
        websocket_write_timeout=options["websocket_write_timeout"],
        application_close_timeout=options["application_close_timeout"],
        server_name=server_name,
        workers=options["workers"],
        ssl_certfile=options["ssl_certfile"],
        ssl_keyfile=options["ssl_keyfile"],
        ssl_keyfile_password=options["ssl_keyfile_password"],
        lifespan=options["lifespan"],
        timeout_keep_alive=options["timeout_keep_alive"],
        timeout_request_headers=options["timeout_request_headers"],
        limit_concurrency=options["limit_concurrency"],
        limit_request_body=options["limit_request_body"],
        limit_request_head=options["limit_request_head"],
        graceful_timeout=options["graceful_timeout"],
        factory=options["factory"],
        backlog=options["backlog"],
        loop=options["loop"],
        http2=options["http2"],
        h2_max_concurrent_streams=options["h2_max_concurrent_streams"],
        http_timeout=options["http_timeout"],
        websocket_timeout=options["websocket_timeout"],
        websocket_connect_timeout=options["websocket_connect_timeout"],
        proxy_headers_host=options["proxy_headers_host"],
        proxy_headers_port=options["proxy_headers_port"],
        log_fmt=options["log_fmt"],
        loop_lag_threshold=options["loop_lag_threshold"],
        reload=options["reload"],
        reload_dirs=list(options["reload_dirs"]),
        reload_includes=list(options["reload_includes"]),
        reload_excludes=list(options["reload_excludes"]),
        health_path=options["health_path"] or None,
        ready_path=options["ready_path"] or None,
        log_format=options.get("log_format", "text"),
        log_file=options.get("log_file") or None,
        log_config=options.get("log_config") or None,
        metrics_port=options.get("metrics_port"),
        metrics_host=options.get("metrics_host") or "127.0.0.1",
        limit_connections_per_client=options.get("limit_connections_per_client"),
        websocket_max_messages_per_second=options.get("websocket_max_messages_per_second"),
        websocket_max_bytes_per_second=options.get("websocket_max_bytes_per_second"),
    )


def serve(config: Config) -> None:
    """Run one server, or a worker supervisor, and turn user mistakes into one line."""
    from roomcast.gateway.reload import Reloader
    from roomcast.gateway.server import Server
    from roomcast.gateway.workers import Supervisor, WorkersFailed

    try:
        if config.reload:
            Reloader(config).run()
        elif config.workers > 1:
            Supervisor(config).run()
        else:
            Server(config).run()
    except LifespanFailure as exc:
        fail(f"application startup failed: {exc}", EXIT_STARTUP)
    except (ConfigError, WorkersFailed) as exc:
        fail(str(exc), EXIT_CONFIG)
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        sys.exit(130)


def fail(message: str, status: int) -> NoReturn:
    click.echo(f"roomcast: error: {' '.join(message.split())}", err=True)
    sys.exit(status)


def _given(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _tcp_asked(ctx: click.Context, options: dict[str, Any]) -> bool | None:
    """As Daphne: -b/-p add a TCP listener beside -u/--fd/-e; without them, TCP only when
    nothing else is given (None lets Config decide that)."""
    return True if _given(ctx, "bind") or _given(ctx, "port") else None


def _access_log(ctx: click.Context, options: dict[str, Any]) -> str | None:
    """Daphne's rule: stdout by default, off at -v 0 unless --access-log names a target."""
    if options["no_access_log"]:
        return None
    if _given(ctx, "access_log"):
        target: str | None = options["access_log"]
        return target
    return "-" if options["verbosity"] >= 1 else None


def _check_reload_options(ctx: click.Context, options: dict[str, Any]) -> None:
    if options["reload"]:
        if options["workers"] > 1:
            raise click.UsageError(
                "--reload runs one server process and restarts it: it cannot go with "
                f"--workers {options['workers']}"
            )
        for directory in options["reload_dirs"]:
            if not os.path.isdir(directory):
                raise click.UsageError(f"--reload-dir {directory!r} is not a directory")
        return
    for name in ("reload_dirs", "reload_includes", "reload_excludes"):
        if options[name]:
            flag = "--" + name.replace("_", "-").rstrip("s")
            raise click.UsageError(f"{flag} needs --reload")


def _check_proxy_options(ctx: click.Context, options: dict[str, Any]) -> None:
    """As in Daphne, naming the proxy's headers without --proxy-headers is a mistake."""
    if options["proxy_headers"]:
        return
    for name in ("proxy_headers_host", "proxy_headers_port"):
        if ctx.get_parameter_source(name) in (
            ParameterSource.COMMANDLINE,
            ParameterSource.ENVIRONMENT,
        ):
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(f"{flag} needs --proxy-headers")
