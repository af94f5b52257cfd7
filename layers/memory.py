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

History (``CONFIG["history"]``, see :mod:`roomcast.layers.history`): a history group's last
messages are kept here (:mod:`roomcast.layers.memory_history`), already stamped with their
position, so a member and ``group_history`` see the very same bytes. Epochs are random per
group record, so a new process (or a ``flush()``) starts new epochs and old positions resume
with ``recovered=False``.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from .base import UNDECIDED, BaseChannelLayer, HistoryConfig
from .exceptions import ChannelFull
from .history import HistoryPolicy, HistoryResult, StreamPosition, select_history
from .local import LocalChannels, LocalGroups, shareable, unpack
from .memory_history import MemoryHistories
from .serializers import DEFAULT_MAX_MESSAGE_SIZE, MessageCodec

RECEIVABLE_CACHE = 65536  # channel names whose check receive() remembers, at most


class InMemoryChannelLayer(BaseChannelLayer):
    """A channel layer inside one process. ``CONFIG`` takes the options of the base class."""

    extensions: ClassVar[list[str]] = ["groups", "flush", "history"]

    def __init__(
        self,
        *,
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: Mapping[str | re.Pattern[str], int] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
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
        self._codec = MessageCodec(max_message_size=max_message_size)
        self._channels = LocalChannels(self.get_capacity, self.counters)
        self._groups = LocalGroups(self.group_expiry)
        self._receivable: set[str] = set()  # names receive() has checked (a bounded cache)
        self._histories = MemoryHistories(self.group_expiry)

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

    async def close(self) -> None:
        await self.flush()

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
