"""``ChannelsLiveServerTestCase``: the project's ASGI application on a real roomcast gateway.

For browser tests (Selenium, Playwright) and real WebSocket clients, as Channels' class of the
same name::

    from roomcast.consumers.testing import ChannelsLiveServerTestCase

    class ChatTests(ChannelsLiveServerTestCase):
        def test_room(self):
            Room.objects.create(name="lobby")
            with websockets.sync.client.connect(f"{self.live_server_ws_url}/ws/lobby/") as ws:
                ...
            browser.get(f"{self.live_server_url}/chat/")

For the whole test class one gateway serves ``get_default_application()`` (Django's
``ASGI_APPLICATION``), wrapped in Django's ``ASGIStaticFilesHandler`` when ``serve_static`` is
true (the default) and ``django.contrib.staticfiles`` is installed. It listens on ``host``
(``"localhost"``, added to ``ALLOWED_HOSTS`` for the class) and ``port`` (0: a free one);
``live_server_url`` is ``http://host:port`` and ``live_server_ws_url`` ``ws://host:port``.
Override the classmethod ``get_application()`` to serve something else.

**The database.** Like Channels' class it is a ``TransactionTestCase``: what a test writes is
committed, so the server's connections see it, and the tables are emptied after each test. As
in Django's ``LiveServerTestCase`` (and unlike Channels, which starts a Daphne process) the
gateway runs in a thread of the test process, on its own event loop: it reads the same
settings (the test database's name, ``override_settings`` of the class) and needs no pickling or
re-import of the project. Talk to the consumers through real clients: the in-memory channel
layer is not thread-safe, so a test that wants to ``group_send`` from its own thread needs the
Redis layer. An in-memory SQLite test database is refused
with ``ImproperlyConfigured`` (each connection would see its own empty database): give SQLite a
``TEST["NAME"]`` file, as Channels asks.

Faults: a gateway that cannot start (port in use, the application failing to import or its
lifespan start-up failing) fails ``setUpClass`` with that error; connections still open when
the class ends are closed by the gateway's graceful shutdown (WebSockets get 1001) within
``shutdown_timeout`` seconds. Nothing survives the test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from django.apps import apps
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.test.testcases import TransactionTestCase
from django.test.utils import modify_settings

from ..routing import get_default_application

if TYPE_CHECKING:
    from roomcast.gateway.server import Server

    from ..base import ASGIApp

__all__ = ["ChannelsLiveServerTestCase"]

START_TIMEOUT = 60.0  # seconds for the gateway to bind and run the lifespan start-up
SHUTDOWN_TIMEOUT = 10.0  # seconds for open connections to finish when the class ends


class GatewayThread(threading.Thread):
    """Runs one roomcast gateway (``Config`` + ``Server``) on its own event loop.

    ``start()``, then ``wait_ready(timeout)`` (raises what stopped the start-up), ``port``, and
    ``stop()``. The gateway is imported here only, when the thread runs.
    """

    def __init__(self, application: ASGIApp, host: str, port: int, shutdown_timeout: float) -> None:
        super().__init__(name=f"roomcast-live-server-{host}", daemon=True)
        self.application = application
        self.host = host
        self.port = port
        self.shutdown_timeout = shutdown_timeout
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None

    def run(self) -> None:
        try:
            from roomcast.gateway.config import Config
            from roomcast.gateway.server import Server

            config = Config(
                app=self.application,
                host=self.host,
                port=self.port,
                verbosity=0,  # warnings and errors (tracebacks of the app) only
                access_log=None,
                graceful_timeout=self.shutdown_timeout,
            )
            server = Server(config)
            server.install_signal_handlers = False  # the test runner owns the signals
            with asyncio.Runner(loop_factory=config.loop_factory()) as runner:
                runner.run(self._serve(server))
        except BaseException as exc:  # reported to setUpClass by wait_ready()
            self.error = exc
        finally:
            self._ready.set()
            connections.close_all()  # this thread's, as Django's live server thread does

    async def _serve(self, server: Server) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = server
        serving = asyncio.ensure_future(server.serve())
        started = asyncio.ensure_future(server.started.wait())
        await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
        if started.done():
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
        else:
            started.cancel()
        await serving  # a failed start-up raises here

    def wait_ready(self, timeout: float) -> None:
        """Return once the gateway accepts connections; raise why it did not."""
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"the live server did not start within {timeout:g} seconds")
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Shut the gateway down gracefully and wait for the thread to end."""
        loop, server = self._loop, self._server
        if loop is not None and server is not None and self.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(server.exit)
        self.join(self.shutdown_timeout + START_TIMEOUT)


class ChannelsLiveServerTestCase(TransactionTestCase):  # type: ignore[misc]  # Django: untyped
    """A ``TransactionTestCase`` with a live roomcast gateway for the class (see the module)."""

    host: ClassVar[str] = "localhost"
    port: ClassVar[int] = 0
    serve_static: ClassVar[bool] = True
    static_wrapper: ClassVar[Any] = ASGIStaticFilesHandler
    shutdown_timeout: ClassVar[float] = SHUTDOWN_TIMEOUT

    _server_thread: ClassVar[GatewayThread]

    @property
    def live_server_url(self) -> str:
        return f"http://{self.host}:{self._server_thread.port}"

    @property
    def live_server_ws_url(self) -> str:
        return f"ws://{self.host}:{self._server_thread.port}"

    @classmethod
    def get_application(cls) -> ASGIApp:
        """What the gateway serves: ``ASGI_APPLICATION``, with static files if asked for."""
        application = get_default_application()
        if cls.serve_static and apps.is_installed("django.contrib.staticfiles"):
            application = cls.static_wrapper(application)
        return application

    @classmethod
    def setUpClass(cls) -> None:
        for connection in connections.all():
            if connection.vendor == "sqlite" and connection.is_in_memory_db():
                raise ImproperlyConfigured(
                    "ChannelsLiveServerTestCase can not be used with in memory databases: "
                    f"give DATABASES[{connection.alias!r}] a TEST NAME that is a file, e.g. "
                    "'TEST': {'NAME': 'test_db.sqlite3'}"
                )
        super().setUpClass()
        hosts = modify_settings(ALLOWED_HOSTS={"append": cls.host})
        hosts.enable()
        cls.addClassCleanup(hosts.disable)
        thread = GatewayThread(cls.get_application(), cls.host, cls.port, cls.shutdown_timeout)
        thread.start()
        cls.addClassCleanup(thread.stop)
        thread.wait_ready(START_TIMEOUT)
        cls._server_thread = thread
