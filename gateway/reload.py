"""``roomcast serve --reload``: restart the server when the source changes (for projects
without Django's runserver, which has its own autoreloader).

A supervisor process binds the listening sockets once and runs the server in a child process
(the "spawn" method: a fresh interpreter, so every module is imported anew). It polls the
files under ``--reload-dir`` (the current directory by default) with ``os.stat`` (no extra
dependency): ``*.py`` by default, plus ``--reload-include`` globs, minus ``--reload-exclude``
globs; hidden directories, ``__pycache__``, ``node_modules`` and virtualenvs are skipped.
On a change the child is stopped as a restart (WebSockets close 1012, requests in flight
finish within ``--graceful-timeout``) and a new one starts on the same sockets, so clients
that connect meanwhile wait in the backlog instead of being refused.

A child that cannot start (a syntax error in the file just saved, a bad app path, a failed
start-up) is one error line; the supervisor stays up and tries again on the next change.
SIGTERM/SIGINT stop the child, then the supervisor (exit 0); the child ignores SIGINT, so a
terminal's Ctrl-C is not counted twice, and stops by itself if the supervisor is killed
(kill -9). ``--reload`` serves one process: it refuses ``--workers`` above 1. SIGHUP reopens
the supervisor's log files and is forwarded to the child (logrotate); ``--metrics-port`` is
served by the child itself, so it is down for the moment of a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess
from pathlib import Path

from roomcast.gateway.config import Config, ConfigError
from roomcast.gateway.lifespan import LifespanFailure
from roomcast.gateway.logging import configure_logging
from roomcast.gateway.proctitle import set_title
from roomcast.gateway.server import (
    HANDLED_SIGNALS,
    REOPEN_SIGNAL,
    RESTART_SIGNAL,
    Listener,
    Server,
    bind_listeners,
    close_sockets,
    describe_socket,
    reopen_logs,
)
from roomcast.gateway.workers import KILL_AFTER, _serve_worker, _wait_exit

logger = logging.getLogger("roomcast.gateway.error")

POLL = 0.3  # seconds between two looks at the files
SETTLE = 0.2  # seconds to let an editor finish writing (temp file, rename) before restarting
SKIPPED_DIRS = frozenset(("__pycache__", "node_modules", "site-packages"))
DEFAULT_INCLUDES = ("*.py",)

Snapshot = dict[str, tuple[int, int]]  # path -> (mtime_ns, size)


@dataclass(frozen=True)
class Watch:
    """What to watch: directories, and the globs files must (not) match."""

    dirs: tuple[Path, ...]
    includes: tuple[str, ...] = DEFAULT_INCLUDES
    excludes: tuple[str, ...] = ()

    @classmethod
    def of(cls, config: Config) -> Watch:
        dirs = tuple(Path(d).resolve() for d in config.reload_dirs) or (Path.cwd(),)
        includes = DEFAULT_INCLUDES + tuple(config.reload_includes)
        return cls(dirs, includes, tuple(config.reload_excludes))

    def _excluded(self, name: str, relative: str) -> bool:
        return any(
            fnmatch.fnmatch(name, glob) or fnmatch.fnmatch(relative, glob) for glob in self.excludes
        )

    def scan(self) -> Snapshot:
        """Every watched file with its modification time and size."""
        found: Snapshot = {}
        for root in self.dirs:
            for current, dirnames, filenames in os.walk(root):
                here = Path(current)
                dirnames[:] = [
                    d
                    for d in dirnames
                    if not d.startswith(".")
                    and d not in SKIPPED_DIRS
                    and not (here / d / "pyvenv.cfg").exists()
                    and not self._excluded(d, str((here / d).relative_to(root)))
                ]
                for name in filenames:
                    relative = str((here / name).relative_to(root))
                    if not any(fnmatch.fnmatch(name, glob) for glob in self.includes):
                        continue
                    if self._excluded(name, relative):
                        continue
                    path = here / name
                    with contextlib.suppress(OSError):  # gone between listing and stat
                        info = path.stat()
                        found[str(path)] = (info.st_mtime_ns, info.st_size)
        return found

    def describe(self) -> str:
        where = ", ".join(str(d) for d in self.dirs)
        return f"{where} ({', '.join(self.includes)})"


def changed(before: Snapshot, after: Snapshot) -> list[str]:
    """The files added, removed or modified between two snapshots."""
    return sorted(
        path for path in before.keys() | after.keys() if before.get(path) != after.get(path)
    )


@dataclass
class _Child:
    process: BaseProcess
    reports: Pipe
    ready: bool = False
    failure: str | None = None  # one line: why it could not start


class Reloader:
    """Runs one server process and replaces it whenever a watched file changes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.watch = Watch.of(config)
        self.child: _Child | None = None
        self._stop = asyncio.Event()
        self._signals = 0
        self._listeners: list[Listener] = []
        self._context = multiprocessing.get_context("spawn")

    def run(self) -> None:
        """Serve until stopped; raises ConfigError (bad TLS file, port in use) at start."""
        asyncio.run(self.main())

    async def main(self) -> None:
        config = self.config
        set_title("reloader", config)
        configure_logging(config)
        for endpoint in config.listeners():
            config.ssl_context(endpoint.tls)  # a bad TLS file is one line, here
        listeners = self._listeners = bind_listeners(config)
        loop = asyncio.get_running_loop()
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(REOPEN_SIGNAL, self._on_reopen)
        try:
            logger.info("Watching for changes in %s", self.watch.describe())
            snapshot = await asyncio.to_thread(self.watch.scan)
            self.child = self._spawn(listeners)
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), POLL)
                if self._stop.is_set():
                    break
                self._follow(self.child)
                now = await asyncio.to_thread(self.watch.scan)
                paths = changed(snapshot, now)
                if not paths:
                    continue
                await asyncio.sleep(SETTLE)
                snapshot = await asyncio.to_thread(self.watch.scan)
                logger.warning("Change in %s: restarting the server", _short(paths))
                await self._end(self.child, restart=True)
                if not self._stop.is_set():
                    self.child = self._spawn(listeners)
        finally:
            for sig in (*HANDLED_SIGNALS, REOPEN_SIGNAL):
                loop.remove_signal_handler(sig)
            if self.child is not None:
                await self._end(self.child, restart=False)
            close_sockets(listeners, config)
        logger.info("Reloader stopped")

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info("Received %s: stopping", sig.name)
            self._stop.set()
        elif self.child is not None and self.child.process.pid is not None:
            logger.warning("Received %s again: the server exits now", sig.name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child.process.pid, signal.SIGTERM)

    def _on_reopen(self) -> None:
        """SIGHUP: reopen our log files, and have the server process reopen its own."""
        reopen_logs()
        child = self.child
        if child is not None and child.process.pid is not None and child.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid, REOPEN_SIGNAL)

    def _spawn(self, listeners: list[Listener]) -> _Child:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=child_main, args=(self.config, listeners, writer), name="gateway-reload"
        )
        process.start()
        writer.close()
        logger.debug("Started the server process (pid %s)", process.pid)
        return _Child(process, reader)

    def _follow(self, child: _Child | None) -> None:
        """Read what the child said; report once that it is serving, or why it stopped."""
        if child is None:
            return
        with contextlib.suppress(EOFError, OSError):
            while not child.reports.closed and child.reports.poll():
                kind, detail = child.reports.recv()
                if kind == "ready" and not child.ready:
                    child.ready = True
                    for sock, endpoint in self._listeners:
                        logger.info(
                            "Listening on %s (server pid %s; restarts on changes)",
                            describe_socket(sock, endpoint.tls is not None),
                            child.process.pid,
                        )
                elif kind != "ready":
                    child.failure = detail
        code = child.process.exitcode
        if code is not None and self.child is child:
            self.child = None
            child.reports.close()
            why = child.failure or f"the server process exited with code {code}"
            logger.error("%s; waiting for a change to try again", why)

    async def _end(self, child: _Child | None, restart: bool) -> None:
        """Stop the child gracefully (as a restart: 1012), killing it if it does not go."""
        if child is None:
            return
        process = child.process
        if process.exitcode is None and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, RESTART_SIGNAL if restart else signal.SIGTERM)
            try:
                await asyncio.wait_for(
                    _wait_exit(process), self.config.graceful_timeout + KILL_AFTER
                )
            except TimeoutError:
                logger.error("The server process did not stop in time: killing it")
                process.kill()
                await _wait_exit(process)
        else:
            process.join()
        if self.child is child:
            self.child = None
        with contextlib.suppress(OSError):
            child.reports.close()


