"""One WebSocket session as an ASGI ``websocket`` conversation.

The stream does not know what carries it (an HTTP/1.1 upgrade today, an HTTP/2 extended
CONNECT later): it runs the app, keeps the app's messages in a legal order, and talks to its
carrier through :class:`WebSocketResponder`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from enum import Enum
from typing import Literal, Protocol

from ..config import ASGIApp, Message, Scope
from ..logging import access_logger, log_websocket
from .http import ClientDisconnected, ProtocolViolation

logger = logging.getLogger("roomcast.gateway.error")


Closer = Literal["client", "app", "server"]  # who ended a session, for the access log


class WebSocketResponder(Protocol):
    """What a WebSocket stream needs from the connection that carries it."""

    accept_status: int  # the status an accepted handshake answers with (101; 200 on HTTP/2)

    def accept(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> None:
        """Complete the handshake."""

    async def send_message(self, data: str | bytes) -> None:
        """Send one message; waits (bounded) while the client is not reading."""

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; before the handshake completed, drop the connection."""

    def deny(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, end: bool) -> None:
        """Refuse the handshake with an HTTP response (``body`` parts follow until ``end``)."""

    def pause_reading(self) -> None:
        """Stop reading frames: the app is behind."""

    def resume_reading(self) -> None:
        """The app caught up; read on."""


class State(Enum):
    CONNECTING = 1
    CONNECTED = 2
    RESPONDING = 3  # sending an HTTP denial response
    CLOSED = 4


# Received messages queued for the app before the carrier stops reading from the client. Each
# message also costs its dict: MESSAGE_COST keeps a flood of tiny messages bounded too.
QUEUE_HIGH_WATER = 512 * 1024
MESSAGE_COST = 256

_DENIED = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]


