"""The Redis channel layer: one copy per process, fan-out inside the process.

Design (after Phoenix PubSub and Centrifugo):

* A process-local channel is named ``<prefix>.<process id>!<suffix>`` by ``new_channel()``.
  Its messages wait in this process's memory (:mod:`roomcast.layers.local`), never in Redis.
* A process keeps its own channels' group memberships in memory and is subscribed to the pub/sub
  channel of every group it has members in. ``group_send`` is one ``EVALSHA`` that PUBLISHes
  once: Redis sends one copy to each subscribed process (O(processes), whatever the group size;
  the member list never crosses the wire) and each process hands it to its local members. The
  sending process delivers to its own members directly and ignores its own published copy.
* A direct ``send`` to a channel of this process is a local append. To a channel of another
  process it is a push to that process's inbox list, read by the process in batches. To a plain
  channel (no ``!``, e.g. a worker's ``thumbnails``) it is a push to that channel's own list,
  which any process may ``receive`` from.
* Each membership also has a record in the group's sorted set (time of the last ``group_add``),
  for expiry and ``group_members()``. A ``group_add`` for a channel of another process records
  it and sends that process a control message, which then joins and subscribes. Plain channels
  in a group are kept in a second set; ``group_send`` returns them and pushes to their lists.
* Keys of one operation share a hash tag (see :mod:`roomcast.layers.redis.wire`): Redis Cluster with
  sharded pub/sub can follow without a redesign. Several ``hosts`` shard groups, inboxes and
  plain channels by a consistent hash (:mod:`roomcast.layers.redis.sharding`).
* Groups with history (the ``history`` option) keep their last messages in a capped stream on
  the group's hash tag, and every copy carries its position (:mod:`~roomcast.layers.redis.history`);
  each process hands its members a history group's messages in offset order and fills what its
  subscription missed from the stream (:mod:`~roomcast.layers.redis.healing`).

Connections: a fixed few per process and host, whatever the load, all opened by the layer
itself (:mod:`~roomcast.layers.redis.link`): one pipelined connection for every non-blocking
command (:mod:`~roomcast.layers.redis.pipeline`: sends, memberships, group sends, reads, flush,
heartbeats; bounded, with backpressure to callers), one for the group subscriptions
(:mod:`~roomcast.layers.redis.subscriber`), one for this process's inbox (on its host only,
:mod:`~roomcast.layers.redis.inbox`) and one for receivers of plain channels, once there are any
(:mod:`~roomcast.layers.redis.blocking`). There is no pool to exhaust: ten thousand concurrent
calls queue and complete. Every Redis operation runs on the layer's home event loop (the first
loop that used it); a call from another loop (``async_to_sync`` in a thread) is handed to it.

Outages (see also ``docs/outages.md``): a call waits for Redis up to ``retry_timeout`` seconds
(5 by default) while the connection is rebuilt in the background, then raises
:class:`~roomcast.layers.exceptions.LayerConnectionError`; the consumers turn that into a
WebSocket close 1013 and an HTTP 503. An outage is logged once when it starts and once when it
ends (its duration and the calls that failed), and reported to :mod:`roomcast.readiness` under
``channel layer '<alias>'`` meanwhile. :meth:`RedisChannelLayer.check` makes one connection
attempt per host and raises if one cannot be reached (the connection is then retried in the
background until it succeeds, which reports the process ready).

Presence (``presence_add``, ``presence()``; the ``presence`` option for join/leave events):
entries on the group's hash tag, kept alive by the heartbeat below, swept and announced when
it lapses (:mod:`~roomcast.layers.redis.presence`).

Membership and liveness: ``group_discard`` of a channel of this process removes the local
membership first, whatever Redis says; if Redis cannot be reached the record's removal waits
and is made once it can (reconciled from local state). Each process heartbeats
(:mod:`~roomcast.layers.redis.liveness`); the records of a process whose heartbeat lapsed for
``liveness_timeout`` seconds (15 by default) are ignored by ``group_members()`` and swept from
Redis, so the members of a gateway killed with SIGKILL vanish within that bound.

What is lost when, and in which order things arrive. The last column is for groups with history
(``CONFIG["history"]``, :mod:`~roomcast.layers.redis.history`: a capped stream per group, one
script per ``group_send``; :mod:`~roomcast.layers.redis.healing`: each process fills the holes
of its subscriptions from the stream). "Resumable" is a consumer using
:class:`~roomcast.consumers.resume.ResumableGroupsMixin`. Figures: ``tests/outages/``.

==========================  ===================================  ===================================
event                       without history                      with history
==========================  ===================================  ===================================
``send`` to a full channel  ``ChannelFull`` raised, nothing      the same (history keeps group
                            written. For a channel of another    messages only)
                            process "full" means that
                            process's inbox holds ``capacity``
                            unread entries (as in
                            channels_redis); a message that
                            then finds its local buffer full is
                            dropped and counted there.
``group_send``, member's    dropped for that member,             the same for the live copy; a
buffer full                 ``counters.dropped`` += 1            resumable member sees the offset
                                                                 jump and fills it from the history
message older than          never delivered                      the same, for a live or a healed
``expiry``                  (``counters.expired``); clocks of    copy (by its time of sending); it
                            the processes are assumed to agree   stays in the stream for resumes
                            within seconds
Redis unreachable for less  calls wait and complete; a           the same
than ``retry_timeout``      ``group_send`` made meanwhile is
                            delivered after the outage
Redis unreachable for       the waiting calls raise              the same; ``group_history`` and
longer                      ``LayerConnectionError`` (nothing    ``group_position`` raise too (a
                            was written for them); receivers     resuming consumer closes 1013)
                            and the background readers keep
                            waiting
connection lost with a      that call raises                     the same; if Redis ran it, the
``send`` or ``group_send``  ``LayerConnectionError`` at once:    message has its offset and is in
in flight (restart,         Redis may or may not have run it,    the stream, and the processes
``CLIENT KILL``, failover)  and writing it again could deliver   deliver it (healing)
                            it twice; membership records,
                            reads and heartbeats in flight are
                            written again
process disconnected from   that process misses the message      nothing lost: once subscribed
Redis when a group message  (pub/sub keeps no backlog); it       again the process reads what it
is published (``CLIENT      resubscribes from its own state on   missed from the stream and hands it
KILL TYPE pubsub``, a       reconnect                            on first, in order, once, while the
restart, a failover, a                                           stream holds it (``size``,
network blip)                                                    ``ttl``); else it goes on and
                                                                 counts it (``stats()
                                                                 ["history_missed"]``), and a
                                                                 resumable member reports
                                                                 ``recovered: false``
Redis restarts (no          inbox and plain-channel entries not  the history is lost: a new epoch
persistence)                yet read are lost; memberships       (``stats()["history_epochs_
                            survive in each process's memory,    lost"]``); resumes from before it
                            subscriptions are restored and       answer ``recovered: false``;
                            membership records re-recorded at    nothing is delivered twice
                            the next heartbeat; the records of
                            plain-channel members are lost
a failover (Sentinel)       as a restart, for what the new       a new epoch too (the fence: the new
                            master had not replicated; links     master is another server), so
                            ask the Sentinels for the master     resumes answer ``recovered: false``
                            again and refuse a replica           instead of reusing offsets; what
                                                                 the old master took was published
                                                                 live, what the new one takes
                                                                 reaches every member
``group_add`` of another    takes effect when that process       the same; for a process's own
process's channel           reads its inbox (normally well       channel ``group_add`` returns once
                            under a millisecond); group          the group's position is read, and
                            messages published before that       every later message reaches it
                            miss the new member
``group_discard`` while     local membership gone at once (no    the same
Redis is down               more messages); the record is
                            removed when Redis is back
cancelling ``receive()`` on nothing lost: an entry already       the same
a plain channel             popped is pushed back to the head
                            of the list for the next receiver
a process dies (SIGKILL)    what it had popped and not yet       the same for its members; their
                            handed over is lost; its members     clients resume from the stream on
                            vanish from ``group_members()``      any process, nothing lost while the
                            within ``liveness_timeout`` and      history holds it
                            their records are swept
==========================  ===================================  ===================================

Order: messages from one sender to one channel arrive in the order sent when the sender awaits
each call (the API's normal use): sends through the inbox or list (FIFO), group messages
through one pub/sub stream per process. A ``send`` and a ``group_send`` keep their relative
order when the receiver is in the sender's process (both are local appends); across processes
they travel different paths and may swap. Calls made concurrently by one process go out on one
connection in the order they were made. A history group's messages reach every member of every
process in offset order, the order Redis ran the sends in, whoever sent them: one total order
per group.

Costs of history (``layer-bench --history``, ``docs/history.md``): one script per
``group_send`` whatever the group size. Groups without history send the same commands and
bytes as before; their ``group_send`` adds one check (and one dict lookup when ``history``
names other groups), their receive path nothing.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from _thread import get_ident
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

from redis.exceptions import RedisError

from ..base import UNDECIDED, BaseChannelLayer, HistoryConfig
from ..exceptions import (
    ChannelFull,
    InvalidChannelName,
    LayerConfigError,
    LayerConnectionError,
    UndecodableMessage,
)
from ..history import HistoryPolicy, HistoryResult, StreamPosition, stamp, stamp_payload
from ..local import LocalChannels, LocalGroups, Payload, shareable, unpack
from ..presence import PresenceConfig
from ..serializers import DEFAULT_MAX_MESSAGE_SIZE, MessageCodec
from . import resp, scripts, wire
from .blocking import PlainReader
from .healing import GapHealer
from .health import Health
from .history import MARK, Read, RedisHistories, unpack_published
from .hosts import HostSpec, parse_hosts
from .inbox import InboxReader
from .link import RespLink
from .liveness import Liveness
from .pipeline import Pipeline
from .presence import RedisPresence
from .reconnect import LOST_CONNECTION, cancel_and_wait, logger
from .sharding import shard_for
from .subscriber import GroupSubscriber

T = TypeVar("T")
PREFIX_RE = re.compile(r"^[a-zA-Z\d\-_.:]+$")
CONTROL_CAPACITY = 1 << 30  # control entries are never refused
RECEIVABLE_CACHE = 65536  # local channel names whose check receive() remembers, at most
ROUTE_CACHE = 65536  # channel names whose route send() remembers, at most
MAX_UNRECORDED = 1 << 20  # discards waiting for Redis, at most (then the oldest are dropped)
DEFAULT_RETRY_TIMEOUT = 5.0
DEFAULT_LIVENESS_TIMEOUT = 15.0
MIN_LIVENESS_TIMEOUT = 0.5
MAX_LIVENESS_TIMEOUT = 3600.0
MAX_RETRY_TIMEOUT = 3600.0


class _Route(NamedTuple):
    """Where ``send`` puts a channel's messages, worked out once per channel name."""

    local: bool  # one of this process's channels: a local append
    shard: int
    name: bytes  # the channel name written into the entry ("" for a plain channel's list)
    head: bytes  # the PUSH script's packed ``numkeys key``
    tail: bytes  # its packed ``capacity ttl``
    capacity: int


