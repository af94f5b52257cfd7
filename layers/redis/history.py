"""Group history on Redis: a capped stream per history group, written by the one ``group_send``
script, read by ``group_history`` and by the layer's gap healing.

Configuration, positions, the reserved key and the answers of ``group_history`` are the
contract of :mod:`roomcast.layers.history` (``docs/history.md``); this module is how Redis
keeps it.

Keys, on the group's hash tag (the tag of ``<prefix>:g{<group>}``, the group's members and
pub/sub channel), so that one script touches them atomically and Redis Cluster can follow:

========================  ======  ===========================================================
``<prefix>:h{<group>}``   stream  one entry per message, id ``<offset>-0``, fields ``t`` (ms,
                                  the sender's clock, for ``ttl``) and ``d`` (the payload,
                                  sealed when encryption is on, without its position)
``<prefix>:hm{<group>}``  hash    ``e``: the epoch, ``o``: the last offset, ``f``: the fence
                                  (the identity of the server that started the epoch)
========================  ======  ===========================================================

**group_send** on a history group is one ``EVALSHA`` of :data:`HISTORY_SEND`, whatever the
group's size: it takes the next offset (``HINCRBY``), appends the message (``XADD MAXLEN ~
size``), renews the keys' expiry, publishes once with the position in front, and returns the
plain-channel members as the plain ``GROUP_SEND`` does. A history group's pub/sub message is

    0x00 | 1 byte: n | n bytes: "<epoch>:<offset>" | the plain message (expiry | sender | payload)

so every copy carries its position (outside the Fernet seal), and a receiver tells the two
formats apart without knowing the configuration: a plain message starts with its expiry, a
big-endian double of a Unix time, which never starts with 0x00. Members get the payload with
``POSITION_KEY`` stamped on it (:func:`~roomcast.layers.history.stamp_payload`).

**Trimming.** ``XADD MAXLEN ~`` keeps at least ``size`` entries cheaply (whole nodes go); reads
take only the newest ``size`` offsets, so the answer is exact. With a ``ttl`` each send sets
the stream to expire ``ttl`` after it and reads leave out entries older than ``ttl``; the hash
expires ``max(ttl, group_expiry)`` after the last use (the position outlives its messages, as in
memory). Without a ``ttl`` neither key expires.

**Epochs and the fence.** The epoch is made by the script that finds the hash missing: the
group's first use, or after its history was lost (a restart without persistence, expiry,
eviction, ``flush()``); 12 hex digits of a SHA-1 of the call's expiry, sender and fence on a
send, a random one the reader brings on a read. The epoch and the offset live in one hash,
so they can only vanish together: an offset never restarts at 1 under a surviving epoch. A
server can also keep the hash but lack the last writes: a replica promoted by Sentinel
(replication is asynchronous), or a restart from an older snapshot; its offsets would then be
handed out a second time. So the hash also holds the fence ``f``, the ``run_id`` of the server
that started the epoch (a server's ``run_id`` changes with every start, and a promoted replica
has its own): the scripts are *fenced* (:meth:`~roomcast.layers.redis.pipeline.Pipeline.run_fenced`
appends the ``run_id`` of the server each call is written to), and a script that finds another
fence starts a new epoch. A failover or a restart therefore always changes the epoch, and
resumes across it answer ``recovered=False`` instead of silently skipping reused offsets. (A
restart with full AOF persistence lost nothing, and still starts new epochs: a false alarm,
never a silent loss.) A server that refuses ``INFO`` gives no fence: then only a lost hash
changes the epoch.

Faults, for ``group_send`` / ``group_history`` / ``group_position``: they are calls of the
pipeline like any other (waited out for ``retry_timeout``, then ``LayerConnectionError``). A
``group_send`` whose connection breaks while in flight raises at once, as the plain one: Redis
may have run it, and then its message is in the stream and has its offset (the gap healing
of other processes delivers it; the caller was told it may have taken effect). Reads in flight
are written again. What each process does about missed pub/sub messages is
:mod:`roomcast.layers.redis.healing`.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, NamedTuple

from ..history import (
    HistoryPolicy,
    HistoryResult,
    StreamPosition,
    new_epoch,
    select_history,
    stamp,
    stamp_payload,
)
from . import wire
from .reconnect import LOST_CONNECTION
from .resp import bulk
from .scripts import Script

if TYPE_CHECKING:
    from .layer import RedisChannelLayer

MARK = b"\x00"  # the first byte of a history group's pub/sub message
SEND_ARGS = 12  # HISTORY_SEND's numkeys, 4 keys and 7 arguments (the fence is added)
ROUTE_CACHE = 65536  # history groups whose packed keys are remembered, at most

# group_send on a history group. KEYS: members zset (= pub/sub channel), external zset, stream,
# meta hash. ARGV: 1 expiry | sender, 2 payload, 3 cutoff (memberships older lapse), 4 now (ms),
# 5 size, 6 stream ttl (ms, 0: none), 7 meta ttl (ms, 0: none), 8 fence.
# Returns {processes that got it, live external members, epoch, offset}. A new epoch is the
# head of a SHA-1 of (expiry | sender, fence, key): no two calls can make the same one.
HISTORY_SEND = Script(
    """
