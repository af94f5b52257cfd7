"""One HTTP request/response cycle as an ASGI ``http`` conversation.

The stream builds nothing from bytes: its connection (HTTP/1.1 today, HTTP/2 later) hands it a
scope and the request body in pieces, and it hands back the response through the small
:class:`Responder` interface. It runs the application, enforces the order of the app's
messages, and turns app faults into a 500 or an aborted connection, never a traceback to the
client.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ..config import HEADER_NAME, ASGIApp, Message, Scope
from ..logging import access_logger, log_access

logger = logging.getLogger("roomcast.gateway.error")

# Request body buffered for the app before the connection stops reading from the client.
BODY_HIGH_WATER = 256 * 1024

_TIMEOUT_BODY = b"Service Unavailable"
_TIMEOUT_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_TIMEOUT_BODY)).encode()),
    (b"connection", b"close"),
]
_ERROR_BODY = b"Internal Server Error"
_ERROR_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_ERROR_BODY)).encode()),
    (b"connection", b"close"),
]


# RFC 9110 token characters; a response header name must be one (else it could break the head).
_TOKEN = re.compile(HEADER_NAME.pattern.encode())
_VALID_NAMES: dict[bytes, bytes] = {}  # header name as the app gave it -> validated, lower-cased


class Responder(Protocol):
    """What an HTTP stream needs from the connection that carries it."""

    def send_response(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, end: bool
    ) -> None:
        """Send the status line and headers, with the first piece of body."""

    def send_body(self, body: bytes, end: bool) -> None:
        """Send more body; ``end`` completes the response."""

    def send_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Send the trailers, completing the response (only where the scope offers them)."""

    async def drain(self) -> None:
        """Return when the client has taken enough of what we sent (write backpressure)."""

    def pause_reading(self) -> None:
        """Stop reading request body: the app is behind."""

    def resume_reading(self) -> None:
        """The app has consumed buffered body; read on."""

    def abort(self) -> None:
        """Close the connection without completing the response."""


class ClientDisconnected(OSError):
    """``send()`` after the client went away (ASGI spec 2.4: an OSError subclass)."""


class ProtocolViolation(Exception):
    """The application sent an ASGI message that is illegal at this point."""


