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
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from roomcast import metrics

from .exceptions import InvalidChannelName, InvalidGroupName, LayerConfigError
from .metrics import LayerMetrics
from .serializers import DEFAULT_MAX_MESSAGE_SIZE

MAX_NAME_LENGTH = 100
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
    ) -> None:
        _check_positive("expiry", expiry, allow_float=True)
        _check_positive("group_expiry", group_expiry, allow_float=True)
        _check_positive("capacity", capacity)
        _check_positive("max_message_size", max_message_size)
        self.expiry = float(expiry)
        self.group_expiry = float(group_expiry)
        self.capacity = capacity
        self.max_message_size = max_message_size
        self.channel_capacity = self._compile_capacities(channel_capacity or {})
        self.counters = LayerCounters()
        metrics.register(LayerMetrics(self), owner=self)  # read at scrape time (roomcast.metrics)

    @staticmethod
    def _compile_capacities(
        channel_capacity: Mapping[str | re.Pattern[str], int],
    ) -> list[tuple[re.Pattern[str], int]]:
        """Globs (``"http.*"``) or compiled regexes, first match wins, as in Channels."""
        if not isinstance(channel_capacity, Mapping):
            raise LayerConfigError("channel_capacity must be a dict of pattern -> capacity")
        compiled = []
        for pattern, value in channel_capacity.items():
            _check_positive(f"channel_capacity[{pattern!r}]", value)
            if isinstance(pattern, re.Pattern):
                compiled.append((pattern, value))
            elif isinstance(pattern, str):
                compiled.append((re.compile(fnmatch.translate(pattern)), value))
            else:
                raise LayerConfigError(
                    f"channel_capacity keys must be glob strings or compiled regexes, "
                    f"got {pattern!r}"
                )
        return compiled

    def get_capacity(self, channel: str) -> int:
        """The capacity of ``channel``: the first matching pattern's, else ``capacity``."""
        for pattern, value in self.channel_capacity:
            if pattern.match(channel):
                return value
        return self.capacity

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
        """Raise :class:`LayerConnectionError` if the layer cannot reach its server right now.

        Run once at start-up (see ``roomcast.consumers.startup``); backends without a server
        have nothing to check.
        """

    async def close(self) -> None:
        """Release connections and background tasks; the layer may not be used afterwards."""

    def local_group_counts(self) -> tuple[int, int] | None:
        """(groups with a member in this process, memberships) for the metrics gauges, or None
        when the backend keeps no process-local groups. Read at scrape time, maybe from another
        thread: answer without iterating a dict the event loop may be changing."""
        return None
