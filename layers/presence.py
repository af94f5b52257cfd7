"""Presence: who is in a group right now, across every process, and join/leave events.

The layer keeps, per group, one entry per connection that said it is there::

    await layer.presence_add("chat_lobby", channel, {"user": "42", "name": "Alice"})
    await layer.presence("chat_lobby")        # {channel: {"user": "42", "name": "Alice"}, ...}
    await layer.presence_stats("chat_lobby")  # PresenceStats(connections=3, users=2)
    await layer.presence_remove("chat_lobby", channel)

``info`` is a small dict of the application's own (a user id, a display name, a status): str
keys, msgpack-encodable values, at most :data:`MAX_INFO_SIZE` bytes encoded; anything else
raises :class:`InvalidPresenceInfo` or :class:`PresenceInfoTooLarge` before anything is
written. Its :data:`USER_KEY` (``"user"``), when present, must be a str or an int: it names the
user, so that :class:`PresenceStats` counts two tabs of one user as one user. Adding the same
channel again replaces its info.

An entry belongs to the process that added it: it lives as long as that process does (in
memory) or keeps heartbeating (Redis, see :mod:`roomcast.layers.redis.presence`).

**Events.** A group matching a pattern of ``CONFIG["presence"]`` (``{"chat_*": {"interval":
0.5}}``, matched as ``history`` and ``channel_capacity`` are) tells its *members* (the channels
of ``group_add``) who came and went, with two message types, each carrying every change of an
interval::

    {"type": "presence.join",  "group": "chat_lobby", "members": {channel: info, ...}}
    {"type": "presence.leave", "group": "chat_lobby", "members": {channel: info, ...}}

Each process coalesces the changes of its own entries (and of the dead processes it sweeps):
the first change after a quiet interval goes out at once (on the next event-loop turn, with
whatever else changed in that turn), later ones at most once per ``interval`` seconds (default
:data:`DEFAULT_INTERVAL`). So a reconnect storm of 1,000 clients that lasts ``T`` seconds gives
each member at most ``2 * (T / interval + 2)`` messages per process involved, not 2,000: one
``presence.leave`` (sent first) and one ``presence.join`` per flush, a batch being split only
when it would exceed the layer's ``max_message_size``. A channel that joined and left within
one interval appears in the leave only; a changed info is a join again.

Events are hints at most once, like every group message: a member that missed one (its buffer
was full, its process was reconnecting to Redis) is corrected by the next event about the same
channel or by reading :meth:`presence` again; applying them in order to a snapshot (join: set,
leave: delete) converges. Members of an events group must handle both types (the consumer
mixin :mod:`roomcast.consumers.presence` does); a consumer without handlers for them fails on
the first one, as for any message type it does not know. Events never enter a group's history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgpack

from .exceptions import LayerConfigError, LayerError

__all__ = [
    "DEFAULT_INTERVAL",
    "JOIN",
    "LEAVE",
    "MAX_INFO_SIZE",
    "USER_KEY",
    "InvalidPresenceInfo",
    "PresenceConfig",
    "PresenceEvents",
    "PresenceInfoTooLarge",
    "PresencePolicy",
    "PresenceStats",
    "check_info",
    "stats_of",
]

logger = logging.getLogger("roomcast.layers")

PresenceConfig: TypeAlias = "Mapping[Any, Mapping[str, Any]]"
"""``CONFIG["presence"]``: group-name pattern -> ``{"interval": seconds}`` (``{}``: defaults)."""

USER_KEY = "user"
"""The ``info`` key that names the user of a connection (a str or an int)."""
MAX_INFO_SIZE = 1024
"""The most bytes an ``info`` dict may take, msgpack-encoded."""
JOIN = "presence.join"
LEAVE = "presence.leave"
DEFAULT_INTERVAL = 1.0
MIN_INTERVAL = 0.05
MAX_INTERVAL = 60.0
_ENVELOPE = 128  # bytes an event message takes besides its members (type, group, headers)


class InvalidPresenceInfo(LayerError, TypeError):
    """``info`` is not a dict of str keys and msgpack-encodable values, or its ``user`` is
    neither a str nor an int."""


class PresenceInfoTooLarge(LayerError, ValueError):
    """``info`` is larger than :data:`MAX_INFO_SIZE` bytes once encoded."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_info(info: Any) -> tuple[dict[str, Any], bytes]:
    """``info`` validated: the layer's own copy of it and its msgpack encoding.

    The copy is decoded from the encoding, so a caller that changes its dict later changes
    nothing in the layer, and the memory layer holds exactly what Redis would give back.
    """
    if not isinstance(info, dict):
        raise InvalidPresenceInfo(
            f"presence info must be a dict such as {{'user': '42', 'name': 'Alice'}}, "
            f"not {type(info).__name__}"
        )
    for key in info:
        if not isinstance(key, str):
            raise InvalidPresenceInfo(f"presence info keys must be str, got {_short(key)}")
    user = info.get(USER_KEY)
    if USER_KEY in info and (isinstance(user, bool) or not isinstance(user, (str, int))):
        raise InvalidPresenceInfo(
            f"presence info {USER_KEY!r} must be a str or an int (it names the user), "
            f"got {_short(user)}"
        )
    try:
        data: bytes = msgpack.packb(info, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidPresenceInfo(f"presence info cannot be encoded with msgpack: {exc}") from exc
    if len(data) > MAX_INFO_SIZE:
        raise PresenceInfoTooLarge(
            f"presence info is {len(data)} bytes encoded; the limit is {MAX_INFO_SIZE} "
            f"(keep a user id and a name there, not a profile)"
        )
    return decode_info(data), data


def decode_info(data: bytes) -> dict[str, Any]:
    """An ``info`` dict from its encoding (raises ``ValueError`` for anything else)."""
    try:
        info = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"not an encoded presence info ({exc!r})") from exc
    if not isinstance(info, dict):
        raise ValueError(f"not an encoded presence info: {type(info).__name__}")
    return info


