"""Key names and the bytes that travel through Redis.

Keys (every key of one operation shares a ``{hash tag}``, so Redis Cluster can follow):

========================  =====  ==========================================================
``<prefix>:g{<group>}``   zset   every member channel -> time of its group_add (expiry,
                                 introspection); also the name of the group's pub/sub channel
``<prefix>:gx{<group>}``  zset   members that are not process-local (plain names such as
                                 ``worker.thumbs``): group_send pushes to their lists
``<prefix>:p{<process>}`` list   a process's inbox: direct sends to its ``!`` channels, and
                                 control messages (group_add of its channel by another process)
``<prefix>:c{<channel>}`` list   a plain channel's queue, read by whichever process receives
``<prefix>:procs``        zset   liveness: every live process -> the time of its last
                                 heartbeat (one such key on each host)
``<prefix>:pg{<process>}`` set   the groups (of this host) a process has members in: what
                                 to sweep when its heartbeat lapses
========================  =====  ==========================================================

Entries:

* list entry: ``>d`` expiry (Unix time) | ``B`` length of the channel name | name | payload.
  In an inbox the name says which local channel gets it; a zero length marks a control entry.
* pub/sub message: ``>d`` expiry | 16-byte sender process id | payload. A process ignores its
  own messages: it has already delivered them to its local members.

Payload is the msgpack message, Fernet-sealed when encryption keys are configured. Groups with
history have two keys more and their pub/sub message starts with its position: see
:mod:`roomcast.layers.redis.history`.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import msgpack

_EXPIRY = struct.Struct(">d")
_LIST_HEAD = struct.Struct(">dB")
PROCESS_ID_LENGTH = 16


def group_key(prefix: str, group: str) -> str:
    return f"{prefix}:g{{{group}}}"


def group_external_key(prefix: str, group: str) -> str:
    return f"{prefix}:gx{{{group}}}"


def inbox_key(prefix: str, process: str) -> str:
    return f"{prefix}:p{{{process}}}"


def channel_key(prefix: str, channel: str) -> str:
    return f"{prefix}:c{{{channel}}}"


def processes_key(prefix: str) -> str:
    return f"{prefix}:procs"


def process_groups_key(prefix: str, process: str) -> str:
    return f"{prefix}:pg{{{process}}}"


def process_of(channel: str) -> str:
    """The process id inside a process-local name ``<prefix>.<process>!<suffix>``."""
    head = channel.partition("!")[0]
    return head.rpartition(".")[2]


class ListEntry(NamedTuple):
    expires: float
    channel: str
    payload: bytes


def pack_list_entry(expires: float, channel: str, payload: bytes) -> bytes:
    return pack_entry(expires, channel.encode(), payload)


def pack_entry(expires: float, name: bytes, payload: bytes) -> bytes:
    """:func:`pack_list_entry` with the channel name already encoded."""
    return _LIST_HEAD.pack(expires, len(name)) + name + payload


def unpack_list_entry(data: bytes) -> ListEntry:
    """Raises ``ValueError`` for bytes that are not an entry (someone else wrote the key)."""
    try:
        expires, length = _LIST_HEAD.unpack_from(data)
    except struct.error as exc:
        raise ValueError(f"malformed list entry: {exc}") from exc
    start = _LIST_HEAD.size
    return ListEntry(expires, data[start : start + length].decode(), data[start + length :])


def pack_control(expires: float, op: str, group: str, channel: str) -> bytes:
    body: bytes = msgpack.packb({"op": op, "group": group, "channel": channel})
    return _LIST_HEAD.pack(expires, 0) + body


def unpack_control(payload: bytes) -> dict[str, str]:
    control: dict[str, str] = msgpack.unpackb(payload, raw=False)
    return control


def pack_group_message(expires: float, sender: bytes, payload: bytes) -> bytes:
    return _EXPIRY.pack(expires) + sender + payload


def unpack_group_message(data: bytes) -> tuple[float, bytes, bytes]:
    """Raises ``ValueError`` for bytes that are not a group message."""
    try:
        (expires,) = _EXPIRY.unpack_from(data)
    except struct.error as exc:
        raise ValueError(f"malformed group message: {exc}") from exc
    start = _EXPIRY.size
    end = start + PROCESS_ID_LENGTH
    return expires, data[start:end], data[end:]