def _short(paths: list[str]) -> str:
    cwd = Path.cwd()
    names = []
    for path in paths[:3]:
        with contextlib.suppress(ValueError):
            path = str(Path(path).relative_to(cwd))
        names.append(path)
    more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    return ", ".join(names) + more


# In the child process ------------------------------------------------------------------


def child_main(config: Config, listeners: list[Listener], reports: Pipe) -> None:
    """The server process (a fresh interpreter): start-up errors go to the supervisor as one
    line; SIGTERM stops it, RESTART_SIGNAL stops it as a restart."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor handles Ctrl-C
    signal.signal(REOPEN_SIGNAL, signal.SIG_IGN)  # until the server handles it: never a death
    set_title("server (reloading)", config)
    server = Server(config)
    server.handled_signals = (signal.SIGTERM, RESTART_SIGNAL)
    try:
        with asyncio.Runner(loop_factory=config.loop_factory()) as runner:
            runner.run(_serve_worker(server, listeners, reports))
    except SyntaxError as exc:
        where = f"{_relative(exc.filename)}, line {exc.lineno}" if exc.filename else "the app"
        reports.send(("syntax", f"cannot import the application: {where}: {exc.msg}"))
        sys.exit(1)
    except ConfigError as exc:
        reports.send(("config", str(exc)))
        sys.exit(1)
    except LifespanFailure as exc:
        reports.send(("lifespan", f"application startup failed: {exc}"))
        sys.exit(3)


def _relative(filename: str) -> str:
    try:
        return str(Path(filename).resolve().relative_to(Path.cwd()))
    except ValueError:
        return filename
