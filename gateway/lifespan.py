"""The ASGI lifespan protocol (spec 2.0): the app's start-up and shutdown hooks, with ``state``.

The application runs once with a ``lifespan`` scope for the life of the process. Its
``scope["state"]`` is ``ServerState.app_state``, the dict every connection copies into each
request scope, so what the app stores there at start-up is visible to its requests.

``--lifespan auto`` tolerates apps that do not speak the protocol (they raise on the unknown
scope type, or return at once): the server logs it and serves without. ``on`` makes that fatal.
An app that answers ``lifespan.startup.failed`` always stops the server: ``LifespanFailure``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from roomcast.gateway.config import ASGIApp, Config, Message, Scope
from roomcast.gateway.state import ServerState

logger = logging.getLogger("roomcast.gateway.error")

Phase = Literal["idle", "startup", "running", "shutdown", "done"]
_REPLIES: dict[str, tuple[str, str]] = {
    "startup": ("lifespan.startup.complete", "lifespan.startup.failed"),
    "shutdown": ("lifespan.shutdown.complete", "lifespan.shutdown.failed"),
}


class LifespanFailure(Exception):
    """The application's start-up failed; the message is one line for the user."""


class Lifespan:
    """Drives one application through ``lifespan.startup`` and ``lifespan.shutdown``."""

    def __init__(self, app: ASGIApp, config: Config, state: ServerState) -> None:
        self.app = app
        self.mode = config.lifespan
        self.state = state
        self.phase: Phase = "idle"
        self._events: asyncio.Queue[Message] = asyncio.Queue()
        self._reply: asyncio.Future[Message] | None = None
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        """Whether the app completed start-up and will be sent ``lifespan.shutdown``."""
        return self.phase == "running"

    async def startup(self) -> None:
        """Send ``lifespan.startup`` and wait for the answer; raise ``LifespanFailure`` if due."""
        if self.mode == "off":
            return
        scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state.app_state,
        }
        self._task = asyncio.get_running_loop().create_task(self._main(scope))
        reply = await self._exchange("startup")
        if reply is None:
            self._task_gone("startup")
            return
        if reply["type"] == "lifespan.startup.failed":
            self.phase = "done"
            await self.cancel()
            raise LifespanFailure(_one_line(reply.get("message")) or "application startup failed")
        self.phase = "running"
        logger.info("Application startup complete.")

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait for the app to finish its clean-up."""
        if self.phase != "running":
            return
        reply = await self._exchange("shutdown")
        self.phase = "done"
        if reply is None:
            if self._error is not None:
                logger.error("Exception in application shutdown", exc_info=self._error)
        elif reply["type"] == "lifespan.shutdown.failed":
            logger.error("Application shutdown failed: %s", _one_line(reply.get("message")))
        else:
            logger.info("Application shutdown complete.")
        await self.cancel(grace=1.0)

    async def cancel(self, grace: float = 0.0) -> None:
        """Stop the app's lifespan coroutine (after ``grace`` seconds to return by itself)."""
        task = self._task
        if task is None or task.done():
            return
        if grace > 0:
            await asyncio.wait([task], timeout=grace)
        if not task.done():
            task.cancel()
            await asyncio.wait([task])

    async def _exchange(self, phase: Literal["startup", "shutdown"]) -> Message | None:
        """Send the phase's event; the app's reply, or None if the app's coroutine ended."""
        assert self._task is not None
        self.phase = phase
        self._reply = asyncio.get_running_loop().create_future()
        self._events.put_nowait({"type": f"lifespan.{phase}"})
        waiters: list[asyncio.Future[Any]] = [self._reply, self._task]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        return self._reply.result() if self._reply.done() else None

    def _task_gone(self, phase: str) -> None:
        """The app returned or raised instead of answering ``lifespan.startup``."""
        self.phase = "done"
        error = self._error
        if self.mode == "on":
            if error is not None:
                logger.error("Exception in application startup", exc_info=error)
                detail = f"{type(error).__name__}: {_one_line(str(error))}".rstrip(": ")
                raise LifespanFailure(f"raised {detail}")
            raise LifespanFailure(
                f"the application returned without answering lifespan.{phase} "
                "(--lifespan on requires it)"
            )
        reason = f"{type(error).__name__}: {error}" if error is not None else "it returned"
        logger.info("ASGI 'lifespan' protocol appears unsupported (%s); continuing.", reason)
        if error is not None:
            logger.debug("The lifespan attempt raised:", exc_info=error)

    async def _main(self, scope: Scope) -> None:
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the app's fault, reported where the phase is known
            self._error = exc
            if self.phase == "running":
                logger.error("Exception in the application's lifespan task", exc_info=exc)

    async def _receive(self) -> Message:
        return await self._events.get()

    async def _send(self, message: Message) -> None:
        kind = message.get("type")
        allowed = _REPLIES.get(self.phase, ())
        if kind not in allowed or self._reply is None or self._reply.done():
            raise RuntimeError(f"unexpected ASGI message {kind!r} during lifespan {self.phase}")
        self._reply.set_result(message)


def _one_line(text: object) -> str:
    return " ".join(str(text or "").split())