def _seconds(name: str, value: Any, *, low: float, high: float | None = None) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value == value
    if not ok or value < low or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise LayerConfigError(f"{name} must be a number of seconds {bound}, got {value!r}")
    return float(value)


class RedisChannelLayer(BaseChannelLayer):
    """Channels' layer API over Redis; accepts channels_redis's ``CONFIG``.

    Beyond channels_redis's options: ``retry_timeout`` (seconds a call waits for an
    unreachable Redis before raising ``LayerConnectionError``; default 5), ``liveness_timeout``
    (seconds after which the records of a process that stopped heartbeating are ignored and
    swept; default 15, between 0.5 and 3600) and ``alias`` (the name this layer
    reports its readiness under; ``CHANNEL_LAYERS``'s alias when built from settings, else
    ``prefix``). ``subscribe_timeout`` bounds how long ``group_add`` waits for Redis to confirm
    a subscription (default: ``retry_timeout``). ``history``: the group histories of issue 13
    (:mod:`roomcast.layers.history`; on Redis :mod:`~roomcast.layers.redis.history` and
    :mod:`~roomcast.layers.redis.healing`).
    """

    extensions: ClassVar[list[str]] = [*BaseChannelLayer.extensions, "history", "presence"]

    def __init__(
        self,
        *,
        hosts: Sequence[Any] | None = None,
        prefix: str = "asgi",
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: Mapping[str | re.Pattern[str], int] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        symmetric_encryption_keys: Sequence[str | bytes] | None = None,
        subscribe_timeout: float | None = None,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
        liveness_timeout: float = DEFAULT_LIVENESS_TIMEOUT,
        presence: PresenceConfig | None = None,
        alias: str | None = None,
        history: HistoryConfig | None = None,
    ) -> None:
        super().__init__(
            expiry=expiry,
            group_expiry=group_expiry,
            capacity=capacity,
            channel_capacity=channel_capacity,
            max_message_size=max_message_size,
            history=history,
        )
        if not isinstance(prefix, str) or not PREFIX_RE.match(prefix):
            raise LayerConfigError(
                f"prefix must be letters, digits and - _ . : only, got {prefix!r}"
            )
        if isinstance(symmetric_encryption_keys, (str, bytes)):
            raise LayerConfigError("symmetric_encryption_keys must be a list of keys")
        if alias is not None and not isinstance(alias, str):
            raise LayerConfigError(f"alias must be a str, got {alias!r}")
        self.prefix = prefix
        self.alias = alias
        self.hosts: list[HostSpec] = parse_hosts(hosts)
        self.retry_timeout = _seconds(
            "retry_timeout", retry_timeout, low=0.001, high=MAX_RETRY_TIMEOUT
        )
        self.liveness_timeout = _seconds(
            "liveness_timeout",
            liveness_timeout,
            low=MIN_LIVENESS_TIMEOUT,
            high=MAX_LIVENESS_TIMEOUT,
        )
        self.subscribe_timeout = (
            self.retry_timeout
            if subscribe_timeout is None
            else _seconds("subscribe_timeout", subscribe_timeout, low=0.001)
        )
        self._codec = MessageCodec(
            max_message_size=max_message_size,
            symmetric_encryption_keys=symmetric_encryption_keys,
        )
        self.process_id = secrets.token_hex(wire.PROCESS_ID_LENGTH // 2)
        self._process_id_bytes = self.process_id.encode()
        self._local_marker = f".{self.process_id}!"
        self._expiry_ms = int(self.expiry * 1000) + 1
        self._group_expiry_ms = int(self.group_expiry * 1000) + 1
        self._local = LocalChannels(self.get_capacity, self.counters)
        self._groups = LocalGroups(self.group_expiry)
        self._routes: dict[str, _Route] = {}  # valid channel names send() has seen (bounded)
        self._home: asyncio.AbstractEventLoop | None = None
        self._home_thread: int | None = None  # the thread of the home loop
        self._pipes: list[Pipeline] = []
        self._inbox: InboxReader | None = None
        self._subscribers: dict[int, GroupSubscriber] = {}
        self._plain: dict[int, PlainReader] = {}
        self._liveness: Liveness | None = None
        self._health: Health | None = None
        self.configure_presence(presence)
        self._presence = RedisPresence(self)  # presence entries and events (issue 18)
        self._background: set[asyncio.Task[None]] = set()
        self._receivable: set[str] = set()  # local names receive() has checked (bounded)
        # (group, channel) whose record removal waits for Redis, per shard
        self._unrecorded: dict[int, dict[tuple[str, str], None]] = {}
        self.last_group_receivers = 0  # processes the last group_send's PUBLISH reached
        self._histories = RedisHistories(self)  # history groups (issue 13)
        self._healer = GapHealer(
            deliver=self._fan_out,
            read=self._heal_read,
            unseal=self._unseal,
            subscribed=self._is_subscribed,
            spawn=self._spawn,
            expiry=self.expiry,
            counters=self.counters,
        )

    # Plumbing ----------------------------------------------------------------------------

    @property
    def readiness_key(self) -> str:
        """The key this layer reports under in :mod:`roomcast.readiness`."""
        return f"channel layer {self.alias or self.prefix!r}"

    @property
    def health(self) -> Health:
        if self._health is None:
            self._health = Health(self.readiness_key, [host.description for host in self.hosts])
        return self._health

    def _shard(self, name: str) -> int:
        return shard_for(name, len(self.hosts))

    def _route(self, channel: str) -> _Route:
        """Validate ``channel`` and work out its route; remembered for the next send."""
        self.require_valid_channel_name(channel)
        capacity = self.get_capacity(channel)
        if self.is_local(channel):
            route = _Route(True, 0, b"", b"", b"", capacity)
        else:
            if "!" in channel:
                process = wire.process_of(channel)
                key, shard = wire.inbox_key(self.prefix, process), self._shard(process)
                name = channel.encode()
            else:
                key, shard = wire.channel_key(self.prefix, channel), self._shard(channel)
                name = b""
            head = resp.bulk(b"1") + resp.bulk(key.encode())
            tail = resp.bulk(b"%d" % capacity) + resp.bulk(b"%d" % self._expiry_ms)
            route = _Route(False, shard, name, head, tail, capacity)
        if len(self._routes) >= ROUTE_CACHE:
            self._routes.clear()
        self._routes[channel] = route
        return route

    def _unreachable(self, shard: int, exc: BaseException) -> LayerConnectionError:
        self.health.call_failed(shard)
        return LayerConnectionError(f"cannot use Redis at {self.hosts[shard].description}: {exc}")

    async def _run(
        self, script: scripts.Script, shard: int, keys: list[str], args: list[Any], *, retry: bool
    ) -> Any:
        """One script run on ``shard`` (on the home loop)."""
        try:
            return await self._pipes[shard].run_script(script, keys, args, retry=retry)
        except LOST_CONNECTION as exc:
            raise self._unreachable(shard, exc) from exc

    async def _run_fenced(
        self, script: scripts.Script, shard: int, keys: list[str], args: list[Any], *, retry: bool
    ) -> Any:
        """One fenced script run on ``shard`` (history; on the home loop)."""
        try:
            return await self._pipes[shard].run_fenced(script, keys, args, retry=retry)
        except LOST_CONNECTION as exc:
            raise self._unreachable(shard, exc) from exc

    async def _execute(self, shard: int, *command: bytes | str | int) -> Any:
        """One plain command on ``shard`` (on the home loop); server errors are raised."""
        try:
            reply = await self._pipes[shard].execute(resp.pack(*command))
        except LOST_CONNECTION as exc:
            raise self._unreachable(shard, exc) from exc
        return reply

    def is_local(self, channel: str) -> bool:
        """True for the channels this instance's ``new_channel()`` made.

        Valid names hold at most one ``!``, so ``.<process id>!`` inside the name means the
        head ends with our id.
        """
        return self._local_marker in channel

    def _home_loop(self) -> asyncio.AbstractEventLoop:
        """The loop that runs this process's connections and readers; started on first need."""
        home = self._home
        if home is None or home.is_closed():
            home = self._home = asyncio.get_running_loop()
            self._home_thread = get_ident()
            health = self.health
            self._pipes = [
                Pipeline(
                    host,
                    shard,
                    health,
                    self.retry_timeout,
                    name=f"roomcast:{self.prefix}:{self.process_id}:cmd{shard}",
                    fence=bool(self.history),
                )
                for shard, host in enumerate(self.hosts)
            ]
            self._liveness = Liveness(
                prefix=self.prefix,
                process_id=self.process_id,
                timeout=self.liveness_timeout,
                pipelines=lambda: self._pipes,
                on_absent=self._record_all,
                on_beat=self._reconcile,
                on_forgot=self._presence.sweep_process,
            )
            self._liveness.start()  # its first beat goes out before any other command
            liveness = self._liveness
            health.on_back = lambda shard: self._spawn(liveness.beat_now(shard))
            inbox_shard = self._shard(self.process_id)
            self._inbox = InboxReader(
                self.hosts[inbox_shard],
                wire.inbox_key(self.prefix, self.process_id),
                self._on_inbox_entry,
                name=f"roomcast:{self.prefix}:{self.process_id}:inbox",
                shard=inbox_shard,
                health=health,
            )
            self._inbox.start()
            self._subscribers = {}
            self._plain = {}
            self._healer.restart()
            wanted = {wire.group_key(self.prefix, group) for group in self._groups}
            for channel in wanted:  # a new loop: restore subscriptions from local state
                self._spawn(self._subscriber(self._shard(self._group_of(channel))).add(channel))
        return home

    def _at_home(self) -> bool:
        """True when the running loop is the one that runs this layer's connections."""
        return self._home is asyncio.get_running_loop()

    async def _on_home(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` on the home loop, from another loop (``async_to_sync`` in a thread)."""
        home = self._home_loop()
        if asyncio.get_running_loop() is home:
            return await work()

        async def call() -> T:
            return await work()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), home))

    def _spawn(self, work: Awaitable[object]) -> None:
        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except LayerConnectionError as exc:
                logger.debug("roomcast layer background task gave up: %s", exc)
            except Exception:
                logger.exception("roomcast layer background task failed")

        task = asyncio.get_running_loop().create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _subscriber(self, shard: int) -> GroupSubscriber:
        subscriber = self._subscribers.get(shard)
        if subscriber is None:
            subscriber = self._subscribers[shard] = GroupSubscriber(
                self.hosts[shard],
                self._on_group_message,
                name=f"roomcast:{self.prefix}:{self.process_id}:sub{shard}",
                shard=shard,
                health=self.health,
                on_subscribed=self._on_subscribed,
            )
            subscriber.start()
        return subscriber

    def _plain_reader(self, shard: int) -> PlainReader:
        reader = self._plain.get(shard)
        if reader is None:
            reader = self._plain[shard] = PlainReader(
                self.hosts[shard],
                self._pipes[shard],
                name=f"roomcast:{self.prefix}:{self.process_id}:pop{shard}",
                shard=shard,
                health=self.health,
            )
        return reader

    def _group_of(self, pubsub_channel: str) -> str:
        return pubsub_channel[pubsub_channel.index("{") + 1 : -1]

    # Local delivery (always on the home loop) -------------------------------------------

    def _put_local(self, channel: str, expires: float, payload: bytes) -> bool:
        now = time.monotonic()
        self._local.sweep(now, self.expiry)
        return self._local.put(channel, expires, payload, now)

    def _fan_out(self, group: str, expires: float, payload: bytes) -> None:
        now = time.monotonic()
        members = self._groups.members(group, now)
        if not members:
            if group not in self._groups:  # every membership lapsed: stop listening
                self._unsubscribe(group)
            return
        item = shareable(payload, self._codec.decode, len(members))
        self.counters.dropped += self._local.put_many(members, expires, item, now)

    def _unsubscribe(self, group: str) -> None:
        subscriber = self._subscribers.get(self._shard(group))
        if subscriber is not None:
            subscriber.remove(wire.group_key(self.prefix, group))
        self._healer.forget(group)

    async def _join(self, group: str, channel: str) -> None:
        first = self._groups.add(group, channel, time.monotonic())
        shard = self._shard(group)
        if first:  # the sweeper's list of our groups on this host (idempotent)
            groups_key = wire.process_groups_key(self.prefix, self.process_id)
            try:
                await self._execute(shard, "SADD", groups_key, group)
            except LayerConnectionError as exc:  # written again if our records are swept
                logger.debug(
                    "%s: SADD %s %s failed: %s", self.readiness_key, groups_key, group, exc
                )
        key = wire.group_key(self.prefix, group)
        wait = self.subscribe_timeout
        try:
            if self.history and self.history_policy(group) is not None:
                self._healer.track(group)  # its first read follows the subscription's confirmation
                await asyncio.wait_for(self._subscribed_with_history(shard, key, group), wait)
            else:
                await asyncio.wait_for(self._subscriber(shard).add(key), wait)
        except TimeoutError:
            self.health.call_failed(shard)
            raise LayerConnectionError(
                f"Redis at {self.hosts[shard].description} did not confirm the subscription "
                f"to group {group!r} within {wait:g} s; the membership stands and the "
                f"subscription will be made when Redis answers"
            ) from None

    async def _subscribed_with_history(self, shard: int, key: str, group: str) -> None:
        await self._subscriber(shard).add(key)
        await self._healer.started(group)  # messages sent after group_add returns reach it

    def _leave(self, group: str, channel: str) -> None:
        if self._groups.discard(group, channel):
            self._unsubscribe(group)

    def _on_group_message(self, pubsub_channel: str, data: bytes) -> None:
        try:
            expires, sender, sealed = wire.unpack_group_message(data)
        except ValueError:
            self.counters.rejected += 1
            logger.warning("group %s: discarded a malformed message", pubsub_channel)
            return
        if sender == self._process_id_bytes:
            return  # delivered locally when it was sent
        remaining = expires - time.time()
        if remaining <= 0:
            # A history group's message starts with 0x00, its position next: read as a plain
            # message it seems long expired (a double starting 0x00 is < 1e-300), and its
            # "sender" holds the position's ':' (never a process id, which is hex). So plain
            # groups pay nothing for this test.
            if data[:1] == MARK:
                self._on_history_message(pubsub_channel, data)
                return
            self.counters.expired += 1
            return
        payload = self._unseal(sealed)
        if payload is not None:
            self._fan_out(self._group_of(pubsub_channel), time.monotonic() + remaining, payload)

    def _on_history_message(self, pubsub_channel: str, data: bytes) -> None:
        group = self._group_of(pubsub_channel)
        try:
            if self._healer.on_published(group, data):  # in offset order, holes filled
                return
            published = unpack_published(data)
        except ValueError:
            self.counters.rejected += 1
            logger.warning("group %s: discarded a malformed history message", pubsub_channel)
            return
        # A group this process keeps no history for (configured otherwise elsewhere): as is.
        remaining = published.expires - time.time()
        if published.sender == self._process_id_bytes:
            return
        if remaining <= 0:
            self.counters.expired += 1
            return
        payload = self._unseal(published.sealed)
        if payload is not None:
            try:
                stamped = stamp_payload(payload, stamp(group, published.epoch, published.offset))
            except (ValueError, IndexError):
                self.counters.rejected += 1
                return
            self._fan_out(group, time.monotonic() + remaining, stamped)

    def _on_subscribed(self, pubsub_channel: str) -> None:
        if self.history:
            self._healer.on_subscribed(self._group_of(pubsub_channel))

    def _is_subscribed(self, group: str) -> bool:
        subscriber = self._subscribers.get(self._shard(group))
        return subscriber is not None and subscriber.confirmed(wire.group_key(self.prefix, group))

    async def _heal_read(self, group: str, since: StreamPosition | None) -> Read:
        """The stream of a history group after ``since`` (None: only its position)."""
        policy = self.history_policy(group)
        if policy is None:  # the configuration says no history for it: nothing to read
            raise LookupError(f"group {group!r} keeps no history")
        return await self._histories.read(group, policy, since, 0 if since is None else -1)

    def _on_inbox_entry(self, data: bytes) -> None:
        try:
            entry = wire.unpack_list_entry(data)
        except ValueError:  # UnicodeDecodeError included
            self.counters.rejected += 1
            logger.warning("inbox %s: discarded a malformed entry", self.process_id)
            return
        remaining = entry.expires - time.time()
        if remaining <= 0:
            self.counters.expired += 1
            return
        if not entry.channel:
            self._on_control(entry.payload)
            return
        payload = self._unseal(entry.payload)
        if payload is not None and not self._put_local(
            entry.channel, time.monotonic() + remaining, payload
        ):
            self.counters.dropped += 1

    def _on_control(self, payload: bytes) -> None:
        try:
            control = wire.unpack_control(payload)
            op, group, channel = control["op"], control["group"], control["channel"]
        except (ValueError, KeyError, TypeError):
            self.counters.rejected += 1
            return
        if not self.is_local(channel):
            return
        if op == "group_add":
            self._spawn(self._join(group, channel))
        elif op == "group_discard":
            self._leave(group, channel)

    def _unseal(self, sealed: bytes) -> bytes | None:
        try:
            return self._codec.unseal(sealed)
        except Exception as exc:  # cryptography's InvalidToken, or corrupt bytes
            self.counters.rejected += 1
            logger.warning("discarded a message that could not be decrypted (%r)", exc)
            return None

    # Reconciliation (the heartbeat calls these) ------------------------------------------

    async def _record_all(self, shard: int) -> None:
        """Our liveness entry was missing on ``shard`` (swept, or Redis restarted): write
        every membership record of this host again from local state."""
        now_wall, now_mono = time.time(), time.monotonic()
        pipeline = self._pipes[shard]
        groups_key = wire.process_groups_key(self.prefix, self.process_id)
        waits: list[asyncio.Future[Any]] = []
        groups: set[str] = set()
        for group, channel, added in self._groups.memberships():
            if self._shard(group) != shard:
                continue
            groups.add(group)
            at = now_wall - (now_mono - added)
            keys = [wire.group_key(self.prefix, group), wire.group_external_key(self.prefix, group)]
            args = [channel, repr(at), repr(now_wall - self.group_expiry), self._group_expiry_ms, 0]
            if not pipeline.has_room:
                await pipeline.wait_for_room()
            waits.append(
                pipeline.submit_script(scripts.GROUP_ADD, *_packed(keys, args), retry=True)
            )
        if groups:
            waits.append(pipeline.submit(resp.pack("SADD", groups_key, *sorted(groups))))
        if waits:
            results = await asyncio.gather(*waits, return_exceptions=True)
            failed = sum(1 for result in results if isinstance(result, BaseException))
            logger.info(
                "%s: re-recorded %d membership(s) in %d group(s) on %s%s",
                self.readiness_key,
                len(waits) - (1 if groups else 0),
                len(groups),
                self.hosts[shard].description,
                f" ({failed} failed: retried at the next heartbeat)" if failed else "",
            )
        await self._presence.record_all(shard)

    async def _reconcile(self, shard: int) -> None:
        """Remove the records whose discard had to wait for Redis."""
        await self._presence.reconcile(shard)
        waiting = self._unrecorded.get(shard)
        if not waiting:
            return
        items = list(waiting)
        for group, channel in items:
            await self._remove_record(shard, group, channel)
            waiting.pop((group, channel), None)

    async def _remove_record(self, shard: int, group: str, channel: str) -> None:
        keys = [wire.group_key(self.prefix, group), wire.group_external_key(self.prefix, group)]
        await self._run(scripts.GROUP_DISCARD, shard, keys, [channel], retry=True)

    # The contract ------------------------------------------------------------------------

    async def new_channel(self, prefix: str = "specific") -> str:
        name = f"{prefix}.{self.process_id}!{secrets.token_hex(6)}"
        self.require_valid_channel_name(name)
        self._home_loop()  # start reading the inbox so other processes can reach it
        return name

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        route = self._routes.get(channel) if channel.__class__ is str else None
        if route is None:
            route = self._route(channel)
        payload = self._codec.encode(message)
        if route.local:
            expires = time.monotonic() + self.expiry

            async def put() -> bool:
                return self._put_local(channel, expires, payload)

            if self._at_home():
                accepted = self._put_local(channel, expires, payload)
            else:
                accepted = await self._on_home(put)
            if not accepted:
                raise ChannelFull(
                    f"channel {channel!r} is at capacity {self.get_capacity(channel)}"
                )
            self.counters.sent += 1
            return
        entry = wire.pack_entry(time.time() + self.expiry, route.name, self._codec.seal(payload))
        body = route.head + resp.bulk(entry) + route.tail
        if not self._at_home():
            pushed = await self._on_home(lambda: self._push(route, body))
        else:
            pushed = await self._push(route, body)
        if not pushed:
            raise ChannelFull(f"channel {channel!r} is at capacity {route.capacity}")
        self.counters.sent += 1

    async def _push(self, route: _Route, body: bytes) -> Any:
        pipeline = self._pipes[route.shard]
        try:  # (inline rather than self._run: this is the hot path)
            if not pipeline.has_room or pipeline._room:
                await pipeline.wait_for_room()
            return await pipeline.submit_script(scripts.PUSH, 5, body, retry=False)
        except LOST_CONNECTION as exc:
            raise self._unreachable(route.shard, exc) from exc

    async def receive(self, channel: str) -> dict[str, Any]:
        if (
            channel.__class__ is str
            and channel in self._receivable
            and get_ident() == self._home_thread
        ):  # one of ours, checked before, on the home thread: take a buffered message at once
            payload = self._local.take(channel, time.monotonic())
            if payload is None and self._home is asyncio.get_running_loop():
                payload = await self._local.get(channel, time.monotonic)
            if payload is not None:
                message = self._decode(payload)
                if message is not None:
                    return message
        self.require_valid_channel_name(channel, receive=True)
        if "!" in channel:
            if not self.is_local(channel):
                raise InvalidChannelName(
                    f"channel {channel!r} belongs to another process; a process receives only "
                    f"the channels its own new_channel() made"
                )
            if len(self._receivable) >= RECEIVABLE_CACHE:
                self._receivable.clear()
            self._receivable.add(channel)
            while True:
                if self._at_home():
                    payload = await self._local.get(channel, time.monotonic)
                else:
                    payload = await self._on_home(lambda: self._local.get(channel, time.monotonic))
                message = self._decode(payload)
                if message is not None:
                    return message
        return await self._on_home(lambda: self._receive_plain(channel))

    def _decode(self, payload: Payload) -> dict[str, Any] | None:
        """The message, or None (logged, counted in ``rejected``) for bytes we cannot read."""
        try:
            return unpack(payload, self._codec.decode)
        except UndecodableMessage as exc:
            self.counters.rejected += 1
            logger.warning("discarded an undecodable message: %s", exc)
            return None

    async def _receive_plain(self, channel: str) -> dict[str, Any]:
        """Wait on a plain channel's list; a Redis outage is waited out, not raised."""
        key, shard = wire.channel_key(self.prefix, channel).encode(), self._shard(channel)
        reader = self._plain_reader(shard)
        while True:
            popped = await reader.pop(key)
            try:
                entry = wire.unpack_list_entry(popped)
            except ValueError:
                self.counters.rejected += 1
                logger.warning("channel %s: discarded a malformed entry", channel)
                continue
            if entry.expires < time.time():
                self.counters.expired += 1
                continue
            payload = self._unseal(entry.payload)
            message = None if payload is None else self._decode(payload)
            if message is not None:
                self.counters.delivered += 1
                return message

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        if not self._at_home():
            return await self._on_home(lambda: self.group_add(group, channel))
        shard = self._shard(group)
        self._unrecorded.get(shard, {}).pop((group, channel), None)
        now = time.time()
        external = "!" not in channel
        keys = [wire.group_key(self.prefix, group), wire.group_external_key(self.prefix, group)]
        args = [channel, repr(now), repr(now - self.group_expiry), self._group_expiry_ms]
        await self._run(scripts.GROUP_ADD, shard, keys, [*args, int(external)], retry=True)
        if self.is_local(channel):
            await self._join(group, channel)
        elif not external:
            await self._send_control("group_add", group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        """Leave ``group``. For a channel of this process the local membership goes first and
        never fails; the record in Redis is removed now if Redis answers within
        ``retry_timeout``, else as soon as it is reachable again."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        if not self._at_home():
            return await self._on_home(lambda: self.group_discard(group, channel))
        shard = self._shard(group)
        if self.is_local(channel):
            self._leave(group, channel)
            if not self._pipes[shard].connected:
                self._defer_discard(shard, group, channel)
                return
            try:
                await self._remove_record(shard, group, channel)
            except LayerConnectionError:
                self._defer_discard(shard, group, channel)
            return
        await self._remove_record(shard, group, channel)
        if "!" in channel:
            await self._send_control("group_discard", group, channel)

    def _defer_discard(self, shard: int, group: str, channel: str) -> None:
        waiting = self._unrecorded.setdefault(shard, {})
        if len(waiting) >= MAX_UNRECORDED:  # the oldest go; group_expiry removes their records
            del waiting[next(iter(waiting))]
        waiting[(group, channel)] = None

    async def _send_control(self, op: str, group: str, channel: str) -> None:
        process = wire.process_of(channel)
        entry = wire.pack_control(time.time() + self.expiry, op, group, channel)
        await self._run(
            scripts.PUSH,
            self._shard(process),
            [wire.inbox_key(self.prefix, process)],
            [entry, CONTROL_CAPACITY, self._expiry_ms],
            retry=True,  # a control entry applied twice changes nothing
        )

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.require_valid_group_name(group)
        payload = self._codec.encode(message)
        if self.history:  # history configured: this group's policy, decided once (issue 13)
            policy = self._history_policies.get(group, UNDECIDED)
            if policy is UNDECIDED:
                policy = self.history_policy(group)
            if policy is not None:
                return await self._history_send(group, policy, payload)
        if not self._at_home():
            return await self._on_home(lambda: self._group_send(group, payload))
        await self._group_send(group, payload)

    async def _group_send(self, group: str, payload: bytes) -> None:
        now = time.time()
        sealed = self._codec.seal(payload)
        data = wire.pack_group_message(now + self.expiry, self._process_id_bytes, sealed)
        keys = [wire.group_key(self.prefix, group), wire.group_external_key(self.prefix, group)]
        receivers, external = await self._run(
            scripts.GROUP_SEND,
            self._shard(group),
            keys,
            [data, repr(now - self.group_expiry)],
            retry=False,
        )
        self.last_group_receivers = receivers
        self.counters.group_sent += 1
        if group in self._groups:
            self._fan_out(group, time.monotonic() + self.expiry, payload)
        if external:
            await self._push_external([member.decode() for member in external], sealed, now)

    async def _history_send(self, group: str, policy: HistoryPolicy, payload: bytes) -> None:
        if not self._at_home():
            return await self._on_home(lambda: self._histories.send(group, policy, payload))
        await self._histories.send(group, policy, payload)

    async def _push_external(self, channels: list[str], sealed: bytes, now: float) -> None:
        """Deliver a group message to plain-channel members: one push each, full ones dropped."""
        entry = wire.pack_list_entry(now + self.expiry, "", sealed)
        results = await asyncio.gather(
            *(
                self._run(
                    scripts.PUSH,
                    self._shard(channel),
                    [wire.channel_key(self.prefix, channel)],
                    [entry, self.get_capacity(channel), self._expiry_ms],
                    retry=False,
                )
                for channel in channels
            )
        )
        self.counters.dropped += sum(1 for pushed in results if not pushed)

    async def group_members(self, group: str) -> list[str]:
        """The channels whose membership of ``group`` has not lapsed, from Redis's record,
        without those of processes whose heartbeat lapsed (see ``liveness_timeout``)."""
        self.require_valid_group_name(group)
        if not self._at_home():
            return await self._on_home(lambda: self.group_members(group))
        cutoff = time.time() - self.group_expiry
        shard = self._shard(group)
        key = wire.group_key(self.prefix, group)
        members = [
            member.decode()
            for member in await self._execute(shard, "ZRANGEBYSCORE", key, f"({cutoff!r}", "+inf")
        ]
        processes = sorted({wire.process_of(m) for m in members if "!" in m})
        if not processes:
            return members
        assert self._liveness is not None
        try:
            live = await self._liveness.live(self._pipes[shard], processes)
        except LOST_CONNECTION as exc:
            raise self._unreachable(shard, exc) from exc
        kept = [m for m in members if "!" not in m or wire.process_of(m) in live]
        if len(kept) != len(members):
            gone = [m for m in members if "!" in m and wire.process_of(m) not in live]
            self._spawn(self._sweep_members(shard, key, gone))
        return kept

    async def _sweep_members(self, shard: int, key: str, members: list[str]) -> None:
        """Remove the records of members whose process has no liveness entry at all."""
        args: list[Any] = []
        for member in members:
            args += [member, wire.process_of(member)]
        await self._run(
            scripts.SWEEP_MEMBERS,
            shard,
            [key, wire.processes_key(self.prefix)],
            args,
            retry=True,
        )

    async def flush(self) -> None:
        """Delete every key under this layer's prefix on every shard, and all local state."""
        if not self._at_home():
            return await self._on_home(self.flush)
        self._home_loop()
        for shard in range(len(self.hosts)):
            cursor = b"0"
            while True:
                cursor, keys = await self._execute(
                    shard, "SCAN", cursor, "MATCH", f"{self.prefix}:*", "COUNT", 1000
                )
                if keys:
                    await self._execute(shard, "UNLINK", *keys)
                if cursor == b"0":
                    break
        self._local.clear()
        for group in list(self._groups):
            self._unsubscribe(group)
        self._groups.clear()
        self._unrecorded.clear()
        self._presence.clear()

    async def check(self) -> None:
        """One connection attempt per host, bounded by its connect timeout.

        Raises :class:`LayerConnectionError` naming the first host that cannot be reached or
        refuses the greeting; that host's connection is then retried in the background, and
        the process is reported ready (:mod:`roomcast.readiness`) once it answers.
        """
        if not self._at_home():
            return await self._on_home(self.check)
        self._home_loop()
        for shard, host in enumerate(self.hosts):
            try:
                link = await RespLink.open(host, name=f"roomcast:{self.prefix}:check")
                try:
                    async with asyncio.timeout(host.connect_timeout):
                        (pong,) = await link.request(resp.pack("PING"), 1)
                finally:
                    link.close()
                if isinstance(pong, BaseException):
                    raise pong
            except (*LOST_CONNECTION, RedisError) as exc:
                self.health.lost(shard, exc)
                self._pipes[shard].start()  # reconnects until Redis answers: then ready
                raise LayerConnectionError(
                    f"cannot reach Redis at {host.description}: {exc}"
                ) from exc

    def stats(self) -> dict[str, Any]:
        """What this layer holds and has seen (for tests, health pages and benchmarks)."""
        return {
            "local_groups": len(self._groups),
            "local_memberships": self._groups.count(),
            "local_channels": len(self._local),
            "queued_calls": sum(pipe.queued for pipe in self._pipes),
            **self._presence.stats(),
            "unrecorded_discards": sum(len(waiting) for waiting in self._unrecorded.values()),
            "outages": self.health.outages,
            "swept_processes": self._liveness.swept if self._liveness is not None else 0,
            **{f"history_{name}": value for name, value in vars(self._healer.stats).items()},
        }

    # History (issue 13; see roomcast.layers.redis.history) -------------------------------

    async def _read_history(
        self,
        group: str,
        policy: HistoryPolicy,
        since: StreamPosition | None,
        limit: int | None,
    ) -> HistoryResult:
        if not self._at_home():
            return await self._on_home(lambda: self._histories.history(group, policy, since, limit))
        return await self._histories.history(group, policy, since, limit)

    async def _history_position(self, group: str, policy: HistoryPolicy) -> StreamPosition:
        if not self._at_home():
            return await self._on_home(lambda: self._histories.position(group, policy))
        return await self._histories.position(group, policy)

    async def close(self) -> None:
        """Stop the readers and close the connections."""
        if self._home is not None and not self._home.is_closed() and not self._at_home():
            try:
                return await self._on_home(self.close)
            except RuntimeError:  # the home loop is not running any more
                pass
        if self._pipes:
            await self._presence.close()  # our entries go, and are announced, first
        if self._liveness is not None:
            await self._liveness.stop(unregister=True)  # gone: its records are ignored now
            self._liveness = None
        if self._inbox is not None:
            await self._inbox.stop()
            self._inbox = None
        for subscriber in self._subscribers.values():
            await subscriber.stop()
        self._subscribers.clear()
        for reader in self._plain.values():
            await reader.stop()
        self._plain.clear()
        for task in list(self._background):
            await cancel_and_wait(task)
        pipes, self._pipes = self._pipes, []
        if pipes:
            await asyncio.sleep(0)  # let a last ZREM of our liveness entry go out
        for pipe in pipes:
            pipe.close()
        self._home = None
        self._home_thread = None
        if self._health is not None:
            self._health.forget()

    # Presence (issue 18; :mod:`roomcast.layers.redis.presence`) ----------------------------

    async def _presence_add(self, group: str, channel: str, info: dict[str, Any]) -> None:
        if not self._at_home():
            return await self._on_home(lambda: self._presence_add(group, channel, info))
        await self._presence.add(group, channel, info)

    async def _presence_remove(self, group: str, channel: str) -> None:
        if not self._at_home():
            return await self._on_home(lambda: self._presence_remove(group, channel))
        await self._presence.remove(group, channel)

    async def _presence_read(self, group: str) -> dict[str, dict[str, Any]]:
        if not self._at_home():
            return await self._on_home(lambda: self._presence_read(group))
        return await self._presence.read(group)


def _packed(keys: list[str], args: list[Any]) -> tuple[int, bytes]:
    """A script call's ``numkeys keys... args...`` packed, and how many of them."""
    body = resp.bulk(b"%d" % len(keys)) + b"".join(
        [resp.bulk(arg if arg.__class__ is bytes else str(arg).encode()) for arg in (*keys, *args)]
    )
    return len(keys) + len(args) + 1, body
