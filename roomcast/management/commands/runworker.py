"""``manage.py runworker CHANNEL...``: roomcast's worker on the project's ASGI_APPLICATION.

Channels' command, with Channels' arguments (``--layer ALIAS``, one or more channel names),
running :class:`roomcast.consumers.worker.Worker` (what ``roomcast worker`` runs) on the
``CHANNEL_LAYERS`` layer of the alias. Several runworker processes on one channel of the Redis
layer share its messages, each message handled by one of them; SIGTERM or SIGINT lets each
finish the message in hand (``--graceful-timeout``) and exits 0. See the worker module for
what happens on a reconnect, a restart and a kill -9.

Mistakes end with one ``CommandError:`` line: a bad ``ASGI_APPLICATION``, an unknown layer
alias or a bad ``CHANNEL_LAYERS`` (status 1), a channel the application does not route
(status 1), an invalid or process-specific channel name (status 2, a usage error). On the
in-memory layer a worker only sees messages sent inside its own process: that is a warning.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.core.management import BaseCommand, CommandError, CommandParser

from roomcast.consumers.worker import (
    DEFAULT_GRACEFUL_TIMEOUT,
    Worker,
    WorkerConfigError,
    configure_logging,
    serve_until_stopped,
)
from roomcast.layers.exceptions import InvalidChannelName, LayerConfigError
from roomcast.layers.memory import InMemoryChannelLayer
from roomcast.layers.settings import DEFAULT_CHANNEL_LAYER, get_channel_layer
from roomcast.management.application import load_application

logger = logging.getLogger("roomcast.consumers.worker")

OUR_LOGGERS = ("roomcast.consumers", "roomcast.layers")


class Command(BaseCommand):  # type: ignore[misc]  # Django is untyped here
    help = (
        "Runs roomcast's worker: consumes the named channels with the 'channel' routes of "
        "the project's ASGI_APPLICATION."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--layer",
            dest="layer",
            default=DEFAULT_CHANNEL_LAYER,
            help="Channel layer alias to use, if not the default.",
        )
        parser.add_argument(
            "--graceful-timeout",
            type=float,
            default=DEFAULT_GRACEFUL_TIMEOUT,
            metavar="SECONDS",
            help="On SIGTERM/SIGINT, how long the messages in hand may take (default: 30).",
        )
        parser.add_argument("channels", nargs="+", help="Channels to listen on.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["graceful_timeout"] < 0:
            raise CommandError("--graceful-timeout must be 0 or more seconds")
        if not any(logging.getLogger(name).handlers for name in OUR_LOGGERS):
            configure_logging(options["verbosity"])  # unless the project's LOGGING has them
        application = load_application()
        try:
            layer = get_channel_layer(options["layer"])
            worker = Worker(
                application,
                options["channels"],
                layer,
                graceful_timeout=options["graceful_timeout"],
            )
        except InvalidChannelName as exc:
            raise CommandError(str(exc), returncode=2) from None
        except (WorkerConfigError, LayerConfigError) as exc:
            raise CommandError(str(exc)) from None
        if isinstance(layer, InMemoryChannelLayer):
            self.stderr.write(
                self.style.WARNING(
                    f"CHANNEL_LAYERS[{options['layer']!r}] is the in-memory layer: this worker "
                    "receives only messages sent inside its own process. Use the Redis layer "
                    "to take work from the web processes."
                )
            )
        try:
            asyncio.run(serve_until_stopped(worker, layer))
        except Exception as exc:
            logger.critical("Worker failed", exc_info=exc)
            raise CommandError(f"worker failed: {type(exc).__name__}: {exc}") from None
