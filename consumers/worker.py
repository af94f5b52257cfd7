"""The worker: consume named channels with an application's ``channel`` routes (``runworker``).

An HTTP or WebSocket consumer hands slow work off with ``channel_layer.send("thumbnails",
{"type": "thumbnails.make", ...})``; a worker process receives from ``thumbnails`` and runs the
application routed for it, usually through ``ChannelNameRouter``::

    application = ProtocolTypeRouter({
        "websocket": ...,
        "channel": ChannelNameRouter({"thumbnails": ThumbnailConsumer.as_asgi()}),
    })

    $ python -m roomcast.consumers.worker myproject.asgi:application thumbnails
    $ roomcast worker --layer default -v 2 myproject.asgi:application thumbnails resize

As Channels' worker does, each channel name gets ONE application instance, made with the scope
``{"type": "channel", "channel": name}``; the messages received from the channel reach it
through its ASGI ``receive``, one at a time, in the order the layer delivered them. With the
Redis layer a plain channel is a list any process may receive from, so several workers on one
channel share its messages, each message handled by one of them.

What is pinned down here (Channels leaves it open):

* **Pull, don't hoard.** A worker takes a channel's next message from the layer only when that
  channel's instance waits for one: the messages it holds are the one being handled, no more.
  So idle workers on the same channel get the next messages, and a worker that dies loses at
  most the message it was handling (the layer is at most once: nothing is redelivered).
* **Errors.** An instance that raises is logged with its consumer and channel, with the
  traceback; the worker goes on, and the channel's next message goes to a new instance. A
  message without a str ``type`` is logged and dropped. An application has no client: its
  ``send`` raises; reply through the layer (``channel_layer.send(event["reply_channel"], ...)``).
* **Shutdown.** SIGTERM or SIGINT: stop taking messages (a ``receive`` waiting on a Redis list
  is cancelled without losing an entry), let each instance finish the message in hand for up to
  ``graceful_timeout`` seconds, cancel the instances and exit 0. A second signal cuts the
  waiting short.
* **Names.** Channels are plain names (``thumbnails``, ``mail.send``); a process-specific name
  (with ``!``) belongs to the process that made it and is refused, as is a name the
  application's routers visibly do not route (a typo would otherwise eat messages).

``--metrics-port PORT`` (or ``ROOMCAST_METRICS_PORT``) serves Prometheus metrics at
``http://127.0.0.1:PORT/metrics`` (``--metrics-host`` to listen elsewhere): the consumers',
the layer's and the process's (see :mod:`roomcast.metrics`); it needs ``roomcast[metrics]``.

The command (``python -m roomcast.consumers.worker`` or ``roomcast worker``) ends user mistakes
(bad app
path, invalid channel name, unknown layer alias, bad ``CHANNEL_LAYERS``) with one
``roomcast: error: ...`` line: exit status 1, or 2 for a bad command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click
from roomcast.layers import BaseChannelLayer
from roomcast.layers.exceptions import InvalidChannelName, LayerConfigError
from roomcast.layers.settings import DEFAULT_CHANNEL_LAYER, get_channel_layer

from roomcast import metrics

from .base import ASGIApp, Message, Scope

__all__ = ["Worker", "WorkerConfigError", "main", "serve_until_stopped"]

logger = logging.getLogger("roomcast.consumers.worker")

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DEFAULT_GRACEFUL_TIMEOUT = 30.0
PROG = "roomcast worker"
EXIT_CONFIG = 1
EXIT_USAGE = 2


class WorkerConfigError(ValueError):
    """The worker cannot run as asked: no channels, or a channel the application does not route."""


# Which consumer runs a channel (for checks and log lines) ---------------------------------


def _route(application: Any, channel: str) -> tuple[bool, str]:
    """Follow ``application``'s routers for ``channel``: (routed, what runs it).

    Walks ``ProtocolTypeRouter``, ``ChannelNameRouter`` and middleware (``.inner``); routed is
    False only when a router there visibly has no route. What runs it is a consumer's class
    name when the walk reaches one, else the last application seen.
    """
    from .routing import ChannelNameRouter, ProtocolTypeRouter

    app: Any = application
    for _ in range(32):  # middleware stacks are shallow; never loop on a cycle
        if isinstance(app, ProtocolTypeRouter):
            if "channel" not in app.application_mapping:
                known = ", ".join(repr(k) for k in app.application_mapping) or "none"
                return False, f"its ProtocolTypeRouter has no 'channel' entry (it has {known})"
            app = app.application_mapping["channel"]
        elif isinstance(app, ChannelNameRouter):
            if channel not in app.application_mapping:
                known = ", ".join(repr(k) for k in app.application_mapping) or "none"
                return False, f"its ChannelNameRouter routes {known}"
            app = app.application_mapping[channel]
        elif hasattr(app, "consumer_class"):
            cls = app.consumer_class
            return True, f"{cls.__module__}.{cls.__qualname__}"
        elif hasattr(app, "inner"):
            app = app.inner
        else:
            break
    return True, getattr(app, "__qualname__", None) or type(app).__qualname__


def _check_channels(
    application: ASGIApp, channels: Iterable[str], layer: BaseChannelLayer
) -> list[str]:
    """The channel names, deduplicated in order; raise for one a worker cannot receive."""
    names = list(dict.fromkeys(channels))
    if not names:
        raise WorkerConfigError("no channels to consume: name at least one")
    for name in names:
        layer.require_valid_channel_name(name, receive=True)
        if "!" in name:
            raise InvalidChannelName(
                f"channel {name!r} is process-specific (it has a '!'): only the process that "
                f"made it receives from it; a worker consumes plain names such as 'thumbnails'"
            )
        routed, why = _route(application, name)
        if not routed:
            raise WorkerConfigError(f"the application does not route channel {name!r}: {why}")
    return names


# One application instance per channel ------------------------------------------------------


class _Instance:
    """The application instance of one channel: fed through a queue, one message at a time."""

    def __init__(self, application: ASGIApp, channel: str, consumer: str) -> None:
        self.channel = channel
        self.consumer = consumer
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.idle = asyncio.Event()  # set while it waits in receive() with nothing queued
        scope: Scope = {"type": "channel", "channel": channel}
        self.task = asyncio.create_task(
            self._run(application, scope), name=f"worker instance for {channel!r}"
        )
        self.task.add_done_callback(self._ended)

    async def _run(self, application: ASGIApp, scope: Scope) -> None:
        await application(scope, self.receive, self.send)

    async def receive(self) -> Message:
        if self.queue.empty():
            self.idle.set()
        return await self.queue.get()

    async def send(self, message: Message) -> None:
        raise RuntimeError(
            f"the application for channel {self.channel!r} sent {message.get('type')!r}, but a "
            f"worker has no client to send to; reply through the channel layer instead"
        )

    def hand(self, message: Message) -> None:
        self.idle.clear()
        self.queue.put_nowait(message)

    async def ready(self) -> None:
        """Return when the instance waits for a message with none queued, or has ended."""
        if self.idle.is_set() or self.task.done():
            return
        idle = asyncio.ensure_future(self.idle.wait())
        try:
            await asyncio.wait([idle, self.task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error(
                "%s raised %s on channel %r: %s; a new instance takes the next message",
                self.consumer,
                type(exc).__name__,
                self.channel,
                exc,
                exc_info=exc,
            )
        elif not self.queue.empty():
            logger.warning(
                "%s returned on channel %r with %d message(s) unread; they are lost",
                self.consumer,
                self.channel,
                self.queue.qsize(),
            )
        else:
            logger.debug("%s returned on channel %r", self.consumer, self.channel)


class Worker:
    """Receive from ``channels`` on ``channel_layer`` and run ``application`` on the messages.

    ``await worker.arun()`` runs until :meth:`stop`; ``await worker.serve()`` also stops on
    SIGTERM/SIGINT (main thread only); ``worker.run()`` is ``asyncio.run(worker.serve())``.
    The layer is the caller's: the worker never closes it.
    """

    def __init__(
        self,
        application: ASGIApp,
        channels: Sequence[str],
        channel_layer: BaseChannelLayer | None,
        *,
        graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT,
    ) -> None:
        if channel_layer is None:
            raise WorkerConfigError("a worker needs a channel layer, got None")
        if isinstance(channels, str):
            raise TypeError("channels must be a list of names, not a str")
        self.application = application
        self.channel_layer = channel_layer
        self.channels = _check_channels(application, channels, channel_layer)
        self.graceful_timeout = graceful_timeout
        self.consumers = {name: _route(application, name)[1] for name in self.channels}
        self.handled = 0  # messages handed to instances
        self._instances: dict[str, _Instance] = {}
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()

    def stop(self, force: bool = False) -> None:
        """Stop taking messages and finish the ones in hand (``force``: without waiting)."""
        if force:
            self._forced.set()
        self._stopping.set()

    # Running ----------------------------------------------------------------------------

    def run(self) -> None:
        """Serve in a new event loop until SIGTERM/SIGINT."""
        asyncio.run(self.serve())

    async def serve(self) -> None:
        """:meth:`arun` with SIGTERM/SIGINT handlers (first: graceful stop; second: at once)."""
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED_SIGNALS:
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
        try:
            await self.arun()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping.is_set():
            logger.warning("Received %s again: stopping now", sig.name)
            self.stop(force=True)
        else:
            logger.info("Received %s: finishing the messages in hand", sig.name)
            self.stop()

    async def arun(self) -> None:
        """Consume until :meth:`stop`; then drain. Raises what a listener raised (layer faults
        other than an outage, which the layer waits out)."""
        logger.info(
            "Worker %d listening on %s (%s)",
            os.getpid(),
            ", ".join(f"{name!r} -> {self.consumers[name]}" for name in self.channels),
            type(self.channel_layer).__name__,
        )
        listeners = [
            asyncio.create_task(self._listen(name), name=f"worker listener {name!r}")
            for name in self.channels
        ]
        stopping = asyncio.ensure_future(self._stopping.wait())
        failure: BaseException | None = None
        try:
            await asyncio.wait([stopping, *listeners], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.stop(force=True)
            raise
        finally:
            stopping.cancel()
            for listener in listeners:
                listener.cancel()
            for result in await asyncio.gather(*listeners, return_exceptions=True):
                if isinstance(result, Exception) and failure is None:
                    failure = result
            await self._drain()
        if failure is not None:
            raise failure
        logger.info("Worker %d stopped after %d message(s)", os.getpid(), self.handled)

    async def _listen(self, channel: str) -> None:
        layer = self.channel_layer
        while True:
            current = self._instances.get(channel)
            if current is not None:
                await current.ready()  # pull the next message only when it can be handled
            message = await layer.receive(channel)
            if not isinstance(message.get("type"), str):
                logger.warning("channel %r: dropped a message without a str 'type'", channel)
                continue
            instance = self._instances.get(channel)
            if instance is None or instance.task.done():
                instance = _Instance(self.application, channel, self.consumers[channel])
                self._instances[channel] = instance
            logger.debug("channel %r: %s", channel, message["type"])
            instance.hand(message)
            self.handled += 1

    async def _drain(self) -> None:
        """Let instances finish the message in hand (bounded), then cancel them all."""
        instances = [i for i in self._instances.values() if not i.task.done()]
        busy = [i for i in instances if not i.idle.is_set()]
        if busy and not self._forced.is_set():
            logger.info(
                "Finishing %d message(s) in hand (up to %gs)", len(busy), self.graceful_timeout
            )
            finished: asyncio.Future[Any] = asyncio.gather(*(i.ready() for i in busy))
            forced: asyncio.Future[Any] = asyncio.ensure_future(self._forced.wait())
            try:
                await asyncio.wait(
                    [finished, forced],
                    timeout=self.graceful_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                forced.cancel()
                finished.cancel()
            left = [i.channel for i in busy if not (i.idle.is_set() or i.task.done())]
            if left:
                logger.warning("Cancelling the messages still in hand on %s", ", ".join(left))
        for instance in instances:
            instance.task.cancel()
        await asyncio.gather(*(i.task for i in instances), return_exceptions=True)
        self._instances.clear()


# The command ------------------------------------------------------------------------------


def import_application(path: str) -> ASGIApp:
    """``package.module:attribute`` → the application, with one-line errors."""
    module_name, colon, attributes = path.partition(":")
    if not colon or not module_name or not attributes:
        raise WorkerConfigError(f"application {path!r} must look like 'module:attribute'")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: the current directory's modules load
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise WorkerConfigError(f"cannot import module {module_name!r}: {exc}") from exc
        raise  # the module exists but fails inside: its traceback matters
    app: Any = module
    for name in attributes.split("."):
        try:
            app = getattr(app, name)
        except AttributeError:
            raise WorkerConfigError(
                f"module {module_name!r} has no attribute {attributes!r}"
            ) from None
    if not callable(app):
        raise WorkerConfigError(f"{path!r} is not an ASGI application (not callable)")
    return app  # type: ignore[no-any-return]


VERBOSITY_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}
LOG_FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"


def configure_logging(verbosity: int) -> None:
    """Our loggers (``roomcast.consumers``, ``roomcast.layers``) to stderr; not the app's."""
    level = VERBOSITY_LEVELS.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for name in ("roomcast.consumers", "roomcast.layers"):
        ours = logging.getLogger(name)
        for old in [h for h in ours.handlers if getattr(h, "_roomcast_worker", False)]:
            ours.removeHandler(old)
        setattr(handler, "_roomcast_worker", True)  # noqa: B010 - marks our handler
        ours.addHandler(handler)
        ours.setLevel(level)
        ours.propagate = False
    logging.getLogger("asyncio").setLevel(logging.DEBUG if verbosity >= 3 else logging.WARNING)


