"""One gateway process: bind, start the app, serve, and drain gracefully on SIGTERM/SIGINT.

Order of start-up, chosen so that every user mistake fails before anything runs: load the app
(ConfigError), load TLS files (ConfigError), bind (a port in use is a ConfigError), then the
lifespan start-up (LifespanFailure), and only then accept connections. The listening socket
is already open during the app's start-up, so early clients queue instead of being refused.

Shutdown: the first signal stops accepting, asks each connection to finish
(``Connection.shutdown``), waits up to ``graceful_timeout`` for them to go, aborts the rest,
cancels tasks left over and runs the lifespan shutdown. A second signal skips the waiting and
the lifespan shutdown. The signal handlers are Python-level ones, so they run even while an
application blocks the loop; the :mod:`~roomcast.gateway.watchdog` thread then ends the
process if the loop is still blocked past the graceful timeout (and warns, meanwhile, about a
loop blocked longer than ``loop_lag_threshold``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import stat
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from types import FrameType
from typing import Any, NamedTuple

from roomcast.gateway import limits
from roomcast.gateway.config import ASGIApp, Config, ConfigError
from roomcast.gateway.endpoints import Endpoint
from roomcast.gateway.lifespan import Lifespan
from roomcast.gateway.logging import configure_logging, enable_project_loggers, reopen_log_files
from roomcast.gateway.metrics import ReadinessMetrics, readiness_reasons
from roomcast.gateway.proctitle import set_title
from roomcast.gateway.state import Connection, ServerState
from roomcast.gateway.watchdog import LoopWatchdog

from roomcast import metrics

logger = logging.getLogger("roomcast.gateway.error")

ProtocolFactory = Callable[[Config, ASGIApp, ServerState], asyncio.Protocol]
HANDLED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
RESTART_SIGNAL = signal.SIGUSR1  # --reload's child: stop as a restart (WebSockets close 1012)
REOPEN_SIGNAL = signal.SIGHUP  # reopen the log files (logrotate); never a stop
DRAIN_POLL = 0.02  # seconds between looks at the connections left while draining
CANCEL_GRACE = 1.0  # seconds for cancelled tasks and aborted connections to go


class Listener(NamedTuple):
    """A listening socket and the endpoint it was opened for (its TLS files, its backlog)."""

    sock: socket.socket
    endpoint: Endpoint


class Server:
    """Serves ``config`` in this process; ``run()`` blocks, ``serve()`` is the coroutine.

    Tests drive it with ``install_signal_handlers = False``, ``await server.started.wait()``,
    then ``server.exit()``. ``protocol`` replaces ``HTTP1Connection`` (for embedding/tests).
    """

    def __init__(self, config: Config, protocol: ProtocolFactory | None = None) -> None:
        self.config = config
        self.protocol = protocol
        self.state = ServerState()
        self.state.server_header = config.server_name.encode() if config.server_name else None
        self.started = asyncio.Event()
        self.should_exit = asyncio.Event()
        self.force_exit = asyncio.Event()
        self.restart = False  # shut connections down as a restart: WebSockets close 1012
        self.install_signal_handlers = True
        self.handled_signals = HANDLED_SIGNALS
        self.sockets: list[socket.socket] = []
        self.listeners: list[Listener] = []
        self.servers: list[asyncio.Server] = []
        self.watchdog: LoopWatchdog | None = None
        self.serve_metrics = True  # --metrics-port here; False in a worker (its supervisor does)
        self.metrics_server: metrics.MetricsServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        metrics.register(self.state.metrics, owner=self.state)
        metrics.register(ReadinessMetrics(_reasons_of(weakref.ref(self.state))), owner=self.state)

    def run(self, sockets: Sequence[socket.socket | Listener] | None = None) -> None:
        """Serve until stopped. Raises ConfigError or LifespanFailure for the CLI to report."""
        set_title("server", self.config)
        with asyncio.Runner(loop_factory=self.config.loop_factory()) as runner:
            runner.run(self.serve(sockets))

    def exit(self, restart: bool = False, force: bool = False) -> None:
        """Begin the graceful shutdown (or, with ``force``, the immediate one)."""
        self.restart = self.restart or restart
        if force:
            self.force_exit.set()
        self.should_exit.set()

    async def serve(self, sockets: Sequence[socket.socket | Listener] | None = None) -> None:
        """Serve on ``sockets`` (inherited, e.g. from the worker supervisor) or on new ones.

        Bare sockets get ``--ssl-certfile``'s TLS, if any; a Listener its endpoint's.
        """
        config = self.config
        configure_logging(config)
        app = config.load_app()
        enable_project_loggers()  # importing the app may have run Django's LOGGING
        app = limits.wrap(app, config, self.state.metrics)
        own_sockets = sockets is None
        if sockets is None:
            for endpoint in config.listeners():
                config.ssl_context(endpoint.tls)  # bad TLS files fail before binding
            listeners = bind_listeners(config)
        else:
            listeners = [adopt(config, sock) for sock in sockets]
        self.sockets = [listener.sock for listener in listeners]
        self.listeners = listeners
        loop = self._loop = asyncio.get_running_loop()
        lag = self.state.metrics.loop_lag
        self.watchdog = LoopWatchdog(loop, config.loop_lag_threshold, config.graceful_timeout, lag)
        self.watchdog.start()
        installed = self._install_signal_handlers()
        lifespan = Lifespan(app, config, self.state)
        # With probe paths, listen during the start-up too: probes are answered, requests for
        # the app wait for the start-up (see probes.py). Without, connections wait in the
        # backlog until the app is ready.
        early = config.has_probes
        gated = _after(self.started, app)
        self.state.app_started = False
        try:
            await self._serve_metrics()
            if early:
                await self._listen(listeners, lambda: app if self.started.is_set() else gated)
            if not await self._until_exit(lifespan.startup()):
                await lifespan.cancel()
                return
            self.state.app_started = True
            if not early:
                await self._listen(listeners, lambda: app)
            if own_sockets:
                for sock, endpoint in listeners:
                    logger.info("Listening on %s", describe_socket(sock, endpoint.tls is not None))
            else:
                logger.info("Worker process %d serving", os.getpid())
            self.started.set()
            await self.should_exit.wait()
            await self._drain()
            if self.force_exit.is_set():
                logger.warning("Forced exit: skipping the application's lifespan shutdown")
                await lifespan.cancel()
            else:
                await self._until_exit(lifespan.shutdown(), force_only=True)
                await lifespan.cancel()
        finally:
            for sig, previous in installed:
                signal.signal(sig, previous)
            if self.metrics_server is not None:
                self.metrics_server.close()
                self.metrics_server = None
            self.watchdog.stop()
            for conn in list(self.state.connections):  # a failed start-up leaves some
                conn.abort()
            for server in self.servers:
                server.close()
            if own_sockets:
                close_sockets(listeners, config)

    async def _serve_metrics(self) -> None:
        """``--metrics-port``: /metrics of this process on its own port (roomcast.metrics)."""
        config = self.config
        if config.metrics_port is None or not self.serve_metrics:
            return
        try:
            self.metrics_server = await metrics.serve(config.metrics_port, config.metrics_host)
        except metrics.MetricsError as exc:
            raise ConfigError(str(exc)) from exc
        logger.info("Serving metrics on %s", self.metrics_server.url)

    async def _until_exit(self, work: Coroutine[Any, Any, None], force_only: bool = False) -> bool:
        """Run ``work`` unless a (forced) exit comes first; True if it completed."""
        task = asyncio.ensure_future(work)
        stop = self.force_exit if force_only else self.should_exit
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done():
            task.result()  # LifespanFailure propagates
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False

    async def _listen(self, listeners: Sequence[Listener], app: Callable[[], ASGIApp]) -> None:
        """Start accepting on every listener; ``app()`` is what a new connection runs."""
        loop = asyncio.get_running_loop()
        factory = self._protocol_factory()
        config = self.config
        for sock, endpoint in listeners:
            server = await loop.create_server(
                lambda: factory(config, app(), self.state),
                sock=sock,
                ssl=config.ssl_context(endpoint.tls),
                backlog=endpoint.backlog or config.backlog,
            )
            self.servers.append(server)

    def _protocol_factory(self) -> ProtocolFactory:
        if self.protocol is not None:
            return self.protocol
        from roomcast.gateway.connections.http1 import HTTP1Connection

        return HTTP1Connection

    async def _drain(self) -> None:
        """Stop accepting, let connections finish, then abort the rest and cancel tasks."""
        state = self.state
        state.closing = True
        # With probe paths, keep accepting: the probes say 503 (readiness) and 200 (liveness)
        # until we exit, other new requests get 503. Only the connections open now are waited
        # for; those accepted later answer once and close by themselves.
        keep_listening = self.config.has_probes
        if not keep_listening:
            for server in self.servers:
                server.close()
        logger.info("Shutting down%s", " (restart)" if self.restart else "")
        told: set[Connection] = set()
        waited = set(state.connections)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.graceful_timeout
        forced = asyncio.ensure_future(self.force_exit.wait())
        try:
            while (
                (waited & state.connections if keep_listening else state.connections)
                and not forced.done()
                and loop.time() < deadline
            ):
                fresh = (waited if keep_listening else state.connections) - told
                for conn in list(fresh & state.connections):
                    told.add(conn)  # without probes, connections accepted meanwhile too
                    conn.shutdown(restart=self.restart)
                await asyncio.wait([forced], timeout=min(DRAIN_POLL, deadline - loop.time()))
        finally:
            forced.cancel()
        if state.connections:
            logger.warning(
                "Closing %d connection(s) that did not finish in time", len(state.connections)
            )
            for conn in list(state.connections):
                conn.abort()
            for _ in range(int(CANCEL_GRACE / DRAIN_POLL)):  # connection_lost comes soon after
                if not state.connections:
                    break
                await asyncio.sleep(DRAIN_POLL)
        tasks = [task for task in state.tasks if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_GRACE)

    def _install_signal_handlers(self) -> list[tuple[signal.Signals, Any]]:
        """Python-level handlers, not ``loop.add_signal_handler``: those run only when the
        loop turns, these between two bytecodes even while an app blocks the loop, so the
        watchdog learns of the stop (see :mod:`roomcast.gateway.watchdog`)."""
        if not self.install_signal_handlers:
            return []
        if threading.current_thread() is not threading.main_thread():
            return []  # only the main thread may; an embedding caller handles signals itself
        installed = [
            (sig, signal.signal(sig, self._signal_received)) for sig in self.handled_signals
        ]
        installed.append((REOPEN_SIGNAL, signal.signal(REOPEN_SIGNAL, self._reopen_received)))
        return installed

    def _reopen_received(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP: reopen the log files on the loop (a handler must not swap streams under a
        write in progress)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(reopen_logs)

    def _signal_received(self, signum: int, frame: FrameType | None) -> None:
        if self.watchdog is not None:
            self.watchdog.stop_requested()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_signal, signal.Signals(signum))

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.should_exit.is_set():
            logger.warning("Received %s again: exiting now", sig.name)
            self.exit(force=True)
        else:
            restart = sig == RESTART_SIGNAL
            logger.info(
                "Received %s: finishing requests in flight%s",
                sig.name,
                " before a restart" if restart else "",
            )
            self.exit(restart=restart)


def _reasons_of(ref: weakref.ref[ServerState]) -> Callable[[], dict[str, str]]:
    """The readiness reasons of the state ``ref`` points at (weakly: no leak via the registry)."""

    def reasons() -> dict[str, str]:
        state = ref()
        return {} if state is None else readiness_reasons(state.app_started, state.closing)

    return reasons


def reopen_logs() -> None:
    """Reopen the process's log files (SIGHUP), and say so."""
    count = reopen_log_files()
    logger.info("Received SIGHUP: reopened %d log file(s)", count)


