"""``manage.py runserver``, served by roomcast's gateway: HTTP/1.1, WebSocket and HTTP/2.

With ``"roomcast"`` in ``INSTALLED_APPS`` (before ``django.contrib.staticfiles``), Django's
development command serves ``settings.ASGI_APPLICATION`` the way ``roomcast serve`` does, with
what a developer expects of runserver:

* Django's flags: ``addrport`` (``8001``, ``0:8000``, ``[::1]:8000``), ``-6/--ipv6``,
  ``--noreload``, ``--skip-checks``; with staticfiles installed ``--nostatic`` and
  ``--insecure``. ``--nothreading`` is accepted and changes nothing (the gateway is asyncio).
* The static files: in DEBUG (or with ``--insecure``) the application is wrapped in Django's
  ``ASGIStaticFilesHandler``, as Django's runserver wraps its WSGI handler; ``--nostatic``
  turns that off.
* The autoreloader: a changed Python file restarts the server (see ``reloader``); each stop
  drains it first, so WebSockets are closed with 1012 on a reload and 1001 on Ctrl-C/SIGTERM.
* TLS: ``--ssl-certfile``/``--ssl-keyfile`` serve HTTPS and WSS, and HTTP/2 by ALPN. In
  cleartext HTTP/2 is there by prior knowledge (h2c) or ``Upgrade: h2c``.
* Daphne's runserver flags ``--http_timeout`` and ``--websocket_handshake_timeout``.
* One access-log line per request on stdout.

Mistakes end with one ``CommandError:`` line and status 1: ``ASGI_APPLICATION`` unset or not
an importable application (see ``roomcast.management.application``), a port in use, TLS
files that do not load. An exception raised by the project's own code while the application
is imported keeps its traceback; under the autoreloader the server then waits for the fix.

Production does not use this command: ``roomcast serve mysite.asgi:application``.
"""

from __future__ import annotations

import os
import sys
import threading
from argparse import ArgumentTypeError
from collections.abc import Mapping
from datetime import datetime
from functools import partial
from typing import Any, NoReturn

from django.apps import apps
from django.conf import settings
from django.core.management import CommandError, CommandParser
from django.core.management.commands.runserver import Command as RunserverCommand
from django.db import connections
from django.utils import autoreload

from roomcast import __version__
from roomcast.gateway.config import Config, ConfigError
from roomcast.gateway.lifespan import LifespanFailure
from roomcast.gateway.server import Server
from roomcast.management import reloader
from roomcast.management.application import application_path, load_application, serve_path
from roomcast.management.serving import GatewayRunner

GRACEFUL_TIMEOUT = 3.0  # a development server: a reload must not wait on a long request
STOP_TIMEOUT = GRACEFUL_TIMEOUT + 5.0  # the drain, the lifespan shutdown, the tasks' cancel
WEBSOCKET_HANDSHAKE_TIMEOUT = 5.0  # Daphne's runserver default


def gateway_config(application: Any, host: str, port: int, options: Mapping[str, Any]) -> Config:
    """runserver's options → the gateway's Config: the one place the two meet."""
    try:
        return Config(
            app=application,
            host=host,
            port=port,
            ssl_certfile=options.get("ssl_certfile"),
            ssl_keyfile=options.get("ssl_keyfile"),
            ssl_keyfile_password=options.get("ssl_keyfile_password"),
            http_timeout=options.get("http_timeout"),
            websocket_connect_timeout=options.get(
                "websocket_handshake_timeout", WEBSOCKET_HANDSHAKE_TIMEOUT
            ),
            verbosity=options.get("verbosity", 1),
            access_log="-",
            graceful_timeout=GRACEFUL_TIMEOUT,
        )
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def _seconds(text: str) -> float | None:
    """A timeout in seconds above 0; -1 (Daphne's convention) for no limit."""
    try:
        value = float(text)
    except ValueError:
        raise ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value == -1:
        return None
    if not 0 < value < float("inf"):
        raise ArgumentTypeError(f"{text!r}: must be above 0, or -1 for no limit")
    return value


