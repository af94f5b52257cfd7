"""The Redis wire protocol (RESP2 and RESP3) as the layer's links speak it.

Commands are packed here (once, or from a packed prefix: the layer's hot commands are few and
known in advance). Replies are read by ``hiredis.Reader`` when hiredis is installed, else by the
plain-Python :class:`ReplyParser` below; :func:`make_reader` picks. Both hand back the same
values: bulk and simple strings as ``bytes``, integers as ``int``, arrays, sets and pushes as
lists, maps as dicts, nulls as ``None``, and server errors as exception *instances* (returned,
not raised, so that one failed command of a pipeline does not hide the others' replies).

Server errors become the exception classes of :mod:`redis.exceptions` a redis-py user knows
(``NOSCRIPT`` is :class:`~redis.exceptions.NoScriptError`, ``LOADING``
:class:`~redis.exceptions.BusyLoadingError`, ...), mapped by :func:`error_of` from the error's
first word: the public exception classes only, no redis-py parser internals.

(hiredis differs on RESP3 types the layer never asks for: attributes come as a reply of their
own, big numbers as bytes, and a bulk error is a protocol error. The layer's commands get none
of them.)
"""

from __future__ import annotations

from typing import Any, Protocol

from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ExecAbortError,
    InvalidResponse,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)


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


# The first word of a server error -> the redis-py exception class for it.
_ERRORS: dict[str, type[RedisError]] = {
    "NOSCRIPT": NoScriptError,
    "LOADING": BusyLoadingError,
    "READONLY": ReadOnlyError,
    "WRONGPASS": AuthenticationError,
    "NOAUTH": AuthenticationError,
    "NOPERM": NoPermissionError,
    "OOM": OutOfMemoryError,
    "EXECABORT": ExecAbortError,
}


def error_of(text: str) -> RedisError:
    """The exception for the server error ``text`` (``"NOSCRIPT No matching script."``).

    The first word names the class and is dropped from the message, as redis-py does; a plain
    ``ERR`` (and any word we do not know) is a :class:`~redis.exceptions.ResponseError`.
    """
    code, _, rest = text.partition(" ")
    kind = _ERRORS.get(code)
    if kind is not None:
        return kind(rest)
    if code == "ERR":
        if rest == "invalid password":
            return AuthenticationError(rest)
        return ResponseError(rest)
    return ResponseError(text)


class Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


INCOMPLETE = Incomplete()
NOT_READY: Any = object()  # what a reader's gets() returns until a whole reply has arrived


class Reader(Protocol):
    """What the links need of a reply reader (``hiredis.Reader`` and :class:`ReplyParser`)."""

    def feed(self, data: bytes, /) -> None: ...

    def gets(self) -> Any: ...


class ReplyParser:
    """Incremental reply reader in plain Python: ``feed`` bytes as they come, ``gets`` replies."""

    def __init__(self) -> None:
        self._buffer = b""
        self._pos = 0

    def feed(self, data: bytes, /) -> None:
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
            if kind == 37:
                return dict(zip(items[::2], items[1::2], strict=True)), after
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


def hiredis_available() -> bool:
    """True when ``hiredis`` imports (``sys.modules["hiredis"] = None`` hides it)."""
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return False
    return True


# Raised by a reader for bytes that are not RESP (hiredis's ProtocolError among them).
PROTOCOL_ERRORS: tuple[type[Exception], ...] = (InvalidResponse, ValueError, IndexError)


def make_reader(*, use_hiredis: bool | None = None) -> Reader:
    """A reply reader: hiredis's when installed (or ``use_hiredis=True``), else Python's."""
    if use_hiredis is None:
        use_hiredis = hiredis_available()
    if not use_hiredis:
        return ReplyParser()
    import hiredis

    reader: Reader = hiredis.Reader(
        protocolError=InvalidResponse, replyError=error_of, notEnoughData=NOT_READY
    )
    return reader
