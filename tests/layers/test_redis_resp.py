"""The links' RESP readers (hiredis's and the plain-Python one) and packer, byte by byte.

Every case runs on both readers: they must hand the layer the same values.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    InvalidResponse,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)
from roomcast.layers.redis import resp
from roomcast.layers.redis.resp import NOT_READY, Reader, bulk, error_of, make_reader, pack

# (wire bytes, what the reader hands back); errors are compared by class and message.
REPLIES: list[tuple[bytes, Any]] = [
    (b"+OK\r\n", b"OK"),
    (b":42\r\n", 42),
    (b":-1\r\n", -1),
    (b"$5\r\nhe\r\no\r\n", b"he\r\no"),  # a bulk string may hold CRLF
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*2\r\n$3\r\nkey\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n", [b"key", [b"a", b"b"]]),  # BLMPOP
    (b"_\r\n", None),  # RESP3
    (b"#t\r\n", True),
    (b"#f\r\n", False),
    (b",1.5\r\n", 1.5),
    (b"%1\r\n+k\r\n:1\r\n", {b"k": 1}),
    (b"~1\r\n:7\r\n", [7]),
    (b"=7\r\ntxt:abc\r\n", b"abc"),
    (b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nd\r\n", [b"message", b"c", b"d"]),  # a push
]
# Only the Python reader: RESP3 types the layer never asks for, which hiredis reads otherwise.
PYTHON_ONLY: list[tuple[bytes, Any]] = [
    (b"(12345678901234567890\r\n", 12345678901234567890),
    (b"|1\r\n+ttl\r\n:3\r\n:9\r\n", 9),  # an attribute annotates the reply after it
]

READERS = ["python", "hiredis"]


@pytest.fixture(params=READERS)
def reader_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "hiredis":
        pytest.importorskip("hiredis")  # a dev dependency: installed with '.[dev]'
    kind: str = request.param
    return kind


def new_reader(kind: str) -> Reader:
    return make_reader(use_hiredis=kind == "hiredis")


def drain(reader: Reader) -> list[Any]:
    replies = []
    while (reply := reader.gets()) is not NOT_READY:
        replies.append(reply)
    return replies


def test_make_reader_prefers_hiredis_when_installed() -> None:
    pytest.importorskip("hiredis")
    import hiredis

    assert isinstance(make_reader(), hiredis.Reader)
    assert isinstance(make_reader(use_hiredis=False), resp.ReplyParser)


@pytest.mark.parametrize(("wire", "expected"), REPLIES)
def test_each_reply_whole_and_byte_by_byte(reader_kind: str, wire: bytes, expected: Any) -> None:
    whole = new_reader(reader_kind)
    whole.feed(wire)
    assert drain(whole) == [expected]

    trickle = new_reader(reader_kind)
    got = []
    for index in range(len(wire)):
        trickle.feed(wire[index : index + 1])
        got += drain(trickle)
    assert got == [expected]


@pytest.mark.parametrize(("wire", "expected"), PYTHON_ONLY)
def test_python_reader_reads_rare_resp3_types(wire: bytes, expected: Any) -> None:
    reader = new_reader("python")
    reader.feed(wire)
    assert drain(reader) == [expected]


def test_many_replies_split_anywhere(reader_kind: str) -> None:
    wire = b"".join(data for data, _ in REPLIES)
    expected = [reply for _, reply in REPLIES]
    for cut in range(len(wire)):
        reader = new_reader(reader_kind)
        reader.feed(wire[:cut])
        got = drain(reader)
        reader.feed(wire[cut:])
        assert got + drain(reader) == expected


@pytest.mark.parametrize(
    ("wire", "kind", "message"),
    [
        (b"-NOSCRIPT No matching script.\r\n", NoScriptError, "No matching script."),
        (b"-LOADING Redis is loading\r\n", BusyLoadingError, "Redis is loading"),
        (b"-READONLY You can't write\r\n", ReadOnlyError, "You can't write"),
        (b"-WRONGPASS invalid username-password\r\n", AuthenticationError, "invalid username"),
        (b"-ERR unknown command 'BLMPOP'\r\n", ResponseError, "unknown command 'BLMPOP'"),
        (b"-WEIRD something else\r\n", ResponseError, "WEIRD something else"),
    ],
)
def test_errors_are_returned_as_redis_py_would_raise_them(
    reader_kind: str, wire: bytes, kind: type[Exception], message: str
) -> None:
    """Returned, not raised: one failed command of a pipeline must not hide the others."""
    reader = new_reader(reader_kind)
    reader.feed(wire + b":1\r\n")
    error, after = drain(reader)
    assert type(error) is kind
    assert message in str(error)
    assert after == 1


def test_bulk_errors_in_python_reader() -> None:
    reader = new_reader("python")
    reader.feed(b"!21\r\nSYNTAX invalid syntax\r\n")
    (error,) = drain(reader)
    assert type(error) is ResponseError
    assert "SYNTAX invalid syntax" in str(error)


def test_bytes_that_are_not_resp_are_refused(reader_kind: str) -> None:
    reader = new_reader(reader_kind)
    reader.feed(b"?what\r\n")
    with pytest.raises(InvalidResponse):
        reader.gets()


def test_error_mapping_drops_the_code_word() -> None:
    assert str(error_of("NOSCRIPT No matching script.")) == "No matching script."
    assert type(error_of("ERR invalid password")) is AuthenticationError


def test_pack_and_bulk() -> None:
    assert pack("LPOP", b"k\r\n", 512) == b"*3\r\n$4\r\nLPOP\r\n$3\r\nk\r\n\r\n$3\r\n512\r\n"
    assert bulk(b"") == b"$0\r\n\r\n"
