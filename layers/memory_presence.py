"""The in-memory layer's presence: each group's entries in a dict, events to its members.

Entries are ``group -> {channel: info}``, in the order they were added. Events (for groups
matching ``CONFIG["presence"]``) are coalesced by :class:`~roomcast.layers.presence.PresenceEvents`
and handed to the group's members the way a ``group_send`` is, but never through the group's
history, and a member whose buffer is full misses them (counted in ``counters.dropped``).

Faults: everything lives in this process. A restart or a kill -9 loses every entry together
with every connection they described, so nothing lingers; a new process starts empty.
``flush()`` forgets the entries and the pending events. There is no connection to lose, hence
nothing to reconnect or fail over.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

from .presence import PresenceEvents, PresencePolicy


class MemoryPresence:
    """The presence entries of one in-memory layer, and its event coalescer."""

    def __init__(
        self,
        policy_for: Callable[[str], PresencePolicy | None],
        deliver: Callable[[str, list[dict[str, Any]]], Awaitable[None]],
        max_message_size: int,
    ) -> None:
        self._entries: dict[str, dict[str, dict[str, Any]]] = {}
        self.events = PresenceEvents(policy_for, deliver, max_message_size)

    def __len__(self) -> int:
        """The number of entries, over all groups."""
        return sum(len(entries) for entries in self._entries.values())

    def add(self, group: str, channel: str, info: dict[str, Any]) -> None:
        self._entries.setdefault(group, {})[channel] = info
        self.events.joined(group, channel, info)

    def remove(self, group: str, channel: str) -> None:
        entries = self._entries.get(group)
        if entries is None:
            return
        info = entries.pop(channel, None)
        if not entries:
            del self._entries[group]
        if info is not None:
            self.events.left(group, channel, info)

    def read(self, group: str) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self._entries.get(group, {}))

    def clear(self) -> None:
        self._entries.clear()
        self.events.clear()
