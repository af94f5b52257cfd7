"""Limits a public chat needs, applied around the application (an ASGI wrapper, not a connection).

The server wraps the app in :func:`wrap` when a limit is set; with none, the app runs as it
is and nothing here costs anything.

- ``--limit-connections-per-client N``: at most N WebSocket sessions and HTTP requests in
  flight at once per client address (``scope["client"]``: with ``--proxy-headers`` from a
  trusted proxy, the forwarded address, by the same rules as everywhere else; a unix socket
  peer has no address and is not limited). One more is refused without reaching the app: an
  HTTP request gets ``429 Too Many Requests``; a WebSocket is accepted and closed at once with
  **1008** and the reason ``too many connections from this address`` (a browser cannot read
  the status of a refused handshake, it can read a close code). Idle keep-alive connections
  and HTTP/2 connections without a stream are not counted: this is a cap on what the app
  serves, which is also the only place the forwarded address is known (a TCP-level cap behind
  a proxy would see the proxy's address only).
- ``--websocket-max-messages-per-second R`` and ``--websocket-max-bytes-per-second B``: a
  token bucket per WebSocket for the messages it receives (counts, and payload bytes: UTF-8
  bytes for text). The bucket holds one second's worth (R messages, B bytes) and refills
  continuously; a message over it closes the session with **1008** and the reason
  ``message rate limit exceeded`` (or ``byte rate limit exceeded``). The message is not
  delivered; the app receives ``websocket.disconnect`` with code 1008 instead, and what it
  sends afterwards is dropped. A message larger than the whole byte bucket passes when the
  bucket is full and leaves it in debt (so one large message is allowed, not a stream of
  them). The rate is measured as the app takes messages from ``receive()``: an app that
  stops reading for longer than a second and then takes a backlog may see an honest client
  over the limit, so set it as a flood guard, well above a real user's peak.

Each refusal is counted in ``roomcast_gateway_limit_refusals_total{limit}`` (``limit`` is
``connections_per_client``, ``messages_per_second`` or ``bytes_per_second``) and logged at
INFO, once per refused connection.

Faults: the counts live in the process's memory. With ``--workers N`` each worker counts its
own clients, so the effective cap per address is up to N times the limit (the kernel spreads
connections across workers); a restart or a kill -9 forgets every count, and the clients that
reconnect are counted afresh. A client that reconnects after a 1008 starts with a full
bucket; the per-address cap is what bounds reconnect loops.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from .config import ASGIApp, Config, Message, Receive, Scope, Send
from .metrics import GatewayMetrics

logger = logging.getLogger("roomcast.gateway.error")

CLOSE_POLICY = 1008  # RFC 6455: a message that violates the server's policy
TOO_MANY = "too many connections from this address"
MESSAGE_RATE = "message rate limit exceeded"
BYTE_RATE = "byte rate limit exceeded"
_HTTP_BODY = (TOO_MANY + "\n").encode()


def wrap(app: ASGIApp, config: Config, metrics: GatewayMetrics) -> ASGIApp:
    """``app`` with ``config``'s limits around it; ``app`` itself when none is set."""
    if config.websocket_max_messages_per_second or config.websocket_max_bytes_per_second:
        app = RateLimited(
            app,
            config.websocket_max_messages_per_second,
            config.websocket_max_bytes_per_second,
            metrics,
        )
    if config.limit_connections_per_client:
        app = PerClientCap(app, config.limit_connections_per_client, metrics)
    return app


class PerClientCap:
    """At most ``limit`` HTTP requests and WebSockets in the app at once per client address."""

    def __init__(self, app: ASGIApp, limit: int, metrics: GatewayMetrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.open: dict[str, int] = {}  # address -> conversations in the app now

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        client = scope.get("client")
        if kind not in ("http", "websocket") or not client:
            await self.app(scope, receive, send)
            return
        address = client[0]
        count = self.open.get(address, 0)
        if count >= self.limit:
            self.metrics.limit_refusals["connections_per_client"] += 1
            logger.info(
                "refusing %s from %s: %d at once is the limit per client address",
                "a WebSocket" if kind == "websocket" else "a request",
                address,
                self.limit,
            )
            await _refuse(kind, receive, send)
            return
        self.open[address] = count + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self.open[address] - 1
            if left:
                self.open[address] = left
            else:
                del self.open[address]


async def _refuse(kind: str, receive: Receive, send: Send) -> None:
    if kind == "websocket":
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": TOO_MANY})
        return
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(_HTTP_BODY)).encode()),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": _HTTP_BODY})


class Bucket:
    """A token bucket of ``burst`` tokens refilled at ``rate`` per second."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens; False (nothing taken) if the bucket cannot give them. An
        amount over the whole bucket is given by a full bucket, which goes into debt."""
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= amount or tokens >= self.burst:
            self.tokens = tokens - amount
            return True
        self.tokens = tokens
        return False


def _size(message: Message) -> int:
    data = message.get("bytes")
    if data is not None:
        return len(data)
    text = message.get("text") or ""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class RateLimited:
    """Closes a WebSocket (1008) whose client sends faster than the message or byte rate."""

    def __init__(
        self,
        app: ASGIApp,
        messages: float | None,
        size: float | None,
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.messages = messages
        self.bytes = size
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        session = _Session(self, scope, receive, send)
        await self.app(scope, session.receive, session.send)


class _Session:
    """One WebSocket's buckets, and its receive/send as the app sees them."""

    __slots__ = ("_closed", "_receive", "_send", "bytes", "limits", "messages", "scope")

    def __init__(self, limits: RateLimited, scope: Scope, receive: Receive, send: Send) -> None:
        now = limits.clock()
        self.limits = limits
        self.scope = scope
        self.messages = (
            None if not limits.messages else Bucket(limits.messages, limits.messages, now)
        )
        self.bytes = None if not limits.bytes else Bucket(limits.bytes, limits.bytes, now)
        self._receive = receive
        self._send = send
        self._closed: Message | None = None  # the disconnect the app gets once we closed

    async def receive(self) -> Message:
        if self._closed is not None:
            return self._closed
        message = await self._receive()
        if message["type"] != "websocket.receive":
            return message
        now = self.limits.clock()
        over: tuple[str, str] | None = None
        if self.messages is not None and not self.messages.take(1, now):
            over = ("messages_per_second", MESSAGE_RATE)
        elif self.bytes is not None and not self.bytes.take(_size(message), now):
            over = ("bytes_per_second", BYTE_RATE)
        if over is None:
            return message
        limit, reason = over
        self.limits.metrics.limit_refusals[limit] += 1
        client = self.scope.get("client")
        logger.info(
            "closing WebSocket %s from %s: %s",
            self.scope.get("path"),
            client[0] if client else "unix socket",
            reason,
        )
        self._closed = {"type": "websocket.disconnect", "code": CLOSE_POLICY, "reason": reason}
        with contextlib.suppress(OSError):  # the client is gone already (ClientDisconnected)
            await self._send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": reason})
        return self._closed

    async def send(self, message: Message) -> None:
        if self._closed is not None:
            return  # the session is over; what the app still sends is dropped
        await self._send(message)


def limits_set(config: Config) -> bool:
    """Whether :func:`wrap` puts anything around the app."""
    return bool(
        config.limit_connections_per_client
        or config.websocket_max_messages_per_second
        or config.websocket_max_bytes_per_second
    )


__all__ = ["Bucket", "PerClientCap", "RateLimited", "limits_set", "wrap"]
