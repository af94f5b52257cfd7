"""The gateway on a free port in a background thread with its own event loop.

For hypothesis properties, which run synchronously: one server serves every example, and
whatever it logs at ``level`` or above (from its own thread only, not the other tests'
connections) and every loop error is kept, so a property can assert that nothing went wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any, Self

from roomcast.gateway.config import ASGIApp, Config
from roomcast.gateway.connections.http1 import HTTP1Connection
from roomcast.gateway.state import ServerState


class _Recorder(logging.Handler):
    def __init__(self, level: int, thread_name: str) -> None:
        super().__init__(level)
        self.thread_name = thread_name
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.threadName == self.thread_name:
            self.records.append(record)


class ThreadedServer:
    """``start()``, use ``port``, read ``records``/``loop_errors``, ``stop()``."""

    def __init__(self, app: ASGIApp, config: Config, name: str, level: int) -> None:
        self.app = app
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.state = ServerState()
        self.port = 0
        self.loop_errors: list[dict[str, Any]] = []
        self.log = _Recorder(level, name)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def records(self) -> list[logging.LogRecord]:
        return self.log.records

    def start(self) -> Self:
        for name in ("asyncio", "roomcast.gateway.error"):
            logging.getLogger(name).addHandler(self.log)
        self._thread.start()
        assert self._ready.wait(10), f"{self._thread.name} did not start"
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))

        async def serve() -> None:
            self._server = await self.loop.create_server(
                lambda: HTTP1Connection(self.config, self.app, self.state), "127.0.0.1", 0
            )
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self.loop.run_until_complete(serve())
        self.loop.run_forever()
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        with contextlib.suppress(BaseException):
            self.loop.run_until_complete(asyncio.sleep(0.05))
        self.loop.close()

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for connection in list(self.state.connections):
                connection.abort()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        for name in ("asyncio", "roomcast.gateway.error"):
            logging.getLogger(name).removeHandler(self.log)
