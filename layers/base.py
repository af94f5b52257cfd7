"""The channel layer contract that every roomcast backend fills in.

It is Django Channels' layer API, so a Channels project can name a roomcast layer as its
``BACKEND``: ``send``, ``receive``, ``new_channel``, ``group_add``, ``group_discard``,
``group_send``, ``flush``, ``close`` and ``extensions = ["groups", "flush"]``.

Semantics that every backend keeps (tested for each in ``tests/layers/test_contract.py``):

* **At most once.** A message is delivered to a channel once or not at all; nothing is
  retried behind the caller's back.
* **FIFO per (sender, channel).** Messages one sender sends to one channel with ``send`` arrive
  in the order sent; so do the ``group_send`` messages one sender sends to one group. (Whether a
  ``send`` and a ``group_send`` keep their relative order depends on the backend; see its
  docstring.)
* **Capacity.** A channel holds at most ``capacity`` undelivered messages (``channel_capacity``
  overrides it per name pattern). ``send`` to a full channel raises :class:`ChannelFull`;
  ``group_send`` never raises for full members: it drops the message for them and counts the
  drop in ``layer.counters.dropped``.
* **Expiry.** A message not received within ``expiry`` seconds is never delivered.
  A membership not renewed (by another ``group_add``) within ``group_expiry`` seconds lapses.
* **Names.** Channel names match ``^[a-zA-Z\\d\\-_.]+(![\\d\\w\\-_.]*)?$``, group names
  ``^[a-zA-Z\\d\\-_.]+$``, both shorter than 100 characters; anything else raises
  :class:`InvalidChannelName` / :class:`InvalidGroupName` (``TypeError`` subclasses).
* **Messages** are dicts with str keys and a str ``type``, encodable by msgpack and no larger
  than ``max_message_size`` once encoded; anything else raises before anything is sent.
* **History** (backends listing ``"history"`` in ``extensions``): groups matching a pattern of
  ``history`` (``{"chat_*": {"size": 500, "ttl": 3600}}``, matched as ``channel_capacity`` is)
  keep their last messages; each copy carries its position under
  :data:`~roomcast.layers.history.POSITION_KEY`, and ``group_history``/``group_position`` read
  them back (see :mod:`roomcast.layers.history` and ``docs/history.md``). Whether a group has
  history is decided once per group name and remembered: groups without it cost what they
  cost without the option.
* **Presence** (backends listing ``"presence"`` in ``extensions``; both of ours do):
  ``presence_add(group, channel, info)``, ``presence_remove(group, channel)``,
  ``presence(group)`` and ``presence_stats(group)`` keep who is in a group, cluster-wide on a
  shared backend; groups matching a pattern of ``presence`` (``{"chat_*": {"interval": 0.5}}``)
  also send their members coalesced ``presence.join``/``presence.leave`` messages (see
  :mod:`roomcast.layers.presence` and ``docs/presence.md``). The base class validates the
  arguments and answers ``presence_stats``; a backend without presence raises
  ``NotImplementedError`` naming itself: presence cannot be faked on top of the other calls.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias, TypeVar

from roomcast import metrics

from .exceptions import HistoryNotEnabled, InvalidChannelName, InvalidGroupName, LayerConfigError
from .history import HistoryPolicy, HistoryResult, StreamPosition, check_limit, check_since
from .metrics import LayerMetrics
from .presence import PresenceConfig, PresencePolicy, PresenceStats, check_info, stats_of
from .serializers import DEFAULT_MAX_MESSAGE_SIZE

V = TypeVar("V")
HistoryConfig: TypeAlias = Mapping[str | re.Pattern[str], Mapping[str, Any]]
"""``CONFIG["history"]``: group-name pattern -> ``{"size": N, "ttl": seconds}``."""

MAX_NAME_LENGTH = 100
HISTORY_CACHE = 65536  # group names whose history policy is remembered, at most
UNDECIDED: Any = object()  # a group whose history policy is not yet in the cache
CHANNEL_NAME_RE = re.compile(r"^[a-zA-Z\d\-_.]+(![\d\w\-_.]*)?$")
GROUP_NAME_RE = re.compile(r"^[a-zA-Z\d\-_.]+$")


@dataclass
class LayerCounters:
    """What a layer instance has done since it was made; cheap to keep, read by layer-bench."""

    sent: int = 0
    group_sent: int = 0
    delivered: int = 0
    dropped: int = 0
    expired: int = 0
    rejected: int = 0  # arrived but undecodable: wrong encryption key, corrupt bytes


def _check_positive(name: str, value: Any, *, allow_float: bool = False) -> None:
    ok_type = isinstance(value, int) or (allow_float and isinstance(value, float))
    if isinstance(value, bool) or not ok_type or value <= 0:
        kind = "a positive number" if allow_float else "a positive int"
        raise LayerConfigError(f"{name} must be {kind}, got {value!r}")


def compile_patterns(
    option: str, table: Any, what: str, convert: Callable[[str, Any], V]
) -> list[tuple[re.Pattern[str], V]]:
    """A name-pattern option (``channel_capacity``, ``history``) as ``(regex, value)`` pairs.

    Keys are globs (``"http.*"``) or compiled regexes, matched from the start of the name, first
    match wins, as in Channels. ``convert(where, value)`` validates each value (``where`` names
    it, e.g. ``history['chat_*']``) and returns what is kept.
    """
    if not isinstance(table, Mapping):
        raise LayerConfigError(f"{option} must be a dict of pattern -> {what}")
    compiled = []
    for pattern, value in table.items():
        kept = convert(f"{option}[{pattern!r}]", value)
        if isinstance(pattern, re.Pattern):
            compiled.append((pattern, kept))
        elif isinstance(pattern, str):
            compiled.append((re.compile(fnmatch.translate(pattern)), kept))
        else:
            raise LayerConfigError(
                f"{option} keys must be glob strings or compiled regexes, got {pattern!r}"
            )
    return compiled


def first_match(table: list[tuple[re.Pattern[str], V]], name: str) -> V | None:
    """The value of the first pattern of ``table`` that matches ``name``, else None."""
    for pattern, value in table:
        if pattern.match(name):
            return value
    return None


def _positive_int(where: str, value: Any) -> int:
    _check_positive(where, value)
    return int(value)


def _describe(name: Any) -> str:
    text = repr(name)
    return text if len(text) <= 60 else text[:57] + "..."


class BaseChannelLayer:
    """Options, name rules and capacities shared by every backend."""

    extensions: ClassVar[list[str]] = ["groups", "flush"]
    MAX_NAME_LENGTH: ClassVar[int] = MAX_NAME_LENGTH

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
        _check_positive("expiry", expiry, allow_float=True)
        _check_positive("group_expiry", group_expiry, allow_float=True)
        _check_positive("capacity", capacity)
        _check_positive("max_message_size", max_message_size)
        self.expiry = float(expiry)
        self.group_expiry = float(group_expiry)
        self.capacity = capacity
        self.max_message_size = max_message_size
        self.channel_capacity = compile_patterns(
            "channel_capacity", channel_capacity or {}, "capacity", _positive_int
        )
        self.history = compile_patterns(
            "history",
            {} if history is None else history,
            "{'size': N, 'ttl': seconds}",
            HistoryPolicy.from_config,
        )
        self.configure_presence(presence)
        self._history_policies: dict[str, HistoryPolicy | None] = {}
        self.counters = LayerCounters()
        metrics.register(LayerMetrics(self), owner=self)  # read at scrape time (roomcast.metrics)

    def get_capacity(self, channel: str) -> int:
        """The capacity of ``channel``: the first matching pattern's, else ``capacity``."""
        capacity = first_match(self.channel_capacity, channel)
        return self.capacity if capacity is None else capacity

    # History (issue 13) -------------------------------------------------------------------

    def history_policy(self, group: str) -> HistoryPolicy | None:
        """What ``group`` keeps: the first matching ``history`` pattern's policy, else None.

        Worked out once per group name and remembered (a bounded cache), so ``group_send``
        pays one dict lookup for it, and nothing at all when ``history`` is empty.
        """
        policies = self._history_policies
        try:
            return policies[group]
        except KeyError:
            pass
        policy = first_match(self.history, group)
        if len(policies) >= HISTORY_CACHE:
            policies.clear()
        policies[group] = policy
        return policy

    def _require_history(self, group: str) -> HistoryPolicy:
        self.require_valid_group_name(group)
        policy = self.history_policy(group)
        if policy is None:
            raise HistoryNotEnabled(
                f"group {group!r} keeps no history: no pattern of the layer's "
                f"CONFIG['history'] matches it"
            )
        return policy

    async def group_history(
        self, group: str, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryResult:
        """The messages of ``group`` after ``since``, its current position, and whether the
        answer is complete (see :class:`~roomcast.layers.history.HistoryResult` and
        :func:`~roomcast.layers.history.select_history` for the exact rules).

        ``limit`` (None: no limit) keeps the newest ``limit`` of them. Raises
        :class:`HistoryNotEnabled` for a group without history, :class:`InvalidPosition` for a
        ``since`` that is not a :class:`StreamPosition`.
        """
        policy = self._require_history(group)
        return await self._read_history(group, policy, check_since(since), check_limit(limit))

    async def group_position(self, group: str) -> StreamPosition:
        """The current position of ``group``: that of its last message (offset 0 before any).

        Raises :class:`HistoryNotEnabled` for a group without history.
        """
        return await self._history_position(group, self._require_history(group))

    async def _read_history(
        self,
        group: str,
        policy: HistoryPolicy,
        since: StreamPosition | None,
        limit: int | None,
    ) -> HistoryResult:
        """Filled in by backends that keep history (arguments already checked)."""
        raise NotImplementedError

    async def _history_position(self, group: str, policy: HistoryPolicy) -> StreamPosition:
        """Filled in by backends that keep history (arguments already checked)."""
        raise NotImplementedError

    # Presence (issue 18) -----------------------------------------------------------------

    def configure_presence(self, presence: PresenceConfig | None) -> None:
        """Take ``CONFIG["presence"]``: group-name pattern -> ``{"interval": seconds}``."""
        self.presence_patterns = compile_patterns(
            "presence",
            {} if presence is None else presence,
            "{'interval': seconds}",
            PresencePolicy.from_config,
        )
        self._presence_policies: dict[str, PresencePolicy | None] = {}

    def presence_policy(self, group: str) -> PresencePolicy | None:
        """Whether ``group`` sends presence events, and how often: the first matching
        ``presence`` pattern's policy, else None (decided once per name, as history is)."""
        policies = self._presence_policies
        try:
            return policies[group]
        except KeyError:
            pass
        policy = first_match(self.presence_patterns, group) if self.presence_patterns else None
        if len(policies) >= HISTORY_CACHE:
            policies.clear()
        policies[group] = policy
        return policy

    async def presence_add(self, group: str, channel: str, info: dict[str, Any]) -> None:
        """Say that ``channel`` is in ``group`` with ``info`` (replacing its earlier info).

        Raises :class:`InvalidGroupName`/:class:`InvalidChannelName` for bad names,
        :class:`~roomcast.layers.presence.InvalidPresenceInfo` when ``info`` is not a dict of
        str keys and msgpack-encodable values, and
        :class:`~roomcast.layers.presence.PresenceInfoTooLarge` over
        :data:`~roomcast.layers.presence.MAX_INFO_SIZE` bytes; nothing is written then.
        """
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        kept, _ = check_info(info)
        await self._presence_add(group, channel, kept)

    async def presence_remove(self, group: str, channel: str) -> None:
        """Say that ``channel`` left ``group``; a channel that was not there is a no-op."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._presence_remove(group, channel)

    async def presence(self, group: str) -> dict[str, dict[str, Any]]:
        """``{channel: info}`` of every live entry of ``group``; each call gets its own copy."""
        self.require_valid_group_name(group)
        return await self._presence_read(group)

    async def presence_stats(self, group: str) -> PresenceStats:
        """How many connections are in ``group``, and how many distinct users (the
        :data:`~roomcast.layers.presence.USER_KEY` of their info)."""
        return stats_of(await self.presence(group))

    async def _presence_add(self, group: str, channel: str, info: dict[str, Any]) -> None:
        """Filled in by backends with presence (arguments already checked; ``info`` is the
        layer's own copy)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no presence")

    async def _presence_remove(self, group: str, channel: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} keeps no presence")

    async def _presence_read(self, group: str) -> dict[str, dict[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} keeps no presence")

    # Name rules -------------------------------------------------------------------------

    def require_valid_channel_name(self, name: Any, receive: bool = False) -> bool:
        """Raise :class:`InvalidChannelName` saying which rule ``name`` breaks."""
        if not isinstance(name, str):
            raise InvalidChannelName(f"channel name must be a str, not {type(name).__name__}")
        if len(name) >= MAX_NAME_LENGTH:
            raise InvalidChannelName(
                f"channel name {_describe(name)} is {len(name)} characters; "
                f"the limit is {MAX_NAME_LENGTH - 1}"
            )
        if not CHANNEL_NAME_RE.match(name):
            raise InvalidChannelName(
                f"channel name {_describe(name)} may contain only ASCII letters, digits, "
                f"hyphens, underscores and periods, with at most one '!' before a suffix"
            )
        return True

    def require_valid_group_name(self, name: Any) -> bool:
        """Raise :class:`InvalidGroupName` saying which rule ``name`` breaks."""
        if not isinstance(name, str):
            raise InvalidGroupName(f"group name must be a str, not {type(name).__name__}")
        if len(name) >= MAX_NAME_LENGTH:
            raise InvalidGroupName(
                f"group name {_describe(name)} is {len(name)} characters; "
                f"the limit is {MAX_NAME_LENGTH - 1}"
            )
        if not GROUP_NAME_RE.match(name):
            raise InvalidGroupName(
                f"group name {_describe(name)} may contain only ASCII letters, digits, "
                f"hyphens, underscores and periods"
            )
        return True

    # Channels' deprecated spellings of the same checks (Channels 4.2 deprecated them), kept for
    # code written against its base class: they warn, then check exactly as the new names do.

    def valid_channel_name(self, channel_name: Any, receive: bool = False) -> bool:
        """Deprecated: use :meth:`require_valid_channel_name` (``DeprecationWarning``)."""
        warnings.warn(
            "valid_channel_name is deprecated, use require_valid_channel_name instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.require_valid_channel_name(channel_name)

    def valid_group_name(self, group_name: Any) -> bool:
        """Deprecated: use :meth:`require_valid_group_name` (``DeprecationWarning``)."""
        warnings.warn(
            "valid_group_name is deprecated, use require_valid_group_name instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.require_valid_group_name(group_name)

    def valid_channel_names(self, names: list[str], receive: bool = False) -> bool:
        if not isinstance(names, list):
            raise InvalidChannelName("channel names must be given as a list")
        for name in names:
            self.require_valid_channel_name(name, receive)
        return True

    @staticmethod
    def non_local_name(name: str) -> str:
        """The part of a process-specific name up to and including ``!``."""
        head, bang, _ = name.partition("!")
        return head + bang

    # The contract (filled in by each backend) ------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        raise NotImplementedError

    async def receive(self, channel: str) -> dict[str, Any]:
        raise NotImplementedError

    async def new_channel(self, prefix: str = "specific") -> str:
        raise NotImplementedError

    async def group_add(self, group: str, channel: str) -> None:
        raise NotImplementedError

    async def group_discard(self, group: str, channel: str) -> None:
        raise NotImplementedError

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        raise NotImplementedError

    async def flush(self) -> None:
        raise NotImplementedError

    async def check(self) -> None:
        """Readiness: raise :class:`~roomcast.layers.exceptions.LayerConnectionError` if the
        layer's broker cannot be reached now (one attempt, bounded by the connect timeout).

        A no-op for layers without a broker (in memory). Not part of Channels' API: code that
        must work with any Channels layer calls it only if present. ProtocolTypeRouter runs it
        at start-up (see ``roomcast.consumers.startup``).
        """

    async def close(self) -> None:
        """Release connections and background tasks; the layer may not be used afterwards."""

    def local_group_counts(self) -> tuple[int, int] | None:
        """(groups with a member in this process, memberships) for the metrics gauges, or None
        when the backend keeps no process-local groups. Read at scrape time, maybe from another
        thread: answer without iterating a dict the event loop may be changing."""
        return None