# Listening sockets ------------------------------------------------------------------------


def bind_listeners(config: Config) -> list[Listener]:
    """Open every socket ``config.listeners()`` names; all or none (a failure closes the rest).

    Errors (port in use, bad address, not a socket) are ConfigErrors: one line for the user.
    """
    listeners: list[Listener] = []
    try:
        for endpoint in config.listeners():
            sock = _open(endpoint)
            listeners.append(Listener(sock, endpoint))
            try:
                sock.listen(endpoint.backlog or config.backlog)
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {endpoint.describe()}: {_reason(exc)}"
                ) from exc
    except ConfigError:
        close_sockets(listeners, config)
        raise
    return listeners


def bind_sockets(config: Config) -> list[socket.socket]:
    """The sockets of :func:`bind_listeners`."""
    return [listener.sock for listener in bind_listeners(config)]


def adopt(config: Config, sock: socket.socket | Listener) -> Listener:
    """An inherited socket as a Listener: as it came, or with ``--ssl-certfile``'s TLS."""
    if isinstance(sock, Listener):
        return sock
    if sock.family == socket.AF_UNIX:
        return Listener(sock, Endpoint("unix", path=_unix_path(sock), tls=config.tls_files))
    host, port = sock.getsockname()[:2]
    return Listener(sock, Endpoint("tcp", host=host, port=port, tls=config.tls_files))


