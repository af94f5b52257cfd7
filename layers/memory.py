"""The in-memory channel layer: the embedded default, for one process.

Everything lives in this process: bounded per-channel buffers and group tables
(:mod:`roomcast.layers.local`). Messages are msgpack-encoded once per ``send``/``group_send`` and
decoded
per delivery (a group message whose values are all immutable is decoded once and each member
gets a shallow copy, which for such a message is a full one), so receivers never share a
mutable dict and the layer refuses exactly what the Redis layer refuses.

Semantics beyond :mod:`roomcast.layers.base`: a ``send`` and a ``group_send`` from one sender to one
channel also keep their order (both are appended to the same buffer at call time). Nothing
survives the process.

Introspection, with the shapes of Channels' ``InMemoryChannelLayer`` (tests and some apps read
them): ``layer.groups`` maps each group with live members to ``{channel: time joined}`` (in
``time.time()`` seconds, in joining order) and ``layer.channels`` maps each channel holding
undelivered messages to them (:class:`BufferedMessages`, read like Channels' queue:
``qsize()``, ``empty()``, ``full()``, ``maxsize``). Both are read-only views computed on each
access (a lapsed membership or an expired message is not shown); change the layer through its
methods (Channels' own tests ``del`` entries; that is refused here with ``TypeError``).

History (``CONFIG["history"]``, see :mod:`roomcast.layers.history`): a history group's last
messages are kept here (:mod:`roomcast.layers.memory_history`), already stamped with their
position, so a member and ``group_history`` see the very same bytes. Epochs are random per
group record, so a new process (or a ``flush()``) starts new epochs and old positions resume
with ``recovered=False``.

Presence (:mod:`roomcast.layers.presence`): entries live in this process
(:mod:`roomcast.layers.memory_presence`); events reach the group's members like a
``group_send`` that skips the history.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from .base import UNDECIDED, BaseChannelLayer, HistoryConfig
from .exceptions import ChannelFull
from .history import HistoryPolicy, HistoryResult, StreamPosition, select_history
from .local import LocalChannels, LocalGroups, shareable, unpack
from .memory_history import MemoryHistories
from .memory_presence import MemoryPresence
from .presence import PresenceConfig
from .serializers import DEFAULT_MAX_MESSAGE_SIZE, MessageCodec

RECEIVABLE_CACHE = 65536  # channel names whose check receive() remembers, at most
# The layer keeps time.monotonic(); introspection shows time.time(), as Channels stores it. One
# offset for the process, so that the same moment always reads as the same number.
_WALL_OFFSET = time.time() - time.monotonic()


class BufferedMessages(tuple[tuple[float, dict[str, Any]], ...]):
    """One channel's undelivered messages, oldest first, as ``(expires_at, message)`` pairs
    (``expires_at`` in ``time.time()`` seconds): a snapshot read like Channels' queue."""

    maxsize: int

    def __new__(
        cls, items: Iterator[tuple[float, dict[str, Any]]], maxsize: int
    ) -> BufferedMessages:
        snapshot = super().__new__(cls, items)
        snapshot.maxsize = maxsize
        return snapshot

    def qsize(self) -> int:
        return len(self)

    def empty(self) -> bool:
        return not self

    def full(self) -> bool:
        return len(self) >= self.maxsize


class _ChannelsView(Mapping[str, BufferedMessages]):
    """``layer.channels``: channel -> its undelivered messages (read-only, live)."""

    def __init__(self, layer: InMemoryChannelLayer) -> None:
        self._layer = layer

    def _buffered(self) -> dict[str, list[tuple[float, Any]]]:
        return self._layer._channels.buffered(time.monotonic())

    def __getitem__(self, channel: str) -> BufferedMessages:
        items = self._buffered()[channel]  # KeyError: nothing waits there
        decode = self._layer._codec.decode
        return BufferedMessages(
            ((expires + _WALL_OFFSET, unpack(payload, decode)) for expires, payload in items),
            self._layer.get_capacity(channel),
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._buffered())

    def __len__(self) -> int:
        return len(self._buffered())

    def __contains__(self, channel: object) -> bool:
        return channel in self._buffered()

    def __repr__(self) -> str:
        return f"<channels of {self._layer!r}: {sorted(self)}>"


class _GroupsView(Mapping[str, dict[str, float]]):
    """``layer.groups``: group -> {channel: time.time() it joined} (read-only, live)."""

    def __init__(self, layer: InMemoryChannelLayer) -> None:
        self._layer = layer

    def _joined(self, group: object) -> dict[str, float]:
        if not isinstance(group, str):
            return {}
        return self._layer._groups.joined(group, time.monotonic())

    def __getitem__(self, group: str) -> dict[str, float]:
        members = self._joined(group)
        if not members:
            raise KeyError(group)
        return {channel: joined + _WALL_OFFSET for channel, joined in members.items()}

    def __iter__(self) -> Iterator[str]:
        return iter([group for group in list(self._layer._groups) if self._joined(group)])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, group: object) -> bool:
        return bool(self._joined(group))

    def __repr__(self) -> str:
        return f"<groups of {self._layer!r}: {sorted(self)}>"


