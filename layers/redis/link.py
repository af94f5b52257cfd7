"""One Redis connection the layer owns: its socket, its handshake, its replies to callbacks.

:meth:`RespLink.open` connects with ``loop.create_connection`` (TCP, TLS with the SSL context
built from the host's ``ssl_*`` options) or ``loop.create_unix_connection``, bounded by the
host's connect timeout, then greets the server itself in one write: ``HELLO 3`` when the host
asks for RESP3, ``AUTH`` (user and password, or a credential provider's), ``CLIENT SETNAME``,
``SELECT``, and for a Sentinel-named master ``ROLE`` (a link never settles on a replica).

After that a command costs one ``write`` and its reply one parse and one callback: no pool
checkout, no per-command task, no timer per read (one watchdog per connection instead). Replies
arrive in the order commands were written, so many requests may be in flight at once
(pipelining). A link in *push mode* (a subscriber's) hands every reply to one callback instead.

Replies are read by ``hiredis.Reader`` when hiredis is installed, else by the plain-Python
reader (:mod:`roomcast.layers.redis.resp`).

Any failure (connection lost, no reply within the socket timeout, bytes that are not RESP)
closes the link and fails every request waiting on it; the owner opens a new one.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import resp
from .hosts import Address, HostSpec
from .reconnect import logger

# Gets a request's replies (server errors among them as exception instances), or the
# exception that ended the connection before they all came.
ReplyCallback = Callable[[list[Any] | BaseException], None]
PushCallback = Callable[[Any], None]


class _Request:
    __slots__ = ("blocking", "callback", "count", "replies")

    def __init__(self, count: int, callback: ReplyCallback, blocking: float) -> None:
        self.count = count
        self.callback = callback
        self.blocking = blocking
        self.replies: list[Any] = []


class HandshakeError(RedisConnectionError):
    """The server refused the greeting (a wrong password, a replica where a master was asked
    for): the link is closed. The message names the host."""


class RespLink(asyncio.Protocol):
    """One Redis connection whose replies go to the callbacks of the requests, in order."""

    def __init__(
        self,
        description: str,
        timeout: float | None,
        *,
        use_hiredis: bool | None = None,
    ) -> None:
        self._transport: asyncio.WriteTransport | None = None
        self._timeout = timeout
        self.description = description
        self._loop = asyncio.get_running_loop()
        self._parser = resp.make_reader(use_hiredis=use_hiredis)
        self._waiting: deque[_Request] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._head_since = 0.0  # when the oldest waiting request began to wait for its reply
        self._on_push: PushCallback | None = None
        self._lost: asyncio.Future[BaseException] = self._loop.create_future()
        self.last_read = self._loop.time()
        self.client_id: int | None = None  # CLIENT ID, when open() was asked for it
        self.run_id = b""  # the server's INFO run_id, when open() was asked for it and got it
        self.closed = False

    @classmethod
    async def open(
        cls,
        host: HostSpec,
        *,
        name: str | None = None,
        want_id: bool = False,
        want_run_id: bool = False,
        use_hiredis: bool | None = None,
    ) -> RespLink:
        """Connect (one attempt, bounded by the host's connect timeout) and greet the server.

        ``want_run_id`` adds ``INFO server`` to the greeting and keeps the server's ``run_id``
        (it changes with every start of the server, and a promoted replica has its own): the
        history scripts' fence. A server that refuses INFO leaves it empty (no fence).

        Raises :class:`~redis.exceptions.ConnectionError` (or ``OSError``, ``TimeoutError``)
        when the server cannot be reached or refuses the greeting.
        """
        loop = asyncio.get_running_loop()
        timeout = host.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                address = await host.address()
                link = cls(
                    host.description if address.host is None else _where(host, address),
                    address.socket_timeout,
                    use_hiredis=use_hiredis,
                )
                if address.path is not None:
                    await loop.create_unix_connection(lambda: link, address.path, ssl=address.ssl)
                else:
                    await loop.create_connection(
                        lambda: link,
                        address.host or "localhost",
                        address.port,
                        ssl=address.ssl,
                        server_hostname=address.server_hostname if address.ssl else None,
                    )
                if address.keepalive:
                    sock = link._socket()
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                try:
                    await link._greet(address, name, want_id, want_run_id)
                except BaseException:
                    link.close()
                    raise
        except TimeoutError:
            raise RedisTimeoutError(
                f"could not connect to {host.description} within {timeout} s"
            ) from None
        return link

    def _socket(self) -> socket.socket | None:
        transport = self._transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        return sock if isinstance(sock, socket.socket) else None

    async def _greet(
        self, address: Address, name: str | None, want_id: bool, want_run_id: bool = False
    ) -> None:
        username, password = address.username, address.password
        if address.credential_provider is not None:
            credentials = await address.credential_provider.get_credentials_async()
            if len(credentials) == 1:
                username, password = None, credentials[0]
            else:
                username, password = credentials[0], credentials[1]
        commands: list[bytes] = []
        checked: list[str] = []  # what each reply answers; errors of "setname" are ignored
        if address.protocol == 3:
            hello: list[Any] = ["HELLO", 3]
            if password is not None:
                hello += ["AUTH", username or "default", password]
            commands.append(resp.pack(*hello))
            checked.append("HELLO 3")
        elif password is not None:
            auth = ["AUTH", username, password] if username else ["AUTH", password]
            commands.append(resp.pack(*auth))
            checked.append("AUTH")
        client_name = address.client_name or name
        if client_name:
            commands.append(resp.pack("CLIENT", "SETNAME", client_name))
            checked.append("setname")
        if address.db:
            commands.append(resp.pack("SELECT", address.db))
            checked.append(f"SELECT {address.db}")
        if address.require_master:
            commands.append(resp.pack("ROLE"))
            checked.append("ROLE")
        if want_id:
            commands.append(resp.pack("CLIENT", "ID"))
            checked.append("CLIENT ID")
        if want_run_id:
            commands.append(resp.pack("INFO", "server"))
            checked.append("INFO")
        if not commands:
            return
        replies = await self.request(b"".join(commands), len(commands))
        for what, reply in zip(checked, replies, strict=True):
            if isinstance(reply, BaseException):
                if what in ("setname", "INFO"):
                    continue  # a managed Redis may forbid them: a courtesy, and a fence
                raise HandshakeError(f"{self.description} refused {what}: {reply}")
            if what == "ROLE" and (not reply or reply[0] != b"master"):
                role = reply[0].decode() if reply else "unknown"
                raise HandshakeError(f"{self.description} is a {role}, not the master")
            if what == "CLIENT ID":
                self.client_id = int(reply)
            if what == "INFO":
                self.run_id = _run_id(reply)

    # Requests -----------------------------------------------------------------------------

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

        ``blocking`` is how long the server may hold the reply on purpose (a blocking pop's
        timeout); the socket timeout runs after it. A request's time runs from when the one
        before it was answered, so a queue of blocking commands does not time out.
        """
        transport = self._transport
        if self.closed or transport is None:
            raise RedisConnectionError(f"connection to {self.description} is closed")
        waiting = self._waiting
        if not waiting:
            self._head_since = self._loop.time()
        for _ in range(requests):
            waiting.append(_Request(count, callback, blocking))
        if self._timer is None and self._timeout is not None:
            self._arm()
        transport.write(data)

    def request(self, data: bytes, count: int, blocking: float = 0) -> asyncio.Future[list[Any]]:
        """:meth:`send` one request; the future gets its replies or the link's failure."""
        future: asyncio.Future[list[Any]] = self._loop.create_future()

        def resolve(replies: list[Any] | BaseException) -> None:
            if future.done():
                return
            if isinstance(replies, BaseException):
                future.set_exception(replies)
            else:
                future.set_result(replies)

        self.send(data, count, resolve, blocking)
        return future

    def push_mode(self, on_push: PushCallback) -> None:
        """From now on every reply goes to ``on_push`` (a subscriber's connection); commands
        are written with :meth:`write` and answered through ``on_push`` too."""
        self._on_push = on_push

    def write(self, data: bytes) -> None:
        """Write commands whose replies go to the push callback."""
        transport = self._transport
        if self.closed or transport is None:
            raise RedisConnectionError(f"connection to {self.description} is closed")
        transport.write(data)

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    async def wait_closed(self) -> BaseException:
        """Wait until the link has failed or been closed; returns why."""
        return await asyncio.shield(self._lost)

    def close(self) -> None:
        """Close after what is written has gone out; waiting requests fail."""
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()
        self._fail(RedisConnectionError(f"connection to {self.description} closed by us"))

    def abort(self, error: BaseException) -> None:
        """Drop the connection now; waiting requests get ``error``."""
        self._fail(error)

    # asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        self.last_read = self._loop.time()
        waiting = self._waiting
        while True:
            try:
                reply = parser.gets()
            except resp.PROTOCOL_ERRORS as exc:
                self._fail(RedisConnectionError(f"{self.description} sent bad bytes: {exc}"))
                return
            if reply is resp.NOT_READY:
                return
            if not waiting:
                on_push = self._on_push
                if on_push is None:
                    self._fail(
                        RedisConnectionError(f"{self.description} sent a reply nobody asked for")
                    )
                    return
                try:
                    on_push(reply)
                except Exception:  # the owner's bug must not end the connection silently
                    logger.exception("push callback of %s failed", self.description)
                if self.closed:
                    return
                continue
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
        self._fail(RedisConnectionError(f"connection to {self.description} lost{reason}"))

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
                RedisTimeoutError(f"no reply from {self.description} within {self._timeout} s")
            )
            return
        self._arm()

    def _fail(self, error: BaseException) -> None:
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.abort()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lost.done():
            self._lost.set_result(error)
        waiting, self._waiting = self._waiting, deque()
        for request in waiting:
            self._deliver(request.callback, error)

    def _deliver(self, callback: ReplyCallback, result: list[Any] | BaseException) -> None:
        try:
            callback(result)
        except Exception:  # one owner's bug must not break the others' replies
            logger.exception("reply callback of %s failed", self.description)


def _run_id(info: Any) -> bytes:
    """The ``run_id`` line of an ``INFO server`` reply (bytes, or str from some readers)."""
    text = info.encode() if isinstance(info, str) else bytes(info or b"")
    _, found, rest = text.partition(b"run_id:")
    return rest.split(b"\r\n", 1)[0].strip() if found else b""


def _where(host: HostSpec, address: Address) -> str:
    """The host's description, with the address a Sentinel named."""
    if host.description.startswith("sentinel:"):
        return f"{host.description} ({address.host}:{address.port})"
    return host.description


__all__ = ["HandshakeError", "RedisError", "RespLink"]
