"""The gateway's Server as runserver runs it: in the calling thread, stoppable from any thread.

Under the autoreloader the server runs in Django's ``django-main-thread`` while the process's
main thread watches the files, so the gateway installs no signal handlers there (it installs
them only in the main thread, as with ``--noreload``). :meth:`GatewayRunner.stop` is how the
main thread ends it: the server's own graceful shutdown (stop accepting, let connections
finish up to ``graceful_timeout``, close WebSockets with 1012 for a restart or 1001 for a
stop, the lifespan shutdown), as a signal would start it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from roomcast.gateway.config import Config
from roomcast.gateway.server import Server


class GatewayRunner:
    """Runs ``Server(config)`` in the thread that calls :meth:`run`.

    ``on_started(server)`` is called in the server's loop once it accepts connections (the
    listening sockets are ``server.sockets``). A :meth:`stop` that comes before the loop
    runs is kept and applied as soon as it does.
    """

    def __init__(self, config: Config, on_started: Callable[[Server], None]) -> None:
        self.config = config
        self.server = Server(config)
        self._on_started = on_started
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_asked: bool | None = None  # restart flag of a stop asked before the loop ran
        self._finished = threading.Event()

    def run(self) -> None:
        """Serve until stopped; raises the gateway's ConfigError or LifespanFailure."""
        try:
            with asyncio.Runner(loop_factory=self.config.loop_factory()) as runner:
                runner.run(self._serve())
        finally:
            self._finished.set()

    async def _serve(self) -> None:
        with self._lock:
            self._loop = asyncio.get_running_loop()
            if self._stop_asked is not None:
                self.server.exit(restart=self._stop_asked)
        announce = asyncio.create_task(self._announce())
        try:
            await self.server.serve()
        finally:
            announce.cancel()
            with self._lock:
                self._loop = None  # closed soon: later stops must not schedule on it

    async def _announce(self) -> None:
        await self.server.started.wait()
        self._on_started(self.server)

    def stop(self, restart: bool = False) -> None:
        """Begin the graceful shutdown (from any thread); returns at once."""
        with self._lock:
            if self._loop is None:
                self._stop_asked = restart
                return
            self._loop.call_soon_threadsafe(self.server.exit, restart)

    def wait(self, timeout: float) -> bool:
        """Wait until :meth:`run` has returned; False if it still runs after ``timeout``."""
        return self._finished.wait(timeout)