def fail(message: str, status: int = EXIT_CONFIG) -> NoReturn:
    click.echo(f"roomcast: error: {' '.join(message.split())}", err=True)
    sys.exit(status)


if TYPE_CHECKING:  # click 8.3+ types ParamType as generic; older clicks cannot subscript it
    _ParamType = click.ParamType[Any]
else:
    _ParamType = click.ParamType


class _Number(_ParamType):
    """A number from ``minimum`` to ``maximum`` (click's ranges clutter ``--help``)."""

    def __init__(self, kind: type[int] | type[float], maximum: float | None = None) -> None:
        self.kind = kind
        self.maximum = maximum
        self.name = kind.__name__

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a valid {self.name}", param, ctx)
        if not number >= 0 or (self.maximum is not None and number > self.maximum):
            upper = f" to {self.maximum:g}" if self.maximum is not None else " or more"
            self.fail(f"{value!r} is out of range: must be 0{upper}", param, ctx)
        return number


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.argument("app", metavar="APP")
@click.argument("channels", metavar="CHANNEL...", nargs=-1, required=True)
@click.option(
    "--layer",
    "alias",
    default=DEFAULT_CHANNEL_LAYER,
    show_default=True,
    metavar="ALIAS",
    help="The CHANNEL_LAYERS alias to receive from.",
)
@click.option(
    "--graceful-timeout",
    type=_Number(float),
    default=DEFAULT_GRACEFUL_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="On SIGTERM/SIGINT, how long the messages in hand may take before being cut.",
)
@click.option(
    "-v",
    "--verbosity",
    type=_Number(int, 3),
    default=1,
    show_default=True,
    metavar="0-3",
    help="0 warnings only, 1 start/stop, 2 debug (each message), 3 debug with asyncio.",
)
@click.option(
    "--metrics-port",
    type=_Number(int, 65535),
    default=None,
    envvar="ROOMCAST_METRICS_PORT",
    metavar="PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (needs roomcast[metrics]).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    envvar="ROOMCAST_METRICS_HOST",
    metavar="HOST",
    help="The address --metrics-port listens on (0.0.0.0 in a container).",
)
def main(
    app: str,
    channels: tuple[str, ...],
    alias: str,
    graceful_timeout: float,
    verbosity: int,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Consume the named CHANNELs with the 'channel' routes of the ASGI application APP.

    APP is 'module:attribute', e.g. myproject.asgi:application, imported from the current
    directory first. The layer comes from CHANNEL_LAYERS (Django settings, ROOMCAST_SETTINGS or
    ROOMCAST_LAYER_URL). Run several workers on one channel to share its messages.

    \b
    Examples:
      roomcast worker myproject.asgi:application thumbnails
      python -m roomcast.consumers.worker --layer jobs -v 2 myproject.asgi:application mail resize
    """
    configure_logging(verbosity)
    try:
        if metrics_port is not None:
            metrics.require()
        application = import_application(app)
        layer = get_channel_layer(alias)
        worker = Worker(application, channels, layer, graceful_timeout=graceful_timeout)
    except InvalidChannelName as exc:
        fail(str(exc), EXIT_USAGE)
    except (WorkerConfigError, LayerConfigError, metrics.MetricsError) as exc:
        fail(str(exc))
    try:
        asyncio.run(serve_until_stopped(worker, layer, metrics_port, metrics_host))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        sys.exit(130)
    except metrics.MetricsError as exc:  # the metrics port is taken
        fail(str(exc))
    except Exception as exc:
        logger.critical("Worker failed", exc_info=exc)
        fail(f"worker failed: {type(exc).__name__}: {exc}")


async def serve_until_stopped(
    worker: Worker,
    layer: BaseChannelLayer,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> None:
    """Run ``worker`` until SIGTERM/SIGINT; ``layer`` is closed on the way out (its
    connections, its tasks). What ``roomcast worker`` and ``manage.py runworker`` run.
    With ``metrics_port``, ``/metrics`` is served there meanwhile (:func:`roomcast.metrics.serve`).
    """
    exporter = None
    if metrics_port is not None:
        exporter = await metrics.serve(metrics_port, metrics_host)
        logger.info("Serving metrics on %s", exporter.url)
    try:
        await worker.serve()
    finally:
        if exporter is not None:
            exporter.close()
        with contextlib.suppress(Exception):
            await layer.close()


if __name__ == "__main__":
    main(prog_name=PROG)
