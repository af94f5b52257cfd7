"""Start-up checks run in the ASGI lifespan by :class:`~.routing.ProtocolTypeRouter`.

A mistake in ``CHANNEL_LAYERS`` (``"capasity"``, a ``BACKEND`` that does not import) used to
surface at the first WebSocket, as a 500 on every connection. Now the router answers the
server's ``lifespan.startup`` by building every configured layer first:

- a configuration error fails start-up with ``lifespan.startup.failed`` and the layer's own
  message, which names the alias and the key (``CHANNEL_LAYERS['default']['CONFIG']: unknown
  option 'capasity' ...``); the gateway prints it as one ``roomcast: error:`` line and exits 3;
- a layer that cannot reach its server (``check()`` raises
  :class:`~roomcast.layers.exceptions.LayerConnectionError`) is one warning line; start-up goes
  on, the layer reports itself not ready (``roomcast.readiness``, the gateway's readiness path
  answers 503) and keeps reconnecting in the background, so the process serves as soon as
  Redis answers instead of crash-looping while Redis boots.

When the mapping has its own ``"lifespan"`` application, the checks run before that
application sees ``lifespan.startup``; when it has none, the router answers the lifespan
protocol itself (before, a router without one made the server log "lifespan unsupported").
The checks can be turned off with ``ProtocolTypeRouter(..., check_layers=False)``.

Faults: a restart runs the checks again; a Redis that goes away later is the layer's business
(it waits short outages out and reports readiness); a kill -9 leaves nothing to undo here.
"""

from __future__ import annotations

import logging

from roomcast.layers.exceptions import LayerConfigError, LayerConnectionError
from roomcast.layers.settings import channel_layers

from .middleware import ASGIApp, Message, Receive, Scope, Send

__all__ = ["LifespanChecks", "check_channel_layers"]

logger = logging.getLogger(__name__)


async def check_channel_layers() -> None:
    """Build and check every configured channel layer.

    Raises :class:`LayerConfigError` (naming alias and key) for a configuration that cannot
    work; an unreachable server is logged as one warning per layer and not raised.
    """
    for alias in channel_layers.configs:
        layer = channel_layers.get(alias)
        try:
            await layer.check()
        except LayerConnectionError as exc:
            logger.warning(
                "channel layer %r cannot reach its server (%s); serving, not ready until it "
                "answers",
                alias,
                exc,
            )


class _StartupFailed(Exception):
    """Ends the wrapped lifespan application after we answered ``lifespan.startup.failed``."""


class LifespanChecks:
    """The router's ``lifespan`` application: the checks, then the user's own, if any."""

    def __init__(self, application: ASGIApp | None, *, check_layers: bool = True) -> None:
        self.application = application
        self.check_layers = check_layers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.application is None:
            await self._answer(receive, send)
            return

        async def checked_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                failure = await self._failure()
                if failure is not None:
                    await send({"type": "lifespan.startup.failed", "message": failure})
                    raise _StartupFailed(failure)
            return message

        try:
            await self.application(scope, checked_receive, send)
        except _StartupFailed:
            return

    async def _answer(self, receive: Receive, send: Send) -> None:
        """Speak the lifespan protocol for a mapping that has no application of its own."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                failure = await self._failure()
                if failure is not None:
                    await send({"type": "lifespan.startup.failed", "message": failure})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _failure(self) -> str | None:
        """The start-up failure to report, or None when the checks pass (or are off)."""
        if not self.check_layers:
            return None
        try:
            await check_channel_layers()
        except LayerConfigError as exc:
            return str(exc)
        return None
