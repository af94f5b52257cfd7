"""One pub/sub connection per shard, subscribed to the groups this process has members in.

The connection is a bare redis-py connection read by one task, so the hot path (a published
group message) is one read and one callback, and reconnection is ours to control: after any
error the connection is rebuilt and every wanted channel is subscribed again. The wanted set is
the process's own state, which is the truth that survives a Redis restart.

Messages published while this connection is down are lost for this process: pub/sub keeps no
backlog. That is the at-most-once price of fan-out at O(processes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection

from .hosts import HostSpec
from .reconnect import CONNECTION_ERRORS, Backoff, cancel_and_wait, logger

IDLE_PING_AFTER = 5.0  # seconds without traffic before we check that the connection lives
DEAD_AFTER = 15.0  # seconds without any reply (not even to our PING) before we rebuild it


class GroupSubscriber:
    """Keeps a shard's subscriptions equal to the wanted set across disconnections."""

    def __init__(self, host: HostSpec, on_message: Callable[[str, bytes], None], name: str) -> None:
        self._host = host
        self._on_message = on_message
        self._name = name
        self._conn: AbstractConnection | None = None
        # wanted channel -> set once Redis has confirmed our last SUBSCRIBE of it
        self._confirmed: dict[str, asyncio.Event] = {}
        self._inflight: dict[str, int] = {}  # SUBSCRIBE commands not yet confirmed
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0

    @property
    def wanted(self) -> list[str]:
        return list(self._confirmed)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"roomcast-subscriber-{self._name}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        await self._drop_connection()
        for event in self._confirmed.values():
            event.set()
        self._confirmed.clear()

    async def add(self, channel: str) -> None:
        """Want ``channel``; return once Redis has confirmed the subscription.

        Once confirmed, anything published to it after our return reaches us. While the
        connection is down the confirmation comes with the resubscription after the
        reconnect; the caller bounds the wait.
        """
        event = self._confirmed.get(channel)
        if event is None:
            event = self._confirmed[channel] = asyncio.Event()
            await self._send("SUBSCRIBE", channel)
        await event.wait()

    async def remove(self, channel: str) -> None:
        event = self._confirmed.pop(channel, None)
        if event is not None:
            event.set()  # release anyone still waiting: the channel is simply not wanted now
            await self._send("UNSUBSCRIBE", channel)

    async def _send(self, command: str, channel: str) -> None:
        conn = self._conn
        if conn is None:
            return  # the run loop subscribes to everything wanted when it reconnects
        if command == "SUBSCRIBE":
            self._inflight[channel] = self._inflight.get(channel, 0) + 1
        try:
            await conn.send_command(command, channel)
        except CONNECTION_ERRORS as exc:
            logger.debug(
                "%s: %s %s failed (%s); reconnect redoes it", self._name, command, channel, exc
            )

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._inflight.clear()
        for event in self._confirmed.values():
            event.clear()
        if conn is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await conn.disconnect()

    async def _run(self) -> None:
        backoff = Backoff(f"group subscriber {self._name}")
        while True:
            try:
                await self._connect()
                backoff.succeeded()
                await self._read()
            except asyncio.CancelledError:
                raise
            except CONNECTION_ERRORS as exc:
                await self._drop_connection()
                self.reconnects += 1
                await backoff.failed(exc)
            except Exception:  # a bug must not silently end delivery to this process
                logger.exception("%s: unexpected error; reconnecting", self._name)
                await self._drop_connection()
                await backoff.failed(RuntimeError("unexpected error"))

    async def _connect(self) -> None:
        pool = self._host.client(retries=0).connection_pool
        conn: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
        await conn.connect()  # type: ignore[no-untyped-call]
        wanted = list(self._confirmed)
        if wanted:
            await conn.send_command("SUBSCRIBE", *wanted)
        self._inflight = dict.fromkeys(wanted, 1)
        self._conn = conn

    async def _read(self) -> None:
        conn = self._conn
        assert conn is not None
        loop = asyncio.get_running_loop()
        on_message = self._on_message
        last_seen = loop.time()
        pinged = False
        while True:
            reply: Any = await conn.read_response(
                timeout=1.0, disable_decoding=True, push_request=True
            )
            now = loop.time()
            if reply is None:
                idle = now - last_seen
                if idle > DEAD_AFTER:
                    raise ConnectionError(f"no reply from Redis for {idle:.0f} s")
                if idle > IDLE_PING_AFTER and not pinged:
                    await conn.send_command("PING")
                    pinged = True
                continue
            last_seen = now
            pinged = False
            kind = reply[0] if isinstance(reply, list) else None
            if kind == b"message":
                on_message(reply[1].decode(), reply[2])
            elif kind == b"subscribe":
                self._on_confirmed(reply[1].decode())

    def _on_confirmed(self, channel: str) -> None:
        left = self._inflight.get(channel, 1) - 1
        if left > 0:
            self._inflight[channel] = left
            return
        self._inflight.pop(channel, None)
        event = self._confirmed.get(channel)
        if event is not None:
            event.set()