@dataclass(frozen=True, slots=True)
class PresenceStats:
    """What ``presence_stats`` answers: ``connections`` (entries) and ``users`` (distinct
    :data:`USER_KEY` values among them; entries without one count as connections only)."""

    connections: int
    users: int

    def as_dict(self) -> dict[str, int]:
        return {"connections": self.connections, "users": self.users}


def stats_of(entries: Mapping[str, Mapping[str, Any]]) -> PresenceStats:
    users = {info[USER_KEY] for info in entries.values() if USER_KEY in info}
    return PresenceStats(len(entries), len(users))


@dataclass(frozen=True, slots=True)
class PresencePolicy:
    """What one ``CONFIG["presence"]`` pattern asks for: events, at most every ``interval``."""

    interval: float = DEFAULT_INTERVAL

    @classmethod
    def from_config(cls, where: str, value: Any) -> PresencePolicy:
        """Validate one pattern's value (``where`` names it in the error)."""
        if not isinstance(value, Mapping):
            raise LayerConfigError(
                f"{where} must be a dict such as {{'interval': 0.5}} (or {{}} for the "
                f"defaults), got {_short(value)}"
            )
        unknown = sorted(str(key) for key in value if key != "interval")
        if unknown:
            raise LayerConfigError(f"{where}: unknown key {unknown[0]!r} (accepted: 'interval')")
        interval = value.get("interval", DEFAULT_INTERVAL)
        number = isinstance(interval, (int, float)) and not isinstance(interval, bool)
        if not number or not math.isfinite(interval):
            interval = None
        if interval is None or not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            raise LayerConfigError(
                f"{where}['interval'] must be a number of seconds from {MIN_INTERVAL:g} to "
                f"{MAX_INTERVAL:g}, got {_short(value.get('interval'))}"
            )
        return cls(float(interval))


# Events --------------------------------------------------------------------------------------


def event_messages(
    kind: str, group: str, members: Mapping[str, dict[str, Any]], max_size: int
) -> list[dict[str, Any]]:
    """The ``kind`` messages announcing ``members``: one, or several when one would be larger
    than ``max_size`` bytes encoded."""
    budget = max(max_size - _ENVELOPE - len(group.encode()), 1)
    messages: list[dict[str, Any]] = []
    chunk: dict[str, dict[str, Any]] = {}
    size = 0
    for channel, info in members.items():
        cost = len(channel) + 8 + len(msgpack.packb(info, use_bin_type=True))
        if chunk and size + cost > budget:
            messages.append({"type": kind, "group": group, "members": chunk})
            chunk, size = {}, 0
        chunk[channel] = info
        size += cost
    if chunk:
        messages.append({"type": kind, "group": group, "members": chunk})
    return messages


class _Pending:
    """One group's changes since its last flush, and its flush timer."""

    __slots__ = ("handle", "interval", "joined", "left")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.joined: dict[str, dict[str, Any]] = {}
        self.left: dict[str, dict[str, Any]] = {}
        self.handle: asyncio.Handle | None = None


