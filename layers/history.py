"""Resumable groups: the vocabulary of group history (positions, policies, answers).

A group that matches a pattern of ``CONFIG["history"]`` keeps its last messages::

    CONFIG = {"history": {"chat_*": {"size": 500, "ttl": 3600}}}

Every ``group_send`` to such a group gets a :class:`StreamPosition`: the group's ``epoch``
(a random token that changes whenever the history was lost, so positions from before the loss
are never mistaken for positions after it) and an ``offset`` (1 for the first message of an
epoch, then one more per message). Every delivered copy, and every copy ``group_history``
returns, carries its group and position under the reserved key :data:`POSITION_KEY` as one
string, ``"<group>:<epoch>:<offset>"`` (a str, so that messages stay msgpack- and
JSON-friendly and a fan-out can still share one decoded copy); :func:`message_position` reads
it.

The backends (:mod:`roomcast.layers.memory`; the Redis layer in its own half of issue 13) keep
the messages; this module holds what they share: validation of the configuration and of
positions, the stamp on the encoded message, and :func:`select_history`, the one definition of
which messages a ``group_history`` answer holds and when it is ``recovered``. The full picture,
with the loss/ordering table, is ``docs/history.md``.
"""

from __future__ import annotations

import bisect
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import msgpack

from .exceptions import InvalidPosition, LayerConfigError

__all__ = [
    "MAX_HISTORY_SIZE",
    "MAX_HISTORY_TTL",
    "POSITION_KEY",
    "HistoryPolicy",
    "HistoryResult",
    "MessagePosition",
    "StreamPosition",
    "message_position",
    "new_epoch",
    "select_history",
    "stamp",
    "stamp_encoded",
    "stamp_payload",
    "without_position",
]

T = TypeVar("T")

POSITION_KEY = "__roomcast_position__"
"""The reserved message key under which every copy of a history group's message carries
``"<group>:<epoch>:<offset>"``. Do not put it in messages of your own: a history group's
``group_send`` overwrites it, and a group without history passes it on untouched."""

MAX_HISTORY_SIZE = 10_000
"""The largest ``size`` a history pattern may ask for: beyond that a reconnecting client is
not resuming, it is loading an archive (keep one in a database)."""

MAX_HISTORY_TTL = 30 * 86400.0
"""The longest ``ttl`` (seconds) a history pattern may ask for: 30 days."""