def close_sockets(sockets: Sequence[socket.socket | Listener], config: Config) -> None:
    """Close what ``bind_sockets``/``bind_listeners`` opened; remove the unix socket files
    created for ``config``'s unix listeners (not those of an inherited descriptor)."""
    ours = {endpoint.path for endpoint in config.listeners() if endpoint.kind == "unix"}
    for item in sockets:
        sock = item.sock if isinstance(item, Listener) else item
        path = item.endpoint.path if isinstance(item, Listener) else None
        with contextlib.suppress(OSError):
            if sock.family == socket.AF_UNIX:
                path = path or _unix_path(sock)
                if path in ours:
                    os.unlink(path)
        sock.close()


def _unix_path(sock: socket.socket) -> str:
    address = sock.getsockname()
    return address.decode() if isinstance(address, bytes) else str(address)


def _open(endpoint: Endpoint) -> socket.socket:
    if endpoint.kind == "fd":
        return _inherited_socket(endpoint.fileno)
    if endpoint.kind == "unix":
        return _unix_socket(endpoint.path, endpoint.mode)
    return _tcp_socket(endpoint.host, endpoint.port)


def describe_socket(sock: socket.socket, tls: bool = False) -> str:
    """``http://127.0.0.1:8000``, ``https://[::1]:8443`` or ``unix:/run/app.sock``."""
    scheme = "https" if tls else "http"
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        path = address.decode() if isinstance(address, bytes) else address
        return f"unix:{path}"
    host, port = address[0], address[1]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _tcp_socket(host: str, port: int) -> socket.socket:
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {where}: {_reason(exc)}") from exc
    return sock