class Command(RunserverCommand):  # type: ignore[misc]  # Django is untyped here
    help = (
        "Starts roomcast's ASGI server for development (HTTP, WebSocket, HTTP/2) on the "
        "project's ASGI_APPLICATION, with the autoreloader and, in DEBUG, the static files."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        if apps.is_installed("django.contrib.staticfiles"):
            parser.add_argument(
                "--nostatic",
                action="store_false",
                dest="use_static_handler",
                help="Tells Django to NOT automatically serve static files at STATIC_URL.",
            )
            parser.add_argument(
                "--insecure",
                action="store_true",
                dest="insecure_serving",
                help="Allows serving static files even if DEBUG is False.",
            )
        parser.add_argument(
            "--ssl-certfile",
            metavar="PATH",
            help="Certificate chain (PEM): serve HTTPS and WSS, and HTTP/2 by ALPN.",
        )
        parser.add_argument(
            "--ssl-keyfile", metavar="PATH", help="Private key (PEM) of --ssl-certfile."
        )
        parser.add_argument(
            "--ssl-keyfile-password", metavar="TEXT", help="Password of an encrypted key."
        )
        parser.add_argument(
            "--http_timeout",
            "--http-timeout",
            dest="http_timeout",
            type=_seconds,
            default=None,
            metavar="SECONDS",
            help="Cancel a request not answered by then, with 503 (default: no limit).",
        )
        parser.add_argument(
            "--websocket_handshake_timeout",
            "--websocket-handshake-timeout",
            dest="websocket_handshake_timeout",
            type=_seconds,
            default=WEBSOCKET_HANDSHAKE_TIMEOUT,
            metavar="SECONDS",
            help="Deny (503) a WebSocket the application has not accepted by then (default: 5).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        application_path()  # set and well formed, before a child process is started
        certfile, keyfile = options.get("ssl_certfile"), options.get("ssl_keyfile")
        if bool(certfile) != bool(keyfile):
            raise CommandError("--ssl-certfile and --ssl-keyfile go together: give both")
        for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
            if path and not os.path.isfile(path):
                raise CommandError(f"{flag} {path!r}: no such file")
        self.protocol = "https" if certfile else "http"
        self.runner: GatewayRunner | None = None
        super().handle(*args, **options)  # addrport → self.addr, self.port; then self.run()

    def run(self, **options: Any) -> None:
        if options["use_reloader"]:
            reloader.run_with_reloader(
                partial(self.inner_run, None, **options), self.stop_server, STOP_TIMEOUT
            )
        else:
            self.inner_run(None, **options)

    def inner_run(self, *args: Any, **options: Any) -> None:
        # An exception Django silenced while setting up, to be raised in the reloader's child.
        autoreload.raise_last_exception()
        if not options["skip_checks"]:
            self.stdout.write("Performing system checks...\n\n")
            self.check(display_num_errors=True)
        self.check_migrations()
        for connection in connections.all(initialized_only=True):
            connection.close()  # opened by the migration check; requests open their own
        try:
            config = gateway_config(
                self.get_application(options), self.listen_host(), int(self.port), options
            )
        except CommandError as exc:
            self.fail(exc)
        self.runner = GatewayRunner(config, on_started=self.announce)
        try:
            self.runner.run()
        except ConfigError as exc:
            self.fail(CommandError(str(exc)))
        except LifespanFailure as exc:
            self.fail(CommandError(f"application startup failed: {exc}"))
        except KeyboardInterrupt:  # Ctrl-C before the gateway's signal handlers were in place
            pass
        shutdown_message = options.get("shutdown_message", "")  # Django's stealth option
        if shutdown_message:
            self.stdout.write(shutdown_message)

    def get_application(self, options: Mapping[str, Any]) -> Any:
        """The project's application, behind the static files handler as runserver does."""
        application = load_application()
        if not apps.is_installed("django.contrib.staticfiles"):
            return application
        wanted = options.get("use_static_handler", True)
        if wanted and (settings.DEBUG or options.get("insecure_serving", False)):
            from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

            return ASGIStaticFilesHandler(application)
        return application

    def listen_host(self) -> str:
        return "0.0.0.0" if self.addr == "0" else str(self.addr)  # Django's shorthand

    def announce(self, server: Server) -> None:
        """Django's start-up lines, once the server accepts connections."""
        host = self.listen_host()
        port = server.sockets[0].getsockname()[1] if server.sockets else self.port
        where = f"[{host}]" if ":" in host else host
        quit_command = "CTRL-BREAK" if sys.platform == "win32" else "CONTROL-C"
        now = datetime.now().strftime("%B %d, %Y - %X")
        self.stdout.write(
            f"{now}\n"
            f"Django version {self.get_version()}, roomcast version {__version__}, "
            f"using settings {settings.SETTINGS_MODULE!r}\n"
            f"Starting roomcast ASGI server for {application_path()} "
            f"at {self.protocol}://{where}:{port}/\n"
            f"Quit the server with {quit_command}.\n"
            f"In production: roomcast serve {serve_path()}\n"
        )
        self.stdout.flush()

    def stop_server(self, restart: bool) -> None:
        """The reloader's stop: drain the server, bounded by STOP_TIMEOUT."""
        runner = self.runner
        if runner is None:
            return  # not serving yet (still checking, or the application failed to import)
        runner.stop(restart)
        if not runner.wait(STOP_TIMEOUT):
            self.stderr.write(f"The server did not stop within {STOP_TIMEOUT:g}s.")

    def fail(self, error: CommandError) -> NoReturn:
        """One ``CommandError:`` line and status 1, from the main thread or the server's."""
        if threading.current_thread() is threading.main_thread():
            raise error
        # In the autoreloader's server thread, where sys.exit ends only the thread: Django's
        # runserver exits the same way on a bind error.
        self.stderr.write(f"{type(error).__name__}: {error}")
        self.stderr.flush()
        self.stdout.flush()
        os._exit(error.returncode)
