"""A pipelined Redis connection for the layer's hot path: bytes out, replies to callbacks.

redis-py makes the connection (TLS, unix sockets, Sentinel, AUTH, SELECT, HELLO, client
options: whatever the ``hosts`` entry says), then the socket is taken over by
:class:`RespLink`, an :class:`asyncio.Protocol`. A command costs one ``write`` and its reply one
parse and one callback: no pool checkout, no per-command task, no timer per read (one watchdog
per connection instead). Replies arrive in the order commands were written, so several
requests may be in flight at once.

Any failure (connection lost, no reply within the socket timeout, bytes that are not RESP)
closes the link and fails every request waiting on it; the owner opens a new one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

from .hosts import HostSpec
from .reconnect import logger
from .resp import NOT_READY, ReplyParser

# Gets a request's replies (server errors among them as exception instances), or the
# exception that ended the connection before they all came.
ReplyCallback = Callable[[list[Any] | BaseException], None]


class _Request:
    __slots__ = ("blocking", "callback", "count", "replies")

    def __init__(self, count: int, callback: ReplyCallback, blocking: float) -> None:
        self.count = count
        self.callback = callback
        self.blocking = blocking
        self.replies: list[Any] = []


class RespLink(asyncio.Protocol):
    """One Redis connection whose replies go to the callbacks of the requests, in order."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        timeout: float | None,
        description: str,
        owner: object = None,
    ) -> None:
        self._transport = transport
        self._owner = owner  # kept alive: a StreamWriter closes its transport when collected
        self._timeout = timeout
        self._description = description
        self._loop = asyncio.get_running_loop()
        self._parser = ReplyParser()
        self._waiting: deque[_Request] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._head_since = 0.0  # when the oldest waiting request began to wait for its reply
        self.closed = False

    @classmethod
    async def open(cls, host: HostSpec) -> RespLink:
        """Connect (one attempt) with redis-py's handshake, then take the socket over."""
        pool = host.client(retries=0).connection_pool
        conn: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
        await conn.connect()  # type: ignore[no-untyped-call]
        writer = conn._writer
        if writer is None:
            raise RedisConnectionError(f"no connection to {host.description}")
        # Detached, so that redis-py's Connection.__del__ does not close our socket.
        conn._writer = conn._reader = None
        transport = writer.transport  # (uvloop's transports are not asyncio.Transport)
        timeout = conn.socket_timeout
        link = cls(transport, float(timeout) if timeout else None, host.description, writer)
        transport.set_protocol(link)
        return link

    def send(
        self,
        data: bytes,
        count: int,
        callback: ReplyCallback,
        blocking: float = 0,
        requests: int = 1,
    ) -> None:
        """Write ``data``: ``requests`` requests of ``count`` commands each, in one write.

        ``callback`` is called once per request, with its ``count`` replies.

        ``blocking`` is how long the server may hold the reply on purpose (``BLMPOP``'s
        timeout); the socket timeout runs after it. A request's time runs from when the one
        before it was answered, so a queue of blocking commands does not time out.
        """
        if self.closed:
            raise RedisConnectionError(f"connection to {self._description} is closed")
        waiting = self._waiting
        if not waiting:
            self._head_since = self._loop.time()
        for _ in range(requests):
            waiting.append(_Request(count, callback, blocking))
        if self._timer is None and self._timeout is not None:
            self._arm()
        self._transport.write(data)

    def close(self) -> None:
        """Close after what is written has gone out; waiting requests fail."""
        if not self.closed:
            self.closed = True
            self._transport.close()
        self._fail(RedisConnectionError(f"connection to {self._description} closed by us"))

    # asyncio.Protocol ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = parser.gets()
            except (InvalidResponse, ValueError, IndexError) as exc:
                self._fail(InvalidResponse(f"{self._description} sent bad bytes: {exc}"))
                return
            if reply is NOT_READY:
                return
            if not waiting:
                self._fail(InvalidResponse(f"{self._description} sent a reply nobody asked for"))
                return
            request = waiting[0]
            replies = request.replies
            replies.append(reply)
            if len(replies) == request.count:
                waiting.popleft()
                if waiting:
                    self._head_since = self._loop.time()
                self._deliver(request.callback, replies)

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc is not None else ""
        self._fail(RedisConnectionError(f"connection to {self._description} lost{reason}"))

    # Failure ------------------------------------------------------------------------------

    def _arm(self) -> None:
        """Check on the oldest request when its time is up (one timer, not one per request)."""
        assert self._timeout is not None
        deadline = self._head_since + self._timeout + self._waiting[0].blocking
        self._timer = self._loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._waiting or self.closed:
            return
        assert self._timeout is not None
        if self._loop.time() >= self._head_since + self._timeout + self._waiting[0].blocking:
            self._fail(
                RedisTimeoutError(f"no reply from {self._description} within {self._timeout} s")
            )
            return
        self._arm()

    def _fail(self, error: BaseException) -> None:
        if not self.closed:
            self.closed = True
            self._transport.abort()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, deque()
        for request in waiting:
            self._deliver(request.callback, error)

    def _deliver(self, callback: ReplyCallback, result: list[Any] | BaseException) -> None:
        try:
            callback(result)
        except Exception:  # one owner's bug must not break the others' replies
            logger.exception("reply callback of %s failed", self._description)
