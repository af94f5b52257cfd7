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

What is lost when, and in which order things arrive:

========================================  ===================================================
event                                     consequence
========================================  ===================================================
``send`` to a full channel                ``ChannelFull`` raised, nothing written. For a
                                          channel of another process "full" means that
                                          process's inbox holds ``capacity`` unread entries
                                          (as in channels_redis); a message that then finds
                                          its local buffer full is dropped and counted there.
``group_send``, member's buffer full      dropped for that member, ``counters.dropped`` += 1
message older than ``expiry``             never delivered (``counters.expired``); clocks of
                                          the processes are assumed to agree within seconds
process disconnected from Redis when a    that process misses the message (pub/sub keeps no
group message is published                backlog); it resubscribes from its own state on
                                          reconnect
Redis restarts (no persistence)           inbox and plain-channel entries not yet read are
                                          lost; memberships survive in each process's memory
                                          and subscriptions are restored; the sorted-set
                                          records of plain-channel members are lost
``group_add`` of another process's        takes effect when that process reads its inbox
channel                                   (normally well under a millisecond); group messages
                                          published before that miss the new member
cancelling ``receive()`` on a plain       nothing lost: an entry already popped is pushed
channel                                   back to the head of the list for the next receiver
a process dies                            what it had popped and not yet handed over is lost
========================================  ===================================================

