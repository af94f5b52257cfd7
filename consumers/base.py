"""The consumer: one ASGI application instance per connection, dispatching by message type.

A consumer class is turned into an ASGI application with :meth:`AsyncConsumer.as_asgi`; each
connection (scope) gets a fresh instance. The instance reads two sources at once, the client
(ASGI ``receive``) and, when a channel layer is configured, its own layer channel
``self.channel_name``, and hands every message to :meth:`~AsyncConsumer.dispatch`, one at a
time, in the order each source delivered them. A message of type ``chat.message`` goes to the
method ``chat_message``; a type whose method name would start with ``_`` is refused.

This is Django Channels' consumer (``channels.consumer``) with these behaviours pinned down:

* **Layer.** ``channel_layer_alias`` (default ``"default"``) names the layer;
  ``layers.get_channel_layer`` resolves it. If the alias is ``None``, or the lookup returns
  ``None``, the consumer runs without a layer: no ``channel_name``, only the client is read.
  An alias that is not configured raises :class:`~roomcast.layers.exceptions.LayerConfigError`
  (where
  Channels silently gives no layer), so a typo is loud.
* **as_asgi(**initkwargs).** Each keyword must name an existing class attribute (as Django's
  ``View.as_view``); it is set on every instance. Anything else is a :class:`TypeError` at
  ``as_asgi`` time, not at the first connection.
* **Errors.** A handler that raises is logged on the ``consumers`` logger with the consumer's
  class, the message type and the path, the exception gets a note naming the consumer, and it
  is re-raised: the server turns it into a WebSocket close 1011 or an HTTP 500 and logs the
  traceback (our gateway does; so do Daphne and Uvicorn), and a test communicator re-raises
  it in the test. A message with no handler is such an error (``ValueError("No handler for
  message type ...")``). Before the consumer returns, whatever it joined through ``groups``
  is left, so a crashed consumer does not linger in its groups.
* **Client gone.** When sending to the client fails with :class:`OSError` (ASGI 2.4: the
  client disconnected), the handler is abandoned quietly and the consumer reads on: the
  server's ``*.disconnect`` message follows and runs the normal disconnect path.
* **Metrics.** Instances running, messages dispatched and handlers that raised are counted per
  class in plain ints (:mod:`roomcast.consumers.metrics`), read by :mod:`roomcast.metrics` when
  Prometheus scrapes.
* **Token expiry.** When ``TokenAuthMiddleware`` put a ``token_expiry`` in the scope and the
  consumer has a ``token_expired`` handler (the WebSocket consumers do), the expiry is one more
  source: a ``{"type": "token.expired"}`` message arrives, in turn, when the token expires (see
  :mod:`roomcast.consumers.tokens`).
* **Sync consumers.** :class:`SyncConsumer` runs each handler with asgiref's
  ``sync_to_async`` (thread-sensitive by default, as Channels' ``database_sync_to_async``;
  set ``thread_sensitive = False`` to use a thread pool) and makes ``self.send`` and layer
  calls blocking through ``async_to_sync``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, ClassVar, Protocol, cast

from asgiref.sync import async_to_sync, sync_to_async
from roomcast.layers import BaseChannelLayer
from roomcast.layers.settings import DEFAULT_CHANNEL_LAYER, get_channel_layer

from .exceptions import InvalidChannelLayerError, StopConsumer
from .metrics import ConsumerStats, stats_for

__all__ = [
    "ASGIApp",
    "AsyncConsumer",
    "ConsumerApp",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "SyncConsumer",
    "get_handler_name",
]

logger = logging.getLogger("roomcast.consumers")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[Any]]


class ConsumerApp(Protocol):
    """What :meth:`AsyncConsumer.as_asgi` returns: an ASGI app that knows its consumer."""

    consumer_class: type[AsyncConsumer]
    consumer_initkwargs: dict[str, Any]

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]: ...


def get_handler_name(message: Message) -> str:
    """The method name for ``message``'s type: ``"chat.message"`` → ``"chat_message"``.

    Raises :class:`ValueError` if the message has no str ``type`` or the name would start with
    an underscore (``"_secret"``, ``".x"``): private methods are never reachable by a message.
    """
    if "type" not in message:
        raise ValueError("Incoming message has no 'type' attribute")
    kind = message["type"]
    if not isinstance(kind, str):
        raise ValueError(f"Incoming message 'type' must be a str, not {type(kind).__name__}")
    name = kind.replace(".", "_")
    if name.startswith("_"):
        raise ValueError(f"Malformed type in message (leading underscore): {kind!r}")
    return name


def _consumer_name(consumer: object) -> str:
    cls = type(consumer)
    return f"{cls.__module__}.{cls.__qualname__}"


class AsyncConsumer:
    """The base consumer: handlers are coroutines named after message types."""

    _sync: ClassVar[bool] = False
    channel_layer_alias: str | None = DEFAULT_CHANNEL_LAYER

    scope: Scope
    channel_layer: BaseChannelLayer | None
    channel_name: str  # set only when there is a layer, as in Channels
    channel_receive: Callable[[], Awaitable[Message]]
    base_send: Send

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args:
            raise TypeError(f"{type(self).__name__}() takes keyword arguments only")
        for key, value in kwargs.items():
            setattr(self, key, value)

    # The ASGI application ---------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run this instance for one connection until :class:`StopConsumer` or an error."""
        self._metrics: ConsumerStats = stats_for(self)
        self._metrics.instances += 1
        try:
            await self._run_instance(scope, receive, send)
        finally:
            self._metrics.instances -= 1

    async def _run_instance(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self._client_send = send
        self._send_error: BaseException | None = None
        sources: list[Callable[[], Awaitable[Message]]] = [receive]
        try:
            self.channel_layer = self._load_channel_layer()
            if self.channel_layer is not None:
                layer = self.channel_layer
                self.channel_name = await layer.new_channel()
                self.channel_receive = functools.partial(layer.receive, self.channel_name)
                sources.append(self.channel_receive)
        except Exception as exc:  # a bad CHANNEL_LAYERS, a layer that is down
            self._report(exc, "the channel layer")
            raise
        self._bind_send(self._send_to_client)
        expiry = scope.get("token_expiry")  # TokenAuthMiddleware's: a "token.expired" message
        if expiry is not None and callable(getattr(self, "token_expired", None)):
            sources.append(expiry.expired_message)
        try:
            await self._dispatch_loop(sources)
        except StopConsumer:
            pass
        finally:
            await self._finish()

    def _load_channel_layer(self) -> BaseChannelLayer | None:
        if self.channel_layer_alias is None:
            return None
        # A module global looked up per call, so a test may replace it (Channels' returns None
        # for an unconfigured alias; a replacement may too).
        layer: BaseChannelLayer | None = get_channel_layer(self.channel_layer_alias)
        return layer

    def _bind_send(self, send: Send) -> None:
        self.base_send = send

    async def _send_to_client(self, message: Message) -> None:
        try:
            await self._client_send(message)
        except OSError as exc:  # ASGI 2.4: the client has gone away
            self._send_error = exc
            raise

    async def _dispatch_loop(self, sources: list[Callable[[], Awaitable[Message]]]) -> None:
        """Await every source at once; handle what arrives one message at a time.

        A source is asked for its next message only after its previous one was handled, so
        each source's messages are handled in the order it delivered them.
        """
        tasks = [asyncio.ensure_future(source()) for source in sources]
        try:
            while True:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for index, task in enumerate(tasks):
                    if task.done():
                        message = task.result()
                        await self._handle(message)
                        tasks[index] = asyncio.ensure_future(sources[index]())
        finally:
            for task in tasks:
                task.cancel()
            # Collects results and exceptions of tasks that completed unhandled, too.
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, message: Message) -> None:
        self._metrics.messages += 1
        try:
            await self.dispatch(message)
        except StopConsumer:
            raise
        except Exception as exc:
            if exc is self._send_error:
                self._send_error = None
                logger.debug(
                    "%s: the client went away while handling %r",
                    _consumer_name(self),
                    message.get("type"),
                )
                return  # the server's disconnect message comes next
            self._metrics.error(message.get("type"))
            self._report(exc, repr(message.get("type")))
            raise

    def _report(self, exc: Exception, doing: str) -> None:
        """Log ``exc`` with the consumer's name and note the name on it (the server logs the
        traceback when the exception reaches it)."""
        name = _consumer_name(self)
        exc.add_note(f"raised in consumer {name} while handling {doing}")
        if self.scope.get("type") == "channel":
            return  # a worker's instance: the worker logs it once, with what happens next
        where = self.scope.get("path") or self.scope.get("channel") or self.scope.get("type")
        logger.error(
            "%s raised %s: %s (handling %s on %s); closing the connection",
            name,
            type(exc).__name__,
            exc,
            doing,
            where,
        )

    async def _finish(self) -> None:
        """Runs when the instance ends, however it ends; subclasses release what they hold."""

    # Dispatch ---------------------------------------------------------------------------

    def _get_handler(self, message: Message) -> Callable[[Message], Any]:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None or not callable(handler):
            raise ValueError(
                f"No handler for message type {message['type']} "
                f"({type(self).__name__} has no method {get_handler_name(message)})"
            )
        return cast(Callable[[Message], Any], handler)

    async def dispatch(self, message: Message) -> None:
        """Call the handler named after ``message["type"]``; :class:`ValueError` if none."""
        await self._get_handler(message)(message)

    async def send(self, message: Message) -> None:
        """Send an ASGI message to the client (overridable)."""
        await self.base_send(message)

    # Building the application -----------------------------------------------------------

    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> ConsumerApp:
        """An ASGI application that runs a new ``cls(**initkwargs)`` for each scope.

        Like Django's ``as_view()``: each keyword must already be an attribute of the class
        (``groups``, ``channel_layer_alias``, one of your own), else :class:`TypeError`.
        """
        for key in initkwargs:
            if key.startswith("_") or not hasattr(cls, key):
                raise TypeError(
                    f"{cls.__name__}.as_asgi() received an invalid keyword {key!r}: as_asgi() "
                    f"only accepts arguments that are already attributes of the class"
                )

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            consumer = cls(**initkwargs)
            await consumer(scope, receive, send)

        app.consumer_class = cls  # type: ignore[attr-defined]
        app.consumer_initkwargs = initkwargs  # type: ignore[attr-defined]
        functools.update_wrapper(app, cls, updated=())
        return cast(ConsumerApp, app)


