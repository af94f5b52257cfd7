"""One pub/sub connection per host, subscribed to the groups this process has members in.

The connection is a :class:`~roomcast.layers.redis.link.RespLink` of its own in push mode
(RESP2 subscribe mode, or RESP3 pushes when the host asks for ``protocol=3``): a published group
message is one parse and one callback, with no task switch. Reconnection is ours: after any
error (a restart, ``CLIENT KILL TYPE pubsub``, a failover, no reply to our ``PING`` within
:data:`DEAD_AFTER` seconds) the connection is rebuilt and every wanted channel is subscribed
again. The wanted set is the process's own state, which is the truth that survives a Redis
restart.

Messages published while this connection is down are lost for this process: pub/sub keeps no
backlog. That is the at-most-once price of fan-out at O(processes). For groups with history the
layer fills the hole: every confirmed (re)subscription is reported (``on_subscribed``) and the
missed range is read from the group's stream (:mod:`roomcast.layers.redis.healing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any

from . import resp
from .health import Health
from .hosts import HostSpec
from .link import RespLink
from .reconnect import CONNECTION_ERRORS, cancel_and_wait, logger

IDLE_PING_AFTER = 5.0  # seconds without traffic before we check that the connection lives
DEAD_AFTER = 15.0  # seconds without any reply (not even to our PING) before we rebuild it
SUBSCRIBE_CHUNK = 512  # channels per SUBSCRIBE command when (re)subscribing many at once
RECONNECT_CAP = 1.0


class GroupSubscriber:
    """Keeps a host's subscriptions equal to the wanted set across disconnections."""

    def __init__(
        self,
        host: HostSpec,
        on_message: Callable[[str, bytes], None],
        *,
        name: str,
        shard: int,
        health: Health,
        on_subscribed: Callable[[str], None] | None = None,
    ) -> None:
        self._host = host
        self._on_message = on_message
        self._on_subscribed = on_subscribed  # a (re)subscription confirmed: history heals
        self._name = name
        self._shard = shard
        self._health = health
        self._link: RespLink | None = None
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
        self._drop_link()
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
            self._send("SUBSCRIBE", channel)
        await event.wait()

    def confirmed(self, channel: str) -> bool:
        """Whether Redis has confirmed our subscription to ``channel`` on the live connection."""
        event = self._confirmed.get(channel)
        return event is not None and event.is_set()

    def remove(self, channel: str) -> None:
        event = self._confirmed.pop(channel, None)
        if event is not None:
            event.set()  # release anyone still waiting: the channel is simply not wanted now
            self._send("UNSUBSCRIBE", channel)

    def _send(self, command: str, channel: str) -> None:
        link = self._link
        if link is None or link.closed:
            return  # the run loop subscribes to everything wanted when it reconnects
        if command == "SUBSCRIBE":
            self._inflight[channel] = self._inflight.get(channel, 0) + 1
        link.write(resp.pack(command, channel))

    def _drop_link(self) -> None:
        link, self._link = self._link, None
        self._inflight.clear()
        for event in self._confirmed.values():
            event.clear()
        if link is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                link.close()

    async def _run(self) -> None:
        failures = 0
        while True:
            if failures:
                delay = min(RECONNECT_CAP, 0.05 * 2 ** min(failures, 16))
                await asyncio.sleep(random.uniform(delay / 2, delay))
            try:
                link = await RespLink.open(self._host, name=self._name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self._health.lost(self._shard, exc)
                continue
            if failures or self.reconnects:
                logger.debug("%s: reconnected", self._name)
            failures = 0
            self._health.back(self._shard)
            try:
                await self._serve(link)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not silently end delivery to this process
                logger.exception("%s: unexpected error; reconnecting", self._name)
            self._drop_link()
            self.reconnects += 1

    async def _serve(self, link: RespLink) -> None:
        """Subscribe to everything wanted, then watch the connection until it fails."""
        link.push_mode(self._on_push)
        self._link = link
        wanted = list(self._confirmed)
        self._inflight = dict.fromkeys(wanted, 1)
        for start in range(0, len(wanted), SUBSCRIBE_CHUNK):
            link.write(resp.pack("SUBSCRIBE", *wanted[start : start + SUBSCRIBE_CHUNK]))
        loop = asyncio.get_running_loop()
        pinged = False
        closed = asyncio.ensure_future(link.wait_closed())
        try:
            while not closed.done():
                await asyncio.wait([closed], timeout=1.0)
                idle = loop.time() - link.last_read
                if idle > DEAD_AFTER:
                    link.abort(ConnectionError(f"no reply from Redis for {idle:.0f} s"))
                elif idle > IDLE_PING_AFTER:
                    if not pinged:
                        link.write(resp.pack("PING"))
                        pinged = True
                else:
                    pinged = False
        finally:
            closed.cancel()
        error = closed.result() if not closed.cancelled() else None
        logger.debug("%s: connection ended (%s)", self._name, error)

    def _on_push(self, reply: Any) -> None:
        if isinstance(reply, list) and reply:
            kind = reply[0]
            if kind == b"message":
                self._on_message(reply[1].decode(), reply[2])
            elif kind == b"subscribe":
                self._on_confirmed(reply[1].decode())
        elif isinstance(reply, BaseException):
            self._health.log.warning(
                f"subscriber error {self._shard}", "%s: Redis answered %s", self._name, reply
            )

    def _on_confirmed(self, channel: str) -> None:
        left = self._inflight.get(channel, 1) - 1
        if left > 0:
            self._inflight[channel] = left
            return
        self._inflight.pop(channel, None)
        event = self._confirmed.get(channel)
        if event is not None:
            event.set()
            if self._on_subscribed is not None:
                self._on_subscribed(channel)