Deliver: TypeAlias = Callable[[str, list[dict[str, Any]]], Awaitable[None]]


class PresenceEvents:
    """Coalesces one process's presence changes into ``presence.join``/``presence.leave``
    messages per group and interval (see the module), and hands them to ``deliver``.

    ``policy_for(group)`` says whether a group asked for events (and its interval); changes
    of other groups are dropped at once. A group's deliveries run one after the other, in
    order. Timers run on the loop that was running when the group's change was noted.
    """

    def __init__(
        self,
        policy_for: Callable[[str], PresencePolicy | None],
        deliver: Deliver,
        max_message_size: int,
    ) -> None:
        self._policy_for = policy_for
        self._deliver = deliver
        self._max_size = max_message_size
        self._pending: dict[str, _Pending] = {}
        self._cooling: dict[str, asyncio.TimerHandle] = {}  # flushed groups in their interval
        self._sending: dict[str, asyncio.Task[None]] = {}  # the last delivery of each group
        self.flushes = 0  # flushes made (each is at most one leave and one join, split by size)

    def joined(self, group: str, channel: str, info: dict[str, Any]) -> None:
        pending = self._changes(group)
        if pending is not None:
            pending.joined[channel] = info

    def left(self, group: str, channel: str, info: dict[str, Any]) -> None:
        pending = self._changes(group)
        if pending is not None:
            pending.joined.pop(channel, None)
            pending.left[channel] = info

    def many_joined(self, group: str, entries: Iterable[tuple[str, dict[str, Any]]]) -> None:
        pending = self._changes(group)
        if pending is not None:
            pending.joined.update(entries)

    def _changes(self, group: str) -> _Pending | None:
        pending = self._pending.get(group)
        if pending is not None:
            return pending
        policy = self._policy_for(group)
        if policy is None:
            return None
        pending = self._pending[group] = _Pending(policy.interval)
        if group not in self._cooling:  # quiet: go out on the next loop turn
            pending.handle = asyncio.get_running_loop().call_soon(self._flush, group)
        return pending

    def _flush(self, group: str) -> None:
        """Send what changed in ``group``, then keep it quiet for an interval."""
        pending = self._pending.pop(group, None)
        if pending is None:
            return
        messages = []
        if pending.left:
            messages += event_messages(LEAVE, group, pending.left, self._max_size)
        if pending.joined:
            messages += event_messages(JOIN, group, pending.joined, self._max_size)
        loop = asyncio.get_running_loop()
        self._cooling[group] = loop.call_later(pending.interval, self._cooled, group)
        if not messages:
            return
        self.flushes += 1
        previous = self._sending.get(group)
        task = loop.create_task(self._send(group, messages, previous))
        self._sending[group] = task
        task.add_done_callback(lambda done: self._sent(group, done))

    def _cooled(self, group: str) -> None:
        self._cooling.pop(group, None)
        if group in self._pending:
            self._flush(group)

    async def _send(
        self, group: str, messages: list[dict[str, Any]], previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            with contextlib.suppress(BaseException):
                await previous
        try:
            await self._deliver(group, messages)
        except asyncio.CancelledError:
            raise
        except LayerError as exc:  # at most once: a lost event is corrected by the next one
            logger.debug("presence events of group %r not delivered: %s", group, exc)
        except Exception:
            logger.exception("presence events of group %r not delivered", group)

    def _sent(self, group: str, task: asyncio.Task[None]) -> None:
        if self._sending.get(group) is task:
            del self._sending[group]

    def flush_now(self) -> None:
        """Send every group's pending changes at once (a closing layer's last word)."""
        for group, pending in list(self._pending.items()):
            if pending.handle is not None:
                pending.handle.cancel()
            cooling = self._cooling.pop(group, None)
            if cooling is not None:
                cooling.cancel()
            self._flush(group)

    async def drain(self) -> None:
        """Wait for the deliveries under way."""
        while self._sending:
            await asyncio.gather(*self._sending.values(), return_exceptions=True)

    def clear(self) -> None:
        """Forget pending changes and stop the timers (``flush()``, ``close()``)."""
        for pending in self._pending.values():
            if pending.handle is not None:
                pending.handle.cancel()
        for handle in self._cooling.values():
            handle.cancel()
        self._pending.clear()
        self._cooling.clear()

    def cancel(self) -> None:
        """:meth:`clear`, and cancel the deliveries under way."""
        self.clear()
        for task in self._sending.values():
            task.cancel()
        self._sending.clear()