MAX_OFFSET = 2**63 - 1  # what Redis INCR can count to
MAX_EPOCH_LENGTH = 64
_EPOCH_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_EPOCH_LENGTH}}}")
_OFFSET_RE = re.compile(r"0|[1-9][0-9]{0,18}")
_MAX_TEXT = 200  # longest position or stamp text looked at (a group name is < 100)
_PACKED_KEY: bytes = msgpack.packb(POSITION_KEY)
_FIXMAP_HEADERS = [bytes((0x80 | count,)) for count in range(16)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def new_epoch() -> str:
    """A fresh random epoch: 12 URL-safe characters (72 bits)."""
    return secrets.token_urlsafe(9)


# Positions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a message stands in its group's history: ``(epoch, offset)``.

    Frozen and hashable. Its text form is ``"<epoch>:<offset>"`` (``str(position)``; what a
    client keeps and sends back in ``?since=``), its dict form ``{"epoch": ..., "offset": ...}``
    (:meth:`as_dict`); :meth:`parse` reads either (and ``[epoch, offset]``). An epoch is 1 to 64
    ASCII letters, digits, ``-`` or ``_``; an offset an int from 0 to 2**63 - 1 (0: before the
    first message of the epoch). Anything else raises :class:`InvalidPosition`.

    Positions of one epoch compare by offset; positions of different epochs do not compare at
    all (the history in between was lost), so this class defines no ordering.
    """

    epoch: str
    offset: int

    def __post_init__(self) -> None:
        if not isinstance(self.epoch, str) or not _EPOCH_RE.fullmatch(self.epoch):
            raise InvalidPosition(
                f"epoch must be 1 to {MAX_EPOCH_LENGTH} ASCII letters, digits, '-' or '_', "
                f"got {_short(self.epoch)}"
            )
        offset = self.offset
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
            raise InvalidPosition(
                f"offset must be an int from 0 to {MAX_OFFSET}, got {_short(self.offset)}"
            )

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"

    def as_dict(self) -> dict[str, Any]:
        """``{"epoch": ..., "offset": ...}``: JSON and msgpack carry it as is."""
        return {"epoch": self.epoch, "offset": self.offset}

    @classmethod
    def parse(cls, value: Any) -> StreamPosition:
        """A position from its text form, its dict form or a 2-item list; else
        :class:`InvalidPosition` saying what is wrong (input from clients lands here)."""
        if isinstance(value, StreamPosition):
            return value
        if isinstance(value, str):
            if len(value) > _MAX_TEXT:
                raise InvalidPosition(f"position text is {len(value)} characters; too long")
            epoch, colon, offset = value.partition(":")
            if not colon or not _OFFSET_RE.fullmatch(offset):
                raise InvalidPosition(
                    f"position must read '<epoch>:<offset>' with a decimal offset, "
                    f"got {_short(value)}"
                )
            return cls(epoch, int(offset))
        if isinstance(value, Mapping):
            if set(value) != {"epoch", "offset"}:
                raise InvalidPosition(
                    f"position dict must have exactly the keys 'epoch' and 'offset', "
                    f"got {_short(sorted(map(str, value)))}"
                )
            return cls(value["epoch"], value["offset"])
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return cls(value[0], value[1])
        raise InvalidPosition(
            f"a position is '<epoch>:<offset>', a dict or a pair, not {type(value).__name__}"
        )


class MessagePosition(NamedTuple):
    """What a delivered message's :data:`POSITION_KEY` says: its group and its position."""

    group: str
    position: StreamPosition


def stamp(group: str, epoch: str, offset: int) -> str:
    """The value of :data:`POSITION_KEY` for ``group``'s message at ``(epoch, offset)``."""
    return f"{group}:{epoch}:{offset}"


def message_position(message: Mapping[str, Any]) -> MessagePosition | None:
    """The group and position a delivered message carries; None for a message of a group
    without history (or a direct ``send``). Raises :class:`InvalidPosition` when the reserved
    key holds something the layer did not write."""
    value = message.get(POSITION_KEY)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise InvalidPosition(f"{POSITION_KEY} must hold '<group>:<epoch>:<offset>'")
    group, colon, rest = value.partition(":")
    if not group or not colon:
        raise InvalidPosition(
            f"{POSITION_KEY} must hold '<group>:<epoch>:<offset>', got {_short(value)}"
        )
    return MessagePosition(group, StreamPosition.parse(rest))


def without_position(message: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``message`` without :data:`POSITION_KEY`: what to pass on when forwarding a
    history group's message to another group or channel."""
    return {key: value for key, value in message.items() if key != POSITION_KEY}


def _packed_text(data: bytes) -> bytes:
    """``msgpack.packb(data.decode())``, written out for the short strs stamps are (a third the
    cost)."""
    size = len(data)
    if size < 32:
        return bytes((0xA0 | size,)) + data
    if size < 256:
        return b"\xd9" + bytes((size,)) + data
    packed: bytes = msgpack.packb(data.decode())
    return packed


def stamp_payload(payload: bytes, value: str) -> bytes:
    """The encoded message ``payload`` (a msgpack map) with :data:`POSITION_KEY` set to
    ``value`` (made by :func:`stamp`).

    Done on the bytes, without decoding: the map's header counts one more entry and the entry
    goes at the end, where it overrides a key of that name already in the message (msgpack
    decodes a repeated key as its last value). The size limit was checked on ``payload``, so a
    history group accepts exactly the messages a plain group accepts.
    """
    return stamp_encoded(payload, value.encode())


def stamp_encoded(payload: bytes, value: bytes) -> bytes:
    """:func:`stamp_payload` with the stamp already UTF-8 bytes (a backend that has them, as
    the Redis layer has ``"<epoch>:<offset>"`` from the wire, saves formatting them)."""
    head = payload[0]
    if 0x80 <= head < 0x8F:  # a fixmap that stays one: the common case, kept short
        return _FIXMAP_HEADERS[(head & 0x0F) + 1] + payload[1:] + _PACKED_KEY + _packed_text(value)
    if head == 0x8F:  # fixmap
        count, body = 15, payload[1:]
    elif head == 0xDE:  # map 16
        count, body = int.from_bytes(payload[1:3], "big"), payload[3:]
    elif head == 0xDF:  # map 32
        count, body = int.from_bytes(payload[1:5], "big"), payload[5:]
    else:
        raise ValueError(f"not an encoded message (msgpack map), first byte {head:#04x}")
    count += 1
    header = (
        b"\xde" + count.to_bytes(2, "big")
        if count <= 0xFFFF
        else b"\xdf" + count.to_bytes(4, "big")
    )
    return header + body + _PACKED_KEY + _packed_text(value)


# Configuration -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """What one ``CONFIG["history"]`` pattern keeps: the last ``size`` messages, each for at
    most ``ttl`` seconds (None: until pushed out by newer ones)."""

    size: int
    ttl: float | None = None

    @classmethod
    def from_config(cls, where: str, value: Any) -> HistoryPolicy:
        """Validate one pattern's value (``where`` names it in the error)."""
        if not isinstance(value, Mapping):
            raise LayerConfigError(
                f"{where} must be a dict such as {{'size': 100, 'ttl': 300}}, got {_short(value)}"
            )
        unknown = sorted(str(key) for key in value if key not in ("size", "ttl"))
        if unknown:
            raise LayerConfigError(f"{where}: unknown key {unknown[0]!r} (accepted: 'size', 'ttl')")
        if "size" not in value:
            raise LayerConfigError(f"{where}: 'size' is required (the messages kept, at most)")
        size = value["size"]
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_HISTORY_SIZE:
            raise LayerConfigError(
                f"{where}['size'] must be an int from 1 to {MAX_HISTORY_SIZE}, got {_short(size)}"
            )
        ttl = value.get("ttl")
        if ttl is not None:
            number = isinstance(ttl, (int, float)) and not isinstance(ttl, bool)
            if not number or not math.isfinite(ttl) or not 0 < ttl <= MAX_HISTORY_TTL:
                raise LayerConfigError(
                    f"{where}['ttl'] must be a number of seconds above 0 and at most "
                    f"{MAX_HISTORY_TTL:g} (30 days), got {_short(ttl)}"
                )
            ttl = float(ttl)
        return cls(size, ttl)


# Answers -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """What ``group_history`` answers.

    ``messages``: the group's messages after ``since``, oldest first, each its own copy carrying
    :data:`POSITION_KEY`. ``position``: the group's current position (that of its last message;
    offset 0 if the epoch has none yet). ``recovered``: True when ``messages`` is every message
    after ``since`` up to ``position``, False when some are missing from it (the epoch changed,
    they were trimmed by size or ttl, or ``limit`` cut them off); ``messages`` then holds the
    newest retained ones.
    """

    messages: list[dict[str, Any]]
    position: StreamPosition
    recovered: bool


def check_since(since: Any) -> StreamPosition | None:
    """``since`` as given to ``group_history``: a :class:`StreamPosition` or None."""
    if since is None or isinstance(since, StreamPosition):
        return since
    raise InvalidPosition(
        f"since must be a StreamPosition or None, not {type(since).__name__} "
        f"(read a client's position with StreamPosition.parse)"
    )


def check_limit(limit: Any) -> int | None:
    """``limit`` as given to ``group_history``: None or an int >= 0."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
    if limit < 0:
        raise ValueError(f"limit must be 0 or more, got {limit}")
    return limit


def select_history(
    entries: Sequence[tuple[int, T]],
    current: StreamPosition,
    since: StreamPosition | None,
    limit: int | None,
) -> tuple[list[T], bool]:
    """Which retained entries a ``group_history`` answer holds, and whether it is recovered.

    ``entries`` are the retained messages of ``current.epoch`` as ``(offset, item)``, oldest
    first. The rules, for every backend:

    * ``since`` None stands for ``(current epoch, 0)``: the whole epoch is asked for.
    * ``since`` of another epoch, or ahead of ``current`` (a forged position, or one from a
      history lost with its epoch kept, such as writes lost in a failover): not recovered;
      the answer is the retained history.
    * otherwise the entries with offset > ``since.offset``; recovered when none after ``since``
      was trimmed (the oldest retained is at most ``since.offset + 1``).
    * ``limit``: at most that many, the newest; cutting any off makes the answer not recovered.
    """
    if since is None:
        start, continuous = 0, True
    elif since.epoch != current.epoch or since.offset > current.offset:
        start, continuous = 0, False
    else:
        start, continuous = since.offset, True
    first = entries[0][0] if entries else current.offset + 1
    recovered = continuous and first <= start + 1
    chosen = [item for _, item in entries[bisect.bisect_right(entries, start, key=_offset) :]]
    if limit is not None and len(chosen) > limit:
        chosen = chosen[len(chosen) - limit :] if limit else []
        recovered = False
    return chosen, recovered


def _offset(entry: tuple[int, Any]) -> int:
    return entry[0]
