"""The Redis wire protocol (RESP2 and RESP3) for the layer's hot path, in plain Python.

redis-py spends most of a small command's CPU on its generic machinery (argument encoding,
response callbacks, timeouts around every read); the layer's hot commands are few and known in
advance, so they are packed once (or from a packed prefix) and their replies read by the small
parser below. Server errors become the exception classes redis-py would raise (``NOSCRIPT`` is
:class:`redis.exceptions.NoScriptError`, ``LOADING`` a connection error, ...), returned as values
so that one failed command of a pipeline does not hide the others' replies.
"""

from __future__ import annotations

from typing import Any

from redis._parsers import BaseParser
from redis.exceptions import InvalidResponse, RedisError


def pack(*args: bytes | str | int) -> bytes:
    """One command as RESP bytes (a multi-bulk of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def bulk(data: bytes) -> bytes:
    """One argument as a RESP bulk string, to append to a packed command prefix."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


def error_of(text: str) -> RedisError:
    """The exception redis-py raises for the server error ``text``."""
    error: RedisError = BaseParser.parse_error(text)  # type: ignore[no-untyped-call]
    return error


class Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


INCOMPLETE = Incomplete()
NOT_READY: Any = object()  # what ReplyParser.gets() returns until a whole reply has arrived


class ReplyParser:
    """Incremental reply reader: ``feed`` bytes as they come, ``gets`` whole replies.

    Bulk strings come back as ``bytes``, simple strings as ``bytes``, errors as exception
    instances (not raised), RESP3 maps as flat lists ``[key, value, ...]``.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos >= len(self._buffer):
            self._buffer, self._pos = data, 0
        else:
            self._buffer, self._pos = self._buffer[self._pos :] + data, 0

    def gets(self) -> Any:
        """The next whole reply, or :data:`NOT_READY`."""
        if self._pos >= len(self._buffer):
            return NOT_READY
        try:
            reply, self._pos = self._parse(self._buffer, self._pos)
        except Incomplete:
            return NOT_READY
        return reply

    def _parse(self, buffer: bytes, pos: int) -> tuple[Any, int]:
        end = buffer.find(b"\r\n", pos)
        if end < 0:
            raise INCOMPLETE
        kind = buffer[pos]
        after = end + 2
        if kind == 36 or kind == 61 or kind == 33:  # $ bulk, = verbatim, ! bulk error
            length = int(buffer[pos + 1 : end])
            if length < 0:
                return None, after
            stop = after + length
            if len(buffer) < stop + 2:
                raise INCOMPLETE
            data = buffer[after:stop]
            if kind == 61:
                return data[4:], stop + 2  # "txt:" or "mkd:" prefix
            if kind == 33:
                return error_of(data.decode(errors="replace")), stop + 2
            return data, stop + 2
        if kind == 58 or kind == 40:  # : integer, ( big number
            return int(buffer[pos + 1 : end]), after
        if kind == 42 or kind == 126 or kind == 62 or kind == 37 or kind == 124:
            count = int(buffer[pos + 1 : end])  # * array, ~ set, > push, % map, | attribute
            if count < 0:
                return None, after
            if kind == 37 or kind == 124:
                count *= 2
            items = []
            for _ in range(count):
                item, after = self._parse(buffer, after)
                items.append(item)
            if kind == 124:  # attributes annotate the reply that follows them
                return self._parse(buffer, after)
            return items, after
        if kind == 43:  # + simple string
            return buffer[pos + 1 : end], after
        if kind == 45:  # - error
            return error_of(buffer[pos + 1 : end].decode(errors="replace")), after
        if kind == 95:  # _ null
            return None, after
        if kind == 35:  # # boolean
            return buffer[pos + 1 : end] == b"t", after
        if kind == 44:  # , double
            return float(buffer[pos + 1 : end]), after
        raise InvalidResponse(f"unexpected RESP type byte {kind!r}")