class HTTPStream:
    """Runs ``app`` for one request and relays its messages to a :class:`Responder`."""

    def __init__(
        self,
        app: ASGIApp,
        scope: Scope,
        responder: Responder,
        http_timeout: float | None = None,
        close_timeout: float | None = None,
    ) -> None:
        """``http_timeout``: ``Config.http_timeout``, None for no limit; see ``run``.
        ``close_timeout``: ``Config.application_close_timeout``; see ``feed_disconnect``."""
        self.app = app
        self.scope = scope
        self.responder = responder
        self.head_request = scope["method"] == "HEAD"
        # ASGI's http.response.trailers extension: offered by HTTP/2 connections.
        self.trailers_offered = "http.response.trailers" in scope.get("extensions", ())
        self._trailers: list[tuple[bytes, bytes]] | None = None  # awaited after the body
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._body_complete = False
        self._final_body_sent = False
        self._disconnected = False
        self._waiting: asyncio.Future[None] | None = None
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] | None = None
        self.response_started = False
        self.response_complete = False
        # The head is held back until the first body message; until it goes out, a fault can
        # still become a clean 500.
        self._head_sent = False
        self._body_done = False  # the last body part went out (trailers may follow)
        self._sent_bytes = 0
        self._started_at = time.perf_counter()
        # Called once, when the app first waits for body: HTTP/1.1 sends 100 Continue then.
        self.on_first_receive: Callable[[], None] | None = None
        self.http_timeout = http_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._timed_out = False
        self.close_timeout = close_timeout
        self._disconnect_delivered = False
        self._kill_timer: asyncio.TimerHandle | None = None
        self._killed = False

    # Fed by the connection ----------------------------------------------------------------

    def feed_body(self, data: bytes, more: bool) -> None:
        if data:
            self._body.append(data)
            self._buffered += len(data)
            if self._buffered > BODY_HIGH_WATER:
                self.responder.pause_reading()
        if not more:
            self._body_complete = True
        self._wake()

    def feed_disconnect(self) -> None:
        """The client is gone: the app is told, and has ``close_timeout`` seconds to return."""
        self._disconnected = True
        self._wake()
        self._arm_kill()

    def _arm_kill(self) -> None:
        """Daphne's ``--application-close-timeout``: an app running on after its client left
        (its response done, or the client gone) is cancelled after that many seconds."""
        task = self._task
        if self.close_timeout is None or self._kill_timer is not None or task is None:
            return
        if not task.done():
            loop = asyncio.get_running_loop()
            self._kill_timer = loop.call_later(self.close_timeout, self._kill)

    def _kill(self) -> None:
        task = self._task
        if task is None or task.done():
            return
        logger.warning(
            "application still running %gs after its client left, on %s: cancelled",
            self.close_timeout,
            self._where(),
        )
        self._killed = True
        task.cancel()

    def _wake(self) -> None:
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    # The ASGI side --------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the app to completion; faults become a 500 or an abort, and are logged.

        With ``http_timeout`` (Daphne's ``--http-timeout``), an app that has not sent
        ``http.response.start`` within that many seconds gets its client a 503 and is cancelled.
        """
        self._task = asyncio.current_task()
        if self.http_timeout is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.http_timeout, self._on_http_timeout)
        try:
            await self.app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            ours = self._timed_out or self._killed
            if ours and self._task is not None and self._task.uncancel() == 0:
                return  # our own cancellation (a 503 went out, or a kill): the stream ends
            if not self.response_complete:
                self.responder.abort()
            raise
        except ClientDisconnected:
            logger.debug("client went away during %s", self._where())
            self.responder.abort()
        except ProtocolViolation as exc:
            logger.error("ASGI protocol violation on %s: %s", self._where(), exc)
            self._fail()  # a 500 if nothing went out yet, else the connection is closed
        except BaseException as exc:
            logger.error("Exception in ASGI application on %s", self._where(), exc_info=exc)
            self._fail()
        else:
            if not self.response_complete:
                if self.response_started:
                    logger.error(
                        "ASGI application returned before completing the response on %s",
                        self._where(),
                    )
                    self._fail()
                elif not self._disconnected:
                    logger.error(
                        "ASGI application returned without a response on %s", self._where()
                    )
                    self._fail()
        finally:
            self._cancel_timer()
            if self._kill_timer is not None:
                self._kill_timer.cancel()
            self._log()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_http_timeout(self) -> None:
        """No response started in time: answer 503 (if the client is still there), cancel."""
        self._timer = None
        if self.response_started or self.response_complete:
            return
        self._timed_out = True
        logger.warning(
            "application did not start a response within %gs on %s: 503",
            self.http_timeout,
            self._where(),
        )
        self.response_started = self.response_complete = True
        self._status = 503
        if not self._disconnected:
            self._head_sent = True
            self.responder.send_response(503, list(_TIMEOUT_HEADERS), _TIMEOUT_BODY, end=True)
            self._sent_bytes = len(_TIMEOUT_BODY)
        self._wake()
        if self._task is not None:
            self._task.cancel()

    def _fail(self) -> None:
        if self._head_sent or self._disconnected:
            self.responder.abort()
            return
        self._headers = None
        self.response_started = self.response_complete = True
        self._head_sent = True
        self._status = 500
        self.responder.send_response(500, list(_ERROR_HEADERS), _ERROR_BODY, end=True)
        self._sent_bytes = len(_ERROR_BODY)

    def _where(self) -> str:
        return f"{self.scope['method']} {self.scope['path']}"

    def _log(self) -> None:
        if not access_logger.isEnabledFor(logging.INFO):
            return  # the common case: build nothing per request
        scope = self.scope
        target = scope["raw_path"] + (
            b"?" + scope["query_string"] if scope["query_string"] else b""
        )
        log_access(
            scope.get("client"),
            scope["method"],
            target.decode("latin-1"),
            scope["http_version"],
            self._status,
            self._sent_bytes,
            time.perf_counter() - self._started_at,
        )

    async def receive(self) -> Message:
        """The body as buffered so far in one message, then ``http.disconnect`` when due.

        The disconnect is delivered once: later calls wait (until the app is cancelled), as in
        Daphne, so an app that loops on ``receive()`` cannot spin and starve the process.
        """
        while True:
            if self._body or (self._body_complete and not self._final_body_sent):
                body = self._body
                chunk = body.popleft() if len(body) == 1 else b"".join(body)
                body.clear()
                if self._buffered > BODY_HIGH_WATER:
                    self.responder.resume_reading()
                self._buffered = 0
                more = not self._body_complete
                self._final_body_sent = not more
                return {"type": "http.request", "body": chunk, "more_body": more}
            if self._disconnected or self.response_complete:
                if self._disconnect_delivered:
                    await asyncio.get_running_loop().create_future()  # never set
                self._disconnect_delivered = True
                self._arm_kill()
                return {"type": "http.disconnect"}
            first = self.on_first_receive
            if first is not None:
                self.on_first_receive = None
                first()
            if self._body_complete:
                # The connection may have paused reading (a pipelined request waits its turn);
                # read on so that a client going away reaches this waiting app. Reading pauses
                # again on the next bytes, so a pipelining client cannot make us buffer much.
                self.responder.resume_reading()
            self._waiting = asyncio.get_running_loop().create_future()
            try:
                await self._waiting
            finally:
                self._waiting = None

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if self._disconnected:
            raise ClientDisconnected(f"client went away before {kind!r} could be sent")
        if not self.response_started:
            if kind != "http.response.start":
                raise ProtocolViolation(f"expected 'http.response.start', got {kind!r}")
            self._start(message)
            return
        if self.response_complete:
            raise ProtocolViolation(f"{kind!r} sent after the response was complete")
        if self._trailers is not None and self._body_done:
            self._send_trailers(message)
            return
        if kind != "http.response.body":
            raise ProtocolViolation(f"expected 'http.response.body', got {kind!r}")
        body = message.get("body", b"")
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise ProtocolViolation(f"http.response.body 'body' must be bytes, not {type(body)}")
        more = bool(message.get("more_body", False))
        if self.head_request:
            body = b""
        body = bytes(body)
        self._sent_bytes += len(body)
        # With trailers announced, the last body part leaves the response open for them.
        end = not more and self._trailers is None
        if not more:
            self._body_done = True
            if end:
                self.response_complete = True
                self._wake()
        headers = self._headers
        if headers is not None:
            self._headers = None
            self._head_sent = True
            self.responder.send_response(self._status, headers, body, end=end)
        else:
            self.responder.send_body(body, end=end)
        if more:
            await self.responder.drain()

    def _send_trailers(self, message: Message) -> None:
        kind = message.get("type")
        if kind != "http.response.trailers":
            raise ProtocolViolation(f"expected 'http.response.trailers', got {kind!r}")
        assert self._trailers is not None
        self._trailers += _validated_headers(message.get("headers", ()))
        if message.get("more_trailers", False):
            return
        self.response_complete = True
        self._wake()
        self.responder.send_trailers(self._trailers)

    def _start(self, message: Message) -> None:
        status = message.get("status")
        if not isinstance(status, int) or not 100 <= status <= 999:
            raise ProtocolViolation(f"http.response.start 'status' must be an int, got {status!r}")
        headers = _validated_headers(message.get("headers", ()))
        if message.get("trailers", False) and self.trailers_offered:
            self._trailers = []
        self._cancel_timer()
        self.response_started = True
        self._status = status
        self._headers = headers


def _validated_headers(pairs: Any) -> list[tuple[bytes, bytes]]:
    """The app's header pairs, names lower-cased; a name that is no token or a value with
    CR, LF or NUL (which could split the head) is a :class:`ProtocolViolation`."""
    headers: list[tuple[bytes, bytes]] = []
    for pair in pairs:
        try:
            name, value = pair
        except (TypeError, ValueError):
            raise ProtocolViolation(f"response header {pair!r} is not a pair") from None
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            raise ProtocolViolation(f"response header {pair!r} must be a pair of bytes")
        lowered = _VALID_NAMES.get(name)
        if lowered is None:
            if not _TOKEN.fullmatch(name):
                raise ProtocolViolation(f"response header name {name!r} is not a token")
            lowered = name.lower()
            if len(_VALID_NAMES) < 1024:  # names repeat: remember the good ones
                _VALID_NAMES[name] = lowered
        if b"\r" in value or b"\n" in value or b"\0" in value:
            raise ProtocolViolation(f"response header {lowered!r} holds CR, LF or NUL")
        headers.append((lowered, value))
    return headers


def new_scope(**fields: Any) -> Scope:
    """An ``http`` scope with the spec's fixed fields filled in."""
    scope: Scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}}
    scope.update(fields)
    return scope