class InMemoryChannelLayer(BaseChannelLayer):
    """A channel layer inside one process. ``CONFIG`` takes the options of the base class."""

    extensions: ClassVar[list[str]] = ["groups", "flush", "history", "presence"]

    def __init__(
        self,
        *,
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: Mapping[str | re.Pattern[str], int] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        history: HistoryConfig | None = None,
        presence: PresenceConfig | None = None,
    ) -> None:
        super().__init__(
            expiry=expiry,
            group_expiry=group_expiry,
            capacity=capacity,
            channel_capacity=channel_capacity,
            max_message_size=max_message_size,
            history=history,
            presence=presence,
        )
        self._codec = MessageCodec(max_message_size=max_message_size)
        self._channels = LocalChannels(self.get_capacity, self.counters)
        self._groups = LocalGroups(self.group_expiry)
        self._receivable: set[str] = set()  # names receive() has checked (a bounded cache)
        self._histories = MemoryHistories(self.group_expiry)
        self._presence = MemoryPresence(
            self.presence_policy, self._deliver_presence, max_message_size
        )

    @property
    def channels(self) -> Mapping[str, BufferedMessages]:
        """Channel -> its undelivered messages, as Channels' ``channels`` (see the module)."""
        return _ChannelsView(self)

    @property
    def groups(self) -> Mapping[str, dict[str, float]]:
        """Group -> ``{channel: time.time() joined}``, as Channels' ``groups`` (see the module)."""
        return _GroupsView(self)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        self.require_valid_channel_name(channel)
        payload = self._codec.encode(message)
        now = time.monotonic()
        self._channels.sweep(now, self.expiry)
        if not self._channels.put(channel, now + self.expiry, payload, now):
            raise ChannelFull(f"channel {channel!r} is at capacity {self.get_capacity(channel)}")
        self.counters.sent += 1

    async def receive(self, channel: str) -> dict[str, Any]:
        if channel.__class__ is not str or channel not in self._receivable:
            self.require_valid_channel_name(channel, receive=True)
            if len(self._receivable) >= RECEIVABLE_CACHE:
                self._receivable.clear()
            self._receivable.add(channel)
        else:  # a name already checked: take a buffered message without waiting
            payload = self._channels.take(channel, time.monotonic())
            if payload is not None:
                return unpack(payload, self._codec.decode)
        payload = await self._channels.get(channel, time.monotonic)
        return unpack(payload, self._codec.decode)

    async def new_channel(self, prefix: str = "specific") -> str:
        name = f"{prefix}.inmemory!{secrets.token_hex(8)}"
        self.require_valid_channel_name(name)
        return name

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self._groups.add(group, channel, time.monotonic())

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self._groups.discard(group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.require_valid_group_name(group)
        payload = self._codec.encode(message)
        now = time.monotonic()
        if self.history:  # history configured: this group's policy, decided once (issue 13)
            policy = self._history_policies.get(group, UNDECIDED)
            if policy is UNDECIDED:
                policy = self.history_policy(group)
            if policy is not None:  # keep the message; members get it stamped
                payload = self._histories.append(group, policy, payload, now)
        expires = now + self.expiry
        members = self._groups.members(group, now)
        item = shareable(payload, self._codec.decode, len(members))
        dropped = self._channels.put_many(members, expires, item, now)
        self.counters.group_sent += 1
        self.counters.dropped += dropped

    async def flush(self) -> None:
        self._channels.clear()
        self._groups.clear()
        self._histories.clear()
        self._presence.clear()

    async def close(self) -> None:
        await self.flush()

    # Presence (issue 18) ------------------------------------------------------------------

    async def _presence_add(self, group: str, channel: str, info: dict[str, Any]) -> None:
        self._presence.add(group, channel, info)

    async def _presence_remove(self, group: str, channel: str) -> None:
        self._presence.remove(group, channel)

    async def _presence_read(self, group: str) -> dict[str, dict[str, Any]]:
        return self._presence.read(group)

    async def _deliver_presence(self, group: str, messages: list[dict[str, Any]]) -> None:
        """Hand presence events to ``group``'s members: a group_send without history."""
        for message in messages:
            payload = self._codec.encode(message)
            now = time.monotonic()
            members = self._groups.members(group, now)
            item = shareable(payload, self._codec.decode, len(members))
            self.counters.dropped += self._channels.put_many(members, now + self.expiry, item, now)

    # History (issue 13) -------------------------------------------------------------------

    async def _read_history(
        self,
        group: str,
        policy: HistoryPolicy,
        since: StreamPosition | None,
        limit: int | None,
    ) -> HistoryResult:
        position, entries = self._histories.read(group, policy, time.monotonic())
        chosen, recovered = select_history(entries, position, since, limit)
        messages = [self._codec.decode(payload) for payload in chosen]
        return HistoryResult(messages, position, recovered)

    async def _history_position(self, group: str, policy: HistoryPolicy) -> StreamPosition:
        return self._histories.position(group, policy, time.monotonic())

    def local_group_counts(self) -> tuple[int, int]:
        return self._groups.counts()