local meta = redis.call('HMGET', KEYS[4], 'e', 'f')
local epoch = meta[1]
if not epoch or meta[2] ~= ARGV[8] then
  epoch = string.sub(redis.sha1hex(ARGV[1] .. ARGV[8] .. KEYS[4]), 1, 12)
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[4], 'e', epoch, 'o', 0, 'f', ARGV[8])
end
local offset = redis.call('HINCRBY', KEYS[4], 'o', 1)
local id = string.format('%d', offset)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], id .. '-0', 't', ARGV[4], 'd', ARGV[2])
if ARGV[6] ~= '0' then
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
  redis.call('PEXPIRE', KEYS[4], ARGV[7])
end
local position = epoch .. ':' .. id
local receivers = redis.call(
  'PUBLISH', KEYS[1], '\\0' .. string.char(#position) .. position .. ARGV[1] .. ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {receivers, {}, epoch, offset}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
return {receivers, redis.call('ZRANGE', KEYS[2], 0, -1), epoch, offset}
""",
    fenced=True,
)

# Read a history. KEYS: stream, meta hash. ARGV: 1 since epoch ('' for none), 2 since offset,
# 3 count (-1: every entry, 0: none, the position only; n: the newest n), 4 size, 5 cutoff (ms:
# older entries are past the ttl; 0: none), 6 meta ttl (ms, 0: none), 7 a fresh epoch, 8 fence.
# Returns {epoch, offset, id, t, d, id, t, d, ...}: the retained entries of the epoch after
# `since` when it is this epoch's and not ahead, else all retained (XREVRANGE: newest first).
HISTORY_READ = Script(
    """
local meta = redis.call('HMGET', KEYS[2], 'e', 'o', 'f')
local epoch, offset = meta[1], tonumber(meta[2])
if not epoch or meta[3] ~= ARGV[8] then
  epoch, offset = ARGV[7], 0
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 'o', 0, 'f', ARGV[8])
end
if ARGV[6] ~= '0' then
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
local reply = {epoch, offset}
local count = tonumber(ARGV[3])
if count == 0 or offset == 0 then
  return reply
end
local low = offset - tonumber(ARGV[4]) + 1
if ARGV[1] == epoch then
  local after = tonumber(ARGV[2]) + 1
  if after <= offset + 1 and after > low then
    low = after
  end
end
if low < 1 then
  low = 1
end
if low > offset then
  return reply
end
local first = string.format('%d-0', low)
local entries
if count < 0 then
  entries = redis.call('XRANGE', KEYS[1], first, '+')
else
  entries = redis.call('XREVRANGE', KEYS[1], '+', first, 'COUNT', count)
end
local cutoff = tonumber(ARGV[5])
for _, entry in ipairs(entries) do
  local fields = entry[2]
  if cutoff == 0 or tonumber(fields[2]) >= cutoff then
    reply[#reply + 1] = entry[1]
    reply[#reply + 1] = fields[2]
    reply[#reply + 1] = fields[4]
  end
end
return reply
""",
    fenced=True,
)


def stream_key(prefix: str, group: str) -> str:
    return f"{prefix}:h{{{group}}}"


def meta_key(prefix: str, group: str) -> str:
    return f"{prefix}:hm{{{group}}}"


class Published(NamedTuple):
    """A history group's pub/sub message, taken apart."""

    epoch: str
    offset: int
    expires: float  # Unix time
    sender: bytes
    sealed: bytes


def unpack_published(data: bytes) -> Published:
    """Raises ``ValueError`` for bytes that are not a history group's message."""
    if data[:1] != MARK or len(data) < 2:
        raise ValueError("not a history group message")
    end = 2 + data[1]
    epoch, colon, offset = data[2:end].decode("ascii").rpartition(":")
    if not colon or not epoch or not offset.isdigit():
        raise ValueError("malformed position in a history group message")
    expires, sender, sealed = wire.unpack_group_message(data[end:])
    return Published(epoch, int(offset), expires, sender, sealed)


class Entry(NamedTuple):
    """One message read from a group's stream."""

    offset: int
    sent: float  # Unix time (the sender's clock)
    sealed: bytes


class Read(NamedTuple):
    """What :data:`HISTORY_READ` answered: the current position and entries, oldest first."""

    position: StreamPosition
    entries: list[Entry]


def _ttls(policy: HistoryPolicy, group_expiry: float) -> tuple[int, int]:
    """The stream's and the hash's expiry in ms for ``policy`` (0: they do not expire)."""
    if policy.ttl is None:
        return 0, 0
    stream = math.ceil(policy.ttl * 1000)
    return stream, max(stream, math.ceil(group_expiry * 1000))


class _Route(NamedTuple):
    """What a history group's sends pack the same way every time, worked out once."""

    shard: int
    keys: bytes  # ``numkeys`` and the four keys, packed
    tail: bytes  # size, stream ttl, meta ttl, packed


class RedisHistories:
    """The history half of one :class:`~roomcast.layers.redis.layer.RedisChannelLayer`:
    its ``group_send`` for history groups, and the reads (see the module)."""

    def __init__(self, layer: RedisChannelLayer) -> None:
        self._layer = layer
        self._ttls: dict[HistoryPolicy, tuple[int, int]] = {}
        self._routes: dict[str, _Route] = {}  # (bounded, as the layer's own)

    def ttls(self, policy: HistoryPolicy) -> tuple[int, int]:
        ttls = self._ttls.get(policy)
        if ttls is None:
            ttls = self._ttls[policy] = _ttls(policy, self._layer.group_expiry)
        return ttls

    def _route(self, group: str, policy: HistoryPolicy) -> _Route:
        layer, prefix = self._layer, self._layer.prefix
        keys = (
            wire.group_key(prefix, group),
            wire.group_external_key(prefix, group),
            stream_key(prefix, group),
            meta_key(prefix, group),
        )
        stream_ttl, meta_ttl = self.ttls(policy)
        route = _Route(
            layer._shard(group),
            bulk(b"4") + b"".join(bulk(key.encode()) for key in keys),
            b"".join(bulk(b"%d" % value) for value in (policy.size, stream_ttl, meta_ttl)),
        )
        if len(self._routes) >= ROUTE_CACHE:
            self._routes.clear()
        self._routes[group] = route
        return route

    async def send(self, group: str, policy: HistoryPolicy, payload: bytes) -> None:
        """``group_send`` of the encoded ``payload`` to a history group (on the home loop)."""
        layer = self._layer
        route = self._routes.get(group) or self._route(group, policy)
        now = time.time()
        sealed = layer._codec.seal(payload)
        head = wire.pack_group_message(now + layer.expiry, layer._process_id_bytes, b"")
        body = (
            route.keys
            + bulk(head)
            + bulk(sealed)
            + bulk(repr(now - layer.group_expiry).encode())
            + bulk(b"%d" % (now * 1000))
            + route.tail
        )
        pipeline = layer._pipes[route.shard]
        try:
            if not pipeline.has_room or pipeline.waiting_for_room:
                await pipeline.wait_for_room()
            reply = await pipeline.submit_fenced(HISTORY_SEND, SEND_ARGS, body, retry=False)
        except LOST_CONNECTION as exc:
            raise layer._unreachable(route.shard, exc) from exc
        receivers, external, raw_epoch, offset = reply
        layer.last_group_receivers = receivers
        layer.counters.group_sent += 1
        local = group in layer._groups
        if local or external:
            epoch = raw_epoch.decode()
            stamped = stamp_payload(payload, stamp(group, epoch, offset))
            if local:
                expires = time.monotonic() + layer.expiry
                layer._healer.on_sent(group, epoch, offset, expires, stamped)
            if external:
                members = [member.decode() for member in external]
                await layer._push_external(members, layer._codec.seal(stamped), now)

    async def read(
        self, group: str, policy: HistoryPolicy, since: StreamPosition | None, count: int
    ) -> Read:
        """The group's position and retained entries after ``since`` (see HISTORY_READ)."""
        layer = self._layer
        stream_ttl, meta_ttl = self.ttls(policy)
        cutoff = int(time.time() * 1000) - stream_ttl if stream_ttl else 0
        args = [
            "" if since is None else since.epoch,
            0 if since is None else since.offset,
            count,
            policy.size,
            cutoff,
            meta_ttl,
            new_epoch(),
        ]
        keys = [stream_key(layer.prefix, group), meta_key(layer.prefix, group)]
        reply = await layer._run_fenced(HISTORY_READ, layer._shard(group), keys, args, retry=True)
        position = StreamPosition(reply[0].decode(), int(reply[1]))
        entries = [
            Entry(int(reply[i].partition(b"-")[0]), int(reply[i + 1]) / 1000, reply[i + 2])
            for i in range(2, len(reply), 3)
        ]
        if count > 0:
            entries.reverse()  # XREVRANGE: newest first
        return Read(position, entries)

    async def history(
        self,
        group: str,
        policy: HistoryPolicy,
        since: StreamPosition | None,
        limit: int | None,
    ) -> HistoryResult:
        """``group_history``: one script run, then the contract's rules (``select_history``)."""
        layer = self._layer
        read = await self.read(group, policy, since, -1 if limit is None else limit + 1)
        position = read.position
        chosen, recovered = select_history(
            [(entry.offset, entry) for entry in read.entries], position, since, limit
        )
        messages = []
        for entry in chosen:
            payload = layer._unseal(entry.sealed)  # None: another key (counted in rejected)
            try:
                if payload is not None:
                    stamped = stamp_payload(payload, stamp(group, position.epoch, entry.offset))
                    messages.append(layer._codec.decode(stamped))
                    continue
            except (ValueError, IndexError):  # UndecodableMessage included: not our bytes
                layer.counters.rejected += 1
            recovered = False  # the answer misses that message
        return HistoryResult(messages, position, recovered)

    async def position(self, group: str, policy: HistoryPolicy) -> StreamPosition:
        return (await self.read(group, policy, None, 0)).position


__all__ = [
    "HISTORY_READ",
    "HISTORY_SEND",
    "Entry",
    "Published",
    "Read",
    "RedisHistories",
    "meta_key",
    "stream_key",
    "unpack_published",
]