def _unix_socket(path: str, mode: int) -> socket.socket:
    _remove_stale_unix_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # 0o666 by default, like Daphne (Twisted's default), uvicorn and gunicorn: any local
        # user may connect, so a proxy running as another user can; the directory's
        # permissions still apply. ``-e unix:PATH:mode=660`` narrows it.
        os.chmod(path, mode)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on unix socket {path!r}: {_reason(exc)}") from exc
    return sock


def _remove_stale_unix_socket(path: str) -> None:
    """Remove a socket file left by a dead server; refuse to touch a live one or a non-socket."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot use unix socket {path!r}: {_reason(exc)}") from exc
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"cannot use unix socket {path!r}: the file exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody answers: stale
            return
    raise ConfigError(f"cannot listen on unix socket {path!r}: another server is listening there")


def _inherited_socket(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)  # family and type come from the descriptor itself
    except OSError as exc:
        raise ConfigError(f"--fd {fd}: not a usable socket: {_reason(exc)}") from exc
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ConfigError(f"--fd {fd}: not a stream socket")
    return sock


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc)


def _after(started: asyncio.Event, app: ASGIApp) -> ASGIApp:
    """``app``, once ``started`` is set: requests that arrive during the start-up wait."""

    async def gate(scope: Any, receive: Any, send: Any) -> None:
        if not started.is_set():
            await started.wait()
        await app(scope, receive, send)

    return gate