class _GroupMembership(AsyncConsumer):
    """The ``groups`` attribute: joined when the connection starts (WebSocket: before
    ``connect()``; HTTP: before ``handle()``), left when it ends, and in any case before the
    consumer returns, even by an error or cancellation."""

    groups: list[str] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.groups = list(self.groups or [])  # never share the class's (or as_asgi's) list

    def _group_layer(self) -> BaseChannelLayer:
        layer: BaseChannelLayer | None = getattr(self, "channel_layer", None)
        if layer is None or not hasattr(layer, "group_add"):
            raise InvalidChannelLayerError(
                f"{type(self).__name__} has groups {self.groups!r} but no channel layer with "
                f"groups (channel_layer_alias={self.channel_layer_alias!r})"
            )
        return layer

    def _joined(self) -> list[str]:
        """The groups joined through ``groups`` and not yet left (robust to a subclass
        ``__init__`` that skips ours)."""
        joined: list[str] = self.__dict__.setdefault("_joined_groups", [])
        return joined

    async def _join_groups(self) -> None:
        groups = list(self.groups or [])
        if not groups:
            return
        layer = self._group_layer()
        joined = self._joined()
        for group in groups:
            await layer.group_add(group, self.channel_name)
            joined.append(group)

    async def _leave_groups(self) -> None:
        joined = self._joined()
        layer = getattr(self, "channel_layer", None)
        while joined and layer is not None:
            await layer.group_discard(joined.pop(), self.channel_name)

    async def _finish(self) -> None:
        try:
            await self._leave_groups()
        except Exception:
            logger.exception("%s: leaving its groups failed", _consumer_name(self))
        await super()._finish()


class SyncConsumer(AsyncConsumer):
    """A consumer whose handlers are plain functions, run in a worker thread.

    ``self.send(message)`` blocks until the message is handed to the server, and layer calls
    are made blocking with ``async_to_sync(self.channel_layer.group_send)(...)``, as in
    Channels. ``thread_sensitive`` (default ``True``) runs every sync handler of the process
    in one thread, which is what Django's ORM needs; ``False`` uses asgiref's thread pool.
    """

    _sync = True
    thread_sensitive: bool = True
    base_send: Callable[[Message], None]  # type: ignore[assignment]

    def _bind_send(self, send: Send) -> None:
        self.base_send = async_to_sync(send)

    async def dispatch(self, message: Message) -> None:
        """Run the handler named after ``message["type"]`` in a thread."""
        handler = self._get_handler(message)
        await sync_to_async(handler, thread_sensitive=self.thread_sensitive)(message)

    def send(self, message: Message) -> None:  # type: ignore[override]
        """Send an ASGI message to the client; blocks until the server took it."""
        self.base_send(message)