class WebSocketStream:
    """Runs ``app`` for one WebSocket and relays messages both ways."""

    def __init__(
        self,
        app: ASGIApp,
        scope: Scope,
        responder: WebSocketResponder,
        connect_timeout: float | None = None,
        session_timeout: float | None = None,
        close_timeout: float | None = None,
        subprotocols: Sequence[str] = (),
    ) -> None:
        """The timeouts are Config's ``websocket_connect_timeout``, ``websocket_timeout`` and
        ``application_close_timeout``; None means no limit. ``subprotocols``: Config's
        ``ws_protocols``, Daphne's ``--ws-protocol``: when the app accepts without naming a
        subprotocol, the first the client offered that is among them is answered."""
        self.app = app
        self.scope = scope
        self.responder = responder
        self.connect_timeout = connect_timeout
        self.session_timeout = session_timeout
        self._timer: asyncio.TimerHandle | None = None
        self.state = State.CONNECTING
        self._incoming: deque[Message] = deque([{"type": "websocket.connect"}])
        self._waiting: asyncio.Future[None] | None = None
        self._disconnected: Message | None = None
        self.queued_bytes = 0  # what ``_incoming`` holds, for read backpressure
        self._reading_paused = False
        self.close_timeout = close_timeout
        self._disconnect_delivered = False
        self._task: asyncio.Task[None] | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._killed = False
        self.supported = subprotocols
        self._started_at = time.perf_counter()
        self._logged_end = False
        self.received = 0  # messages, for the access log
        self.sent = 0

    # Fed by the connection ----------------------------------------------------------------

    def feed_message(self, data: str | bytes) -> None:
        if isinstance(data, str):
            self._incoming.append({"type": "websocket.receive", "text": data})
        else:
            self._incoming.append({"type": "websocket.receive", "bytes": data})
        self.received += 1
        self.queued_bytes += len(data) + MESSAGE_COST
        if self.queued_bytes > QUEUE_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.responder.pause_reading()
        self._wake()

    def feed_disconnect(self, code: int, reason: str = "", by: Closer = "client") -> None:
        """The session is over: ``code`` for the app; ``by`` for the access log."""
        self._cancel_timer()
        if self.state is State.CONNECTING and by == "server":
            self._log("WSREJECT", 503)  # the server went away before the app answered
        else:
            self._log_end(code, by)
        if self._disconnected is None:
            self._disconnected = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self.state = State.CLOSED
            self._wake()
            self._arm_kill()

    def _arm_kill(self) -> None:
        """Daphne's ``--application-close-timeout``: an app still running that long after the
        WebSocket closed is cancelled."""
        task = self._task
        if self.close_timeout is None or task is None or task.done() or self._kill_timer:
            return
        self._kill_timer = asyncio.get_running_loop().call_later(self.close_timeout, self._kill)

    def _kill(self) -> None:
        task = self._task
        if task is None or task.done():
            return
        logger.warning(
            "application still running %gs after WebSocket %s closed: cancelled",
            self.close_timeout,
            self.scope["path"],
        )
        self._killed = True
        task.cancel()

    def _wake(self) -> None:
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    # The ASGI side --------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the app; a handshake it leaves unanswered past ``connect_timeout`` is denied."""
        self._task = asyncio.current_task()
        self._log("WSCONNECTING")
        if self.connect_timeout is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.connect_timeout, self._on_connect_timeout)
        try:
            await self._run_app()
        except asyncio.CancelledError:
            if not self._killed or self._task is None or self._task.uncancel() != 0:
                raise
        finally:
            self._cancel_timer()
            if self._kill_timer is not None:
                self._kill_timer.cancel()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_connect_timeout(self) -> None:
        """Daphne's ``--websocket_connect_timeout``: deny with 503; the app sees a disconnect."""
        self._timer = None
        if self.state is not State.CONNECTING:
            return
        logger.warning(
            "application did not accept WebSocket %s within %gs: 503",
            self.scope["path"],
            self.connect_timeout,
        )
        self._deny(503)
        self.feed_disconnect(1006)  # the session never opened: an abnormal closure

    def _on_session_timeout(self) -> None:
        """Daphne's ``--websocket_timeout``: close (1000) a WebSocket open for that long."""
        self._timer = None
        if self.state is not State.CONNECTED:
            return
        logger.info("closing WebSocket %s after %gs", self.scope["path"], self.session_timeout)
        self._log_end(1000, "server")
        self.state = State.CLOSED
        self.responder.close(1000, "")
        self.feed_disconnect(1000)

    async def _run_app(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            self._finish(1001)  # the server is going away
            raise
        except ClientDisconnected:
            pass
        except ProtocolViolation as exc:
            logger.error("ASGI protocol violation on WebSocket %s: %s", self.scope["path"], exc)
            self._finish(1011)
        except BaseException as exc:
            logger.error(
                "Exception in ASGI application on WebSocket %s", self.scope["path"], exc_info=exc
            )
            self._finish(1011)
        else:
            if self.state is State.CONNECTING:
                logger.error(
                    "ASGI application returned without accepting WebSocket %s", self.scope["path"]
                )
            self._finish(1000)

    def _finish(self, code: int) -> None:
        """End the session after the app stopped: deny, or close with ``code``."""
        if self.state is State.CONNECTING:
            self._deny({1011: 500, 1001: 503}.get(code, 403))
        elif self.state is State.CONNECTED:
            self._log_end(code, "server" if code == 1001 else "app")
            self.state = State.CLOSED
            self.responder.close(code, "")
        elif self.state is State.RESPONDING:
            # The app stopped half-way through its denial response: completing it would pass
            # a truncated body off as whole, so the connection is dropped instead.
            self.state = State.CLOSED
            self.responder.close(code, "")

    def _deny(self, status: int) -> None:
        self._log("WSREJECT", status)
        self.state = State.CLOSED
        body = {403: b"Forbidden", 503: b"Service Unavailable"}.get(
            status, b"Internal Server Error"
        )
        headers = [*_DENIED, (b"content-length", str(len(body)).encode())]
        self.responder.deny(status, headers, body, end=True)

    async def receive(self) -> Message:
        """The next message; ``websocket.disconnect`` is delivered once, and later calls wait
        (until the app is cancelled), as in Daphne and uvicorn: an app that loops on
        ``receive()`` after the disconnect cannot spin and starve the process."""
        while True:
            if self._incoming:
                message = self._incoming.popleft()
                if message["type"] == "websocket.receive":
                    data = message.get("text") or message.get("bytes") or b""
                    self.queued_bytes -= len(data) + MESSAGE_COST
                    if self._reading_paused and self.queued_bytes <= QUEUE_HIGH_WATER // 2:
                        self._reading_paused = False
                        self.responder.resume_reading()
                return message
            if self._disconnected is not None:
                if self._disconnect_delivered:
                    await asyncio.get_running_loop().create_future()  # never set
                self._disconnect_delivered = True
                return self._disconnected
            self._waiting = asyncio.get_running_loop().create_future()
            try:
                await self._waiting
            finally:
                self._waiting = None

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        state = self.state
        if state is State.CONNECTED:
            if kind == "websocket.send":
                text, data = message.get("text"), message.get("bytes")
                if (text is None) == (data is None):
                    raise ProtocolViolation("websocket.send needs exactly one of 'text', 'bytes'")
                payload = text if text is not None else data
                if not isinstance(payload, (str, bytes)):
                    raise ProtocolViolation("websocket.send 'text'/'bytes' have the wrong type")
                await self.responder.send_message(payload)
                self.sent += 1
                return
            if kind == "websocket.close":
                code = message.get("code", 1000)
                reason = message.get("reason") or ""
                if not isinstance(code, int) or not _valid_close_code(code):
                    raise ProtocolViolation(f"websocket.close code {code!r} is not allowed")
                if not isinstance(reason, str):
                    raise ProtocolViolation(f"websocket.close reason {reason!r} is not a str")
                self._log_end(code, "app")
                self.state = State.CLOSED
                self.responder.close(code, reason)
                return
            raise ProtocolViolation(f"{kind!r} is not allowed on an open WebSocket")
        if state is State.CONNECTING:
            if kind == "websocket.accept":
                headers = _headers(message.get("headers", ()))
                subprotocol = message.get("subprotocol")
                if subprotocol is not None and not isinstance(subprotocol, str):
                    raise ProtocolViolation(f"subprotocol {subprotocol!r} is not a str")
                if subprotocol is None and self.supported:
                    offered = self.scope["subprotocols"]
                    subprotocol = next((p for p in offered if p in self.supported), None)
                if subprotocol is not None and subprotocol not in self.scope["subprotocols"]:
                    logger.warning("subprotocol %r was not offered by the client", subprotocol)
                self.state = State.CONNECTED
                self._cancel_timer()
                self.responder.accept(subprotocol, headers)
                self._log("WSCONNECT", self.responder.accept_status)
                if self.session_timeout is not None:
                    loop = asyncio.get_running_loop()
                    self._timer = loop.call_later(self.session_timeout, self._on_session_timeout)
                return
            if kind == "websocket.close":
                self._deny(403)
                return
            if kind == "websocket.http.response.start":
                status = message.get("status")
                if not isinstance(status, int) or not 100 <= status <= 999:
                    raise ProtocolViolation(f"denial response status {status!r} is not valid")
                self.state = State.RESPONDING
                self.responder.deny(status, _headers(message.get("headers", ())), b"", end=False)
                self._log("WSREJECT", status)
                return
            raise ProtocolViolation(
                f"expected 'websocket.accept' or 'websocket.close', got {kind!r}"
            )
        if state is State.RESPONDING and kind == "websocket.http.response.body":
            more = bool(message.get("more_body", False))
            if not more:
                self.state = State.CLOSED
            self.responder.deny(0, [], bytes(message.get("body", b"")), end=not more)
            return
        if self._disconnected is not None:
            raise ClientDisconnected(f"WebSocket closed before {kind!r} could be sent")
        raise ProtocolViolation(f"{kind!r} is not allowed after the WebSocket was closed")

    # The access log -----------------------------------------------------------------------

    def _log(self, event: str, status: int | None = None) -> None:
        if access_logger.isEnabledFor(logging.INFO):
            log_websocket(self.scope, event, status, time.perf_counter() - self._started_at)

    def _log_end(self, code: int, by: Closer) -> None:
        """The session's one WSDISCONNECT line: the first word on how it ended counts."""
        if self._logged_end or self.state not in (State.CONNECTING, State.CONNECTED):
            return
        self._logged_end = True
        if access_logger.isEnabledFor(logging.INFO):
            duration = time.perf_counter() - self._started_at
            log_websocket(
                self.scope, "WSDISCONNECT", code, duration, by, (self.received, self.sent)
            )


def _headers(pairs: object) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    for pair in pairs:  # type: ignore[attr-defined]
        try:
            name, value = pair
        except (TypeError, ValueError):
            raise ProtocolViolation(f"header {pair!r} is not a pair") from None
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            raise ProtocolViolation(f"header {pair!r} must be a pair of bytes")
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
            raise ProtocolViolation(f"header {name!r} holds CR or LF")
        headers.append((name, value))
    return headers


def _valid_close_code(code: int) -> bool:
    """RFC 6455 §7.4: codes an endpoint may send."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )
