"""Presence on the Redis layer: cluster-wide entries kept alive by each process's heartbeat.

Keys (each group's on the group's own hash tag, so that Redis Cluster can follow):

=========================  =====  ===========================================================
``<prefix>:pr{<group>}``   hash   channel -> owner process id (16 bytes) | info (msgpack,
                                  Fernet-sealed when the layer has encryption keys)
``<prefix>:pp{<process>}`` set    the groups (of this host) a process has entries in: what to
                                  sweep when its heartbeat lapses
=========================  =====  ===========================================================

An entry belongs to the process that added it (normally the process of its channel). That
process keeps its own entries in memory too: the truth that survives Redis.

* ``presence_add`` records the group in ``pp{<process>}`` and writes the entry, both queued in
  one event-loop turn on the host's pipeline (so a later remove can never overtake them).
* ``presence_remove`` drops the local entry first, then the record; with Redis unreachable the
  record's removal waits and is made at the next heartbeat that gets through, and the call
  returns without raising (a disconnect must never fail). Its leave event goes out at once.
* ``presence(group)`` reads the hash and asks ``procs`` (one ``ZMSCORE``) which owners are
  live: entries of a process whose heartbeat lapsed for ``liveness_timeout`` are left out at
  once. Entries of a process missing from ``procs`` altogether (it closed cleanly, or was
  forgotten by a sweep that did not finish) are removed by the reader, which announces them.
* **Sweep.** The live process that forgets a lapsed process (:mod:`.liveness`) removes that
  process's entries from every group listed in its ``pp`` set, atomically checking that it is
  still absent (``PRESENCE_SWEEP``), and announces them in its own ``presence.leave`` events.

Events (see :mod:`roomcast.layers.presence`): coalesced per process and group, then published
once to the group's pub/sub channel, as a ``group_send`` is (local members get them directly),
but never through a group's history.

What happens when:

==========================================  =================================================
event                                       consequence
==========================================  =================================================
a clean disconnect (``presence_remove``)    entry gone from Redis at once; leave event at the
                                            next flush
the process closes the layer cleanly        its entries are removed and announced as it
                                            closes; it unregisters, so readers ignore any left
the process is killed (SIGKILL, OOM)        readers ignore its entries ``liveness_timeout``
                                            after its last beat (15 s by default); the next
                                            heartbeat of a live process after that sweeps
                                            them and sends the leave events
its event loop blocks past the timeout      as a kill for the others; when it beats again it
                                            finds itself swept, writes its entries back from
                                            memory and announces them as joins
Redis restarts without persistence          every entry is lost; each process writes its own
                                            back at its next heartbeat (and announces them)
a failover                                  as a restart for what the new master lacked
Redis unreachable                           ``presence_add`` and ``presence()`` wait up to
                                            ``retry_timeout`` then raise
                                            ``LayerConnectionError`` (an add that failed is
                                            undone); removals wait for Redis, see above
an event published while a process is       that process's members miss it (pub/sub keeps no
reconnecting to Redis                       backlog): ``presence()`` is the truth to re-read
==========================================  =================================================

The sweep script reads ``procs`` and the group's hash in one call: on Redis Cluster they live
on different slots, as for the membership sweep (the liveness key is per host today).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import msgpack

from ..exceptions import LayerConnectionError
from ..presence import PresenceEvents, decode_info
from . import resp, scripts, wire
from .pipeline import Pipeline
from .reconnect import LOST_CONNECTION, logger

if TYPE_CHECKING:
    from .layer import RedisChannelLayer

OWNER = wire.PROCESS_ID_LENGTH  # bytes of the owner's process id at the head of an entry
RECORD_CHUNK = 256  # fields per HSET when a process writes its entries back
MAX_UNRECORDED = 1 << 20  # removals waiting for Redis, at most (then the oldest are dropped)
CLOSE_WAIT = 2.0  # seconds a closing layer gives its last presence events to go out


def presence_key(prefix: str, group: str) -> str:
    return f"{prefix}:pr{{{group}}}"


def process_presence_key(prefix: str, process: str) -> str:
    return f"{prefix}:pp{{{process}}}"


def _pairs(reply: Any) -> list[tuple[bytes, bytes]]:
    """HGETALL's reply (a flat list in RESP2, a map in RESP3) as (field, value) pairs."""
    if isinstance(reply, dict):
        return list(reply.items())
    items = list(reply or ())
    return list(zip(items[::2], items[1::2], strict=True))


class RedisPresence:
    """The presence entries of one Redis layer: its own, and the reading and sweeping of all."""

    def __init__(self, layer: RedisChannelLayer) -> None:
        self._layer = layer
        # group -> channel -> (value written to Redis, info): this process's own entries
        self._own: dict[str, dict[str, tuple[bytes, dict[str, Any]]]] = {}
        # (group, channel) whose record removal waits for Redis, per shard
        self._unrecorded: dict[int, dict[tuple[str, str], None]] = {}
        self.events = PresenceEvents(layer.presence_policy, self._deliver, layer.max_message_size)
        self.swept = 0  # entries of dead processes this process removed

    def stats(self) -> dict[str, int]:
        return {
            "presence_entries": sum(len(entries) for entries in self._own.values()),
            "presence_unrecorded": sum(len(waiting) for waiting in self._unrecorded.values()),
            "presence_swept": self.swept,
        }

    # Own entries -----------------------------------------------------------------------------

    def _value(self, info: dict[str, Any]) -> bytes:
        packed: bytes = msgpack.packb(info, use_bin_type=True)
        return self._layer._process_id_bytes + self._layer._codec.seal(packed)

    async def add(self, group: str, channel: str, info: dict[str, Any]) -> None:
        layer = self._layer
        shard = layer._shard(group)
        value = self._value(info)
        own = self._own.setdefault(group, {})
        own[channel] = (value, info)
        self._unrecorded.get(shard, {}).pop((group, channel), None)
        pipeline = layer._pipes[shard]
        try:
            if not pipeline.has_room or pipeline._room:
                await pipeline.wait_for_room()
            groups_key = process_presence_key(layer.prefix, layer.process_id)
            recorded = pipeline.submit(resp.pack("SADD", groups_key, group))
            written = pipeline.submit(
                resp.pack("HSET", presence_key(layer.prefix, group), channel, value)
            )
            await asyncio.gather(recorded, written)
        except LOST_CONNECTION as exc:
            if own.get(channel, (None,))[0] is value:  # undo, and make sure Redis forgets it
                self._drop_own(group, channel)
                self._defer(shard, group, channel)
            raise layer._unreachable(shard, exc) from exc
        self.events.joined(group, channel, info)

    def _drop_own(self, group: str, channel: str) -> tuple[bytes, dict[str, Any]] | None:
        own = self._own.get(group)
        if own is None:
            return None
        entry = own.pop(channel, None)
        if not own:
            del self._own[group]
            layer = self._layer
            if layer._pipes:  # the group's set in pp{} goes too (queued after any add)
                pipeline = layer._pipes[layer._shard(group)]
                groups_key = process_presence_key(layer.prefix, layer.process_id)
                pipeline.fire(resp.pack("SREM", groups_key, group))
        return entry

    async def remove(self, group: str, channel: str) -> None:
        """Never raises for an unreachable Redis: the record's removal waits for it."""
        layer = self._layer
        shard = layer._shard(group)
        entry = self._drop_own(group, channel)
        if entry is not None:
            self.events.left(group, channel, entry[1])
            if not layer._pipes[shard].connected:
                self._defer(shard, group, channel)
                return
        try:
            removed = await layer._run(
                scripts.PRESENCE_REMOVE,
                shard,
                [presence_key(layer.prefix, group)],
                [channel],
                retry=True,
            )
        except LayerConnectionError:
            self._defer(shard, group, channel)
            return
        if entry is None and removed:  # another process's entry: announce it ourselves
            info = self._decode(removed[OWNER:])
            if info is not None:
                self.events.left(group, channel, info)

    def _defer(self, shard: int, group: str, channel: str) -> None:
        waiting = self._unrecorded.setdefault(shard, {})
        if len(waiting) >= MAX_UNRECORDED:
            del waiting[next(iter(waiting))]
        waiting[(group, channel)] = None

    # Reading ---------------------------------------------------------------------------------

    def _decode(self, sealed: bytes) -> dict[str, Any] | None:
        layer = self._layer
        payload = layer._unseal(sealed)
        if payload is None:
            return None
        try:
            return decode_info(payload)
        except ValueError:
            layer.counters.rejected += 1
            logger.warning("discarded an undecodable presence entry")
            return None

    async def read(self, group: str) -> dict[str, dict[str, Any]]:
        layer = self._layer
        shard = layer._shard(group)
        raw = await layer._execute(shard, "HGETALL", presence_key(layer.prefix, group))
        entries = [(field, value) for field, value in _pairs(raw) if len(value) >= OWNER]
        owners = sorted({value[:OWNER].decode(errors="replace") for _, value in entries})
        if not owners:
            return {}
        scores = await layer._execute(shard, "ZMSCORE", wire.processes_key(layer.prefix), *owners)
        cutoff = time.time() - layer.liveness_timeout
        live = set()
        absent = []
        for owner, score in zip(owners, scores, strict=True):
            if score is None:
                absent.append(owner)
            elif float(score) > cutoff:
                live.add(owner)
        found: dict[str, dict[str, Any]] = {}
        for field, value in entries:
            if value[:OWNER].decode(errors="replace") in live:
                info = self._decode(value[OWNER:])
                if info is not None:
                    found[field.decode()] = info
        if absent:  # gone without a sweep (closed, or a sweep cut short): remove them now
            layer._spawn(self._sweep_group(layer._pipes[shard], group, absent))
        return found

    # Sweeping --------------------------------------------------------------------------------

    async def _sweep_group(self, pipeline: Pipeline, group: str, processes: list[str]) -> int:
        """Remove ``group``'s entries of ``processes`` that are absent from ``procs``;
        announce them. Returns how many went, or -1 if none of them is absent any more."""
        layer = self._layer
        removed = await pipeline.run_script(
            scripts.PRESENCE_SWEEP,
            [presence_key(layer.prefix, group), wire.processes_key(layer.prefix)],
            processes,
            retry=True,
        )
        pairs = _pairs(removed)
        gone = []
        for field, value in pairs:
            info = self._decode(value[OWNER:])
            if info is not None:
                gone.append((field.decode(), info))
        for channel, info in gone:
            self.events.left(group, channel, info)
        self.swept += len(pairs)
        return len(pairs)

    async def sweep_process(self, pipeline: Pipeline, process: str) -> None:
        """The liveness sweep forgot ``process``: remove its entries on this host, announce
        them, forget its list of groups."""
        layer = self._layer
        groups_key = process_presence_key(layer.prefix, process)
        groups = await pipeline.execute(resp.pack("SMEMBERS", groups_key))
        removed = 0
        for raw in groups or ():
            removed += await self._sweep_group(pipeline, raw.decode(), [process])
        await pipeline.execute(resp.pack("DEL", groups_key))
        if removed:
            logger.info(
                "swept %d presence entr%s of process %s in %d group(s)",
                removed,
                "y" if removed == 1 else "ies",
                process,
                len(groups or ()),
            )

    # Reconciliation (the heartbeat calls these) --------------------------------------------

    async def record_all(self, shard: int) -> None:
        """Our liveness entry was missing on ``shard`` (swept, or Redis restarted): write our
        entries of this host back, and announce them (the sweep may have announced leaves)."""
        layer = self._layer
        pipeline = layer._pipes[shard]
        groups = [group for group in self._own if layer._shard(group) == shard]
        if not groups:
            return
        groups_key = process_presence_key(layer.prefix, layer.process_id)
        waits: list[Awaitable[Any]] = [pipeline.execute(resp.pack("SADD", groups_key, *groups))]
        count = 0
        for group in groups:
            entries = list(self._own[group].items())
            count += len(entries)
            key = presence_key(layer.prefix, group)
            for start in range(0, len(entries), RECORD_CHUNK):
                fields: list[bytes | str | int] = []
                for channel, (value, _) in entries[start : start + RECORD_CHUNK]:
                    fields += [channel, value]
                waits.append(pipeline.execute(resp.pack("HSET", key, *fields)))
            self.events.many_joined(group, [(ch, info) for ch, (_, info) in entries])
        results = await asyncio.gather(*waits, return_exceptions=True)
        failed = sum(1 for result in results if isinstance(result, BaseException))
        logger.info(
            "%s: re-recorded %d presence entr%s in %d group(s)%s",
            layer.readiness_key,
            count,
            "y" if count == 1 else "ies",
            len(groups),
            f" ({failed} write(s) failed: retried at the next heartbeat)" if failed else "",
        )

    async def reconcile(self, shard: int) -> None:
        """Remove the records whose removal had to wait for Redis (what is left when Redis
        fails again waits for the next heartbeat; the membership reconciliation goes on)."""
        waiting = self._unrecorded.get(shard)
        if not waiting:
            return
        layer = self._layer
        for group, channel in list(waiting):
            if channel in self._own.get(group, {}):  # added again meanwhile
                waiting.pop((group, channel), None)
                continue
            try:
                await layer._run(
                    scripts.PRESENCE_REMOVE,
                    shard,
                    [presence_key(layer.prefix, group)],
                    [channel],
                    retry=True,
                )
            except LayerConnectionError:
                return
            waiting.pop((group, channel), None)

    # Events ----------------------------------------------------------------------------------

    async def _deliver(self, group: str, messages: list[dict[str, Any]]) -> None:
        """Publish presence events to ``group`` as a plain group message (no history)."""
        layer = self._layer
        if not layer._pipes:
            return  # closed
        shard = layer._shard(group)
        keys = [wire.group_key(layer.prefix, group), wire.group_external_key(layer.prefix, group)]
        for message in messages:
            payload = layer._codec.encode(message)
            now = time.time()
            sealed = layer._codec.seal(payload)
            data = wire.pack_group_message(now + layer.expiry, layer._process_id_bytes, sealed)
            _, external = await layer._run(
                scripts.GROUP_SEND, shard, keys, [data, repr(now - layer.group_expiry)], retry=False
            )
            if group in layer._groups:
                layer._fan_out(group, time.monotonic() + layer.expiry, payload)
            if external:
                await layer._push_external([member.decode() for member in external], sealed, now)

    # Closing ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """Remove our entries from Redis and announce them, without waiting for Redis."""
        layer = self._layer
        for group in list(self._own):
            for channel, (_, info) in self._own[group].items():
                self.events.left(group, channel, info)
            if layer._pipes:
                pipeline = layer._pipes[layer._shard(group)]
                if pipeline.connected:
                    key = presence_key(layer.prefix, group)
                    pipeline.fire(resp.pack("HDEL", key, *self._own[group]))
        self._own.clear()
        if any(pipe.connected for pipe in layer._pipes):
            self.events.flush_now()
            try:
                await asyncio.wait_for(self.events.drain(), CLOSE_WAIT)
            except TimeoutError:
                logger.debug("presence events still undelivered at close")
        self.events.cancel()
        self._unrecorded.clear()

    def clear(self) -> None:
        """``flush()``: forget our entries and pending events (Redis's keys go with it)."""
        self._own.clear()
        self._unrecorded.clear()
        self.events.clear()