Order: messages from one sender to one channel arrive in the order sent when the sender awaits
each call (the API's normal use): sends through the inbox or list (FIFO), group messages
through one pub/sub stream per process. A ``send`` and a ``group_send`` keep their relative
order when the receiver is in the sender's process (both are local appends); across processes
they travel different paths and may swap.

Cross-loop use (``async_to_sync`` from a thread without a running loop) is supported: Redis
clients are made per event loop, and local deliveries are handed to the loop that runs this
layer's readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from _thread import get_ident
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar, cast

from redis.asyncio import Redis

from ..base import BaseChannelLayer
from ..exceptions import (
    ChannelFull,
    InvalidChannelName,
    LayerConfigError,
    LayerConnectionError,
    UndecodableMessage,
)
from ..local import LocalChannels, LocalGroups, Payload, shareable, unpack
from ..serializers import DEFAULT_MAX_MESSAGE_SIZE, MessageCodec
from . import resp, scripts, wire
from .batching import PushBatcher
from .hosts import HostSpec, parse_hosts
from .inbox import InboxReader
from .reconnect import LOST_CONNECTION, Backoff, cancel_and_wait, logger
from .sharding import shard_for
from .subscriber import GroupSubscriber

T = TypeVar("T")
PREFIX_RE = re.compile(r"^[a-zA-Z\d\-_.:]+$")
CONTROL_CAPACITY = 1 << 30  # control entries are never refused
RECEIVABLE_CACHE = 65536  # local channel names whose check receive() remembers, at most
ROUTE_CACHE = 65536  # channel names whose route send() remembers, at most


class _Route(NamedTuple):
    """Where ``send`` puts a channel's messages, worked out once per channel name."""

    local: bool  # one of this process's channels: a local append
    shard: int
    name: bytes  # the channel name written into the entry ("" for a plain channel's list)
    head: bytes  # the PUSH script's packed ``numkeys key``
    tail: bytes  # its packed ``capacity ttl``
    capacity: int


class RedisChannelLayer(BaseChannelLayer):
    """Channels' layer API over Redis; accepts channels_redis's ``CONFIG``."""

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
        subscribe_timeout: float = 5.0,
    ) -> None:
        super().__init__(
            expiry=expiry,
            group_expiry=group_expiry,
            capacity=capacity,
            channel_capacity=channel_capacity,
            max_message_size=max_message_size,
        )
        if not isinstance(prefix, str) or not PREFIX_RE.match(prefix):
            raise LayerConfigError(
                f"prefix must be letters, digits and - _ . : only, got {prefix!r}"
            )
        if isinstance(symmetric_encryption_keys, (str, bytes)):
            raise LayerConfigError("symmetric_encryption_keys must be a list of keys")
        self.prefix = prefix
        self.hosts: list[HostSpec] = parse_hosts(hosts)
        self.subscribe_timeout = subscribe_timeout
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
        self._clients: dict[asyncio.AbstractEventLoop, list[Redis]] = {}
        self._batchers: dict[asyncio.AbstractEventLoop, list[PushBatcher]] = {}
        self._routes: dict[str, _Route] = {}  # valid channel names send() has seen (bounded)
        self._home: asyncio.AbstractEventLoop | None = None
        self._inbox: InboxReader | None = None
        self._subscribers: dict[int, GroupSubscriber] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._receivable: set[str] = set()  # local names receive() has checked (bounded)
        self._home_thread: int | None = None  # the thread of the home loop

    # Plumbing ----------------------------------------------------------------------------

    def _shard(self, name: str) -> int:
        return shard_for(name, len(self.hosts))

    def _client(self, shard: int) -> Redis:
        """This event loop's client for ``shard`` (redis-py connections are per loop)."""
        loop = asyncio.get_running_loop()
        clients = self._clients.get(loop)
        if clients is None:
            for stale in [other for other in self._clients if other.is_closed()]:
                del self._clients[stale]
            clients = self._clients[loop] = [host.client() for host in self.hosts]
        return clients[shard]

    async def _run(
        self, script: scripts.Script, shard: int, keys: list[str], args: list[Any]
    ) -> Any:
        with self._reaching(shard):
            return await script(self._client(shard), keys, args)

    def _batcher(self, shard: int) -> PushBatcher:
        """This event loop's send batcher for ``shard`` (see :mod:`.batching`)."""
        loop = asyncio.get_running_loop()
        batchers = self._batchers.get(loop)
        if batchers is None:
            for stale in [other for other in self._batchers if other.is_closed()]:
                del self._batchers[stale]
            batchers = self._batchers[loop] = [
                PushBatcher(host, scripts.PUSH) for host in self.hosts
            ]
        return batchers[shard]

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

    @contextlib.contextmanager
    def _reaching(self, shard: int) -> Iterator[None]:
        """Turn redis-py's connection failures into :class:`LayerConnectionError`."""
        try:
            yield
        except LOST_CONNECTION as exc:
            raise self._unreachable(shard, exc) from exc

    def _unreachable(self, shard: int, exc: BaseException) -> LayerConnectionError:
        return LayerConnectionError(f"cannot use Redis at {self.hosts[shard].description}: {exc}")

    def is_local(self, channel: str) -> bool:
        """True for the channels this instance's ``new_channel()`` made.

        Valid names hold at most one ``!``, so ``.<process id>!`` inside the name means the
        head ends with our id.
        """
        return self._local_marker in channel

    def _home_loop(self) -> asyncio.AbstractEventLoop:
        """The loop that runs this process's readers; started on first need."""
        home = self._home
        if home is None or home.is_closed():
            home = self._home = asyncio.get_running_loop()
            self._home_thread = get_ident()
            inbox_shard = self._shard(self.process_id)
            self._inbox = InboxReader(
                self.hosts[inbox_shard],
                wire.inbox_key(self.prefix, self.process_id),
                self._on_inbox_entry,
                name=self.process_id,
            )
            self._inbox.start()
            wanted = {wire.group_key(self.prefix, group) for group in self._groups}
            self._subscribers = {}
            for channel in wanted:  # a new loop: restore subscriptions from local state
                self._spawn(self._subscriber(self._shard(self._group_of(channel))).add(channel))
        return home

    def _at_home(self) -> bool:
        """True when the running loop is the one that runs this layer's readers."""
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
            except Exception:
                logger.exception("roomcast layer background task failed")

        task = asyncio.get_running_loop().create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _subscriber(self, shard: int) -> GroupSubscriber:
        subscriber = self._subscribers.get(shard)
        if subscriber is None:
            subscriber = self._subscribers[shard] = GroupSubscriber(
                self.hosts[shard], self._on_group_message, name=f"{self.process_id}/{shard}"
            )
            subscriber.start()
        return subscriber

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
            self._spawn(subscriber.remove(wire.group_key(self.prefix, group)))

    async def _join(self, group: str, channel: str) -> None:
        self._groups.add(group, channel, time.monotonic())
        key = wire.group_key(self.prefix, group)
        try:
            await asyncio.wait_for(
                self._subscriber(self._shard(group)).add(key), self.subscribe_timeout
            )
        except TimeoutError:
            raise LayerConnectionError(
                f"Redis did not confirm the subscription to group {group!r} within "
                f"{self.subscribe_timeout} s; the membership stands and the subscription "
                f"will be made when Redis answers"
            ) from None

    async def _leave(self, group: str, channel: str) -> None:
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
            self.counters.expired += 1
            return
        payload = self._unseal(sealed)
        if payload is not None:
            self._fan_out(self._group_of(pubsub_channel), time.monotonic() + remaining, payload)

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
            self._spawn(self._leave(group, channel))

    def _unseal(self, sealed: bytes) -> bytes | None:
        try:
            return self._codec.unseal(sealed)
        except Exception as exc:  # cryptography's InvalidToken, or corrupt bytes
            self.counters.rejected += 1
            logger.warning("discarded a message that could not be decrypted (%r)", exc)
            return None

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
        try:  # (inline rather than self._reaching: this is the hot path)
            pushed = await self._batcher(route.shard).call_packed(5, body)
        except LOST_CONNECTION as exc:
            raise self._unreachable(route.shard, exc) from exc
        if not pushed:
            raise ChannelFull(f"channel {channel!r} is at capacity {route.capacity}")
        self.counters.sent += 1

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
        return await self._receive_plain(channel)

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
        key, shard = wire.channel_key(self.prefix, channel), self._shard(channel)
        backoff = Backoff(f"receive({channel!r})")
        while True:
            try:
                popped = await self._pop(shard, key)
            except LOST_CONNECTION as exc:
                await backoff.failed(exc)
                continue
            backoff.succeeded()
            if popped is None:
                continue
            try:
                entry = wire.unpack_list_entry(popped[1])
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

    async def _pop(self, shard: int, key: str) -> tuple[bytes, bytes] | None:
        """BLPOP that loses nothing when its caller is cancelled.

        Redis may already have handed us the entry when the cancellation arrives; the pop is
        then left to finish and its entry pushed back to the head of the list, so the next
        receiver gets it, still first in line.
        """
        client = self._client(shard)
        pop = asyncio.ensure_future(client.blpop([key], timeout=2))
        try:
            return cast("tuple[bytes, bytes] | None", await asyncio.shield(pop))
        except asyncio.CancelledError:

            def give_back(done: asyncio.Future[Any]) -> None:
                if not done.cancelled() and done.exception() is None and done.result():
                    self._spawn(client.lpush(key, done.result()[1]))

            pop.add_done_callback(give_back)
            raise

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        now = time.time()
        external = "!" not in channel
        keys = [wire.group_key(self.prefix, group), wire.group_external_key(self.prefix, group)]
        args = [channel, now, now - self.group_expiry, self._group_expiry_ms, int(external)]
        await self._run(scripts.GROUP_ADD, self._shard(group), keys, args)
        if self.is_local(channel):
            await self._on_home(lambda: self._join(group, channel))
        elif not external:
            await self._send_control("group_add", group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        keys = [wire.group_key(self.prefix, group), wire.group_external_key(self.prefix, group)]
        await self._run(scripts.GROUP_DISCARD, self._shard(group), keys, [channel])
        if self.is_local(channel):
            await self._on_home(lambda: self._leave(group, channel))
        elif "!" in channel:
            await self._send_control("group_discard", group, channel)

    async def _send_control(self, op: str, group: str, channel: str) -> None:
        process = wire.process_of(channel)
        entry = wire.pack_control(time.time() + self.expiry, op, group, channel)
        await self._run(
            scripts.PUSH,
            self._shard(process),
            [wire.inbox_key(self.prefix, process)],
            [entry, CONTROL_CAPACITY, self._expiry_ms],
        )

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.require_valid_group_name(group)
        payload = self._codec.encode(message)
        now = time.time()
        sealed = self._codec.seal(payload)
        data = wire.pack_group_message(now + self.expiry, self._process_id_bytes, sealed)
        keys = [wire.group_key(self.prefix, group), wire.group_external_key(self.prefix, group)]
        _, external = await self._run(
            scripts.GROUP_SEND, self._shard(group), keys, [data, now - self.group_expiry]
        )
        self.counters.group_sent += 1
        if group in self._groups:
            expires = time.monotonic() + self.expiry

            async def fan_out() -> None:
                self._fan_out(group, expires, payload)

            if self._at_home():
                self._fan_out(group, expires, payload)
            else:
                await self._on_home(fan_out)
        if external:
            await self._push_external([member.decode() for member in external], sealed, now)

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
                )
                for channel in channels
            )
        )
        self.counters.dropped += sum(1 for pushed in results if not pushed)

    async def group_members(self, group: str) -> list[str]:
        """The channels whose membership of ``group`` has not lapsed, from Redis's record."""
        self.require_valid_group_name(group)
        cutoff = time.time() - self.group_expiry
        shard = self._shard(group)
        with self._reaching(shard):
            key = wire.group_key(self.prefix, group)
            members = cast(
                "list[bytes]", await self._client(shard).zrangebyscore(key, f"({cutoff}", "+inf")
            )
        return [member.decode() for member in members]

    async def flush(self) -> None:
        """Delete every key under this layer's prefix on every shard, and all local state."""
        for shard in range(len(self.hosts)):
            client = self._client(shard)
            with self._reaching(shard):
                batch: list[bytes] = []
                async for key in client.scan_iter(match=f"{self.prefix}:*", count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        await client.unlink(*batch)
                        batch.clear()
                if batch:
                    await client.unlink(*batch)
        self._local.clear()
        for group in list(self._groups):
            self._unsubscribe(group)
        self._groups.clear()

    async def close(self) -> None:
        """Stop the readers and close this loop's connections."""
        if self._inbox is not None:
            await self._inbox.stop()
            self._inbox = None
        for subscriber in self._subscribers.values():
            await subscriber.stop()
        self._subscribers.clear()
        for task in list(self._background):
            await cancel_and_wait(task)
        self._home = None
        self._home_thread = None
        loop = asyncio.get_running_loop()
        for client in self._clients.pop(loop, []):
            await client.aclose()
        self._clients.clear()
        for batcher in self._batchers.pop(loop, []):
            batcher.close()
        self._batchers.clear()
