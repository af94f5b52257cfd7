"""The hot path's own RESP reader and packer (roomcast.layers.redis.resp), byte by byte."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import BusyLoadingError, InvalidResponse, NoScriptError, ResponseError
from roomcast.layers.redis.resp import NOT_READY, ReplyParser, bulk, pack

# (wire bytes, what the parser hands back); errors are compared by class and message.
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
    (b"(12345678901234567890\r\n", 12345678901234567890),
    (b"%1\r\n+k\r\n:1\r\n", [b"k", 1]),
    (b"~1\r\n:7\r\n", [7]),
    (b"=7\r\ntxt:abc\r\n", b"abc"),
    (b"|1\r\n+ttl\r\n:3\r\n:9\r\n", 9),  # an attribute annotates the reply after it
]


def drain(parser: ReplyParser) -> list[Any]:
    replies = []
    while (reply := parser.gets()) is not NOT_READY:
        replies.append(reply)
    return replies


@pytest.mark.parametrize(("wire", "expected"), REPLIES)
def test_each_reply_whole_and_byte_by_byte(wire: bytes, expected: Any) -> None:
    whole = ReplyParser()
    whole.feed(wire)
    assert drain(whole) == [expected]

    trickle = ReplyParser()
    got = []
    for index in range(len(wire)):
        trickle.feed(wire[index : index + 1])
        got += drain(trickle)
    assert got == [expected]


def test_many_replies_split_anywhere() -> None:
    wire = b"".join(data for data, _ in REPLIES)
    expected = [reply for _, reply in REPLIES]
    for cut in range(len(wire)):
        parser = ReplyParser()
        parser.feed(wire[:cut])
        got = drain(parser)
        parser.feed(wire[cut:])
        assert got + drain(parser) == expected


@pytest.mark.parametrize(
    ("wire", "kind", "message"),
    [
        (b"-NOSCRIPT No matching script.\r\n", NoScriptError, "No matching script."),
        (b"-LOADING Redis is loading\r\n", BusyLoadingError, "Redis is loading"),
        (b"-ERR unknown command 'BLMPOP'\r\n", ResponseError, "unknown command 'BLMPOP'"),
        (b"!21\r\nSYNTAX invalid syntax\r\n", ResponseError, "SYNTAX invalid syntax"),
    ],
)
def test_errors_are_returned_as_redis_py_would_raise_them(
    wire: bytes, kind: type[Exception], message: str
) -> None:
    """Returned, not raised: one failed command of a pipeline must not hide the others."""
    parser = ReplyParser()
    parser.feed(wire + b":1\r\n")
    error, after = drain(parser)
    assert type(error) is kind
    assert message in str(error)
    assert after == 1


def test_bytes_that_are_not_resp_are_refused() -> None:
    parser = ReplyParser()
    parser.feed(b"?what\r\n")
    with pytest.raises(InvalidResponse):
        parser.gets()


def test_pack_and_bulk() -> None:
    assert pack("LPOP", b"k\r\n", 512) == b"*3\r\n$4\r\nLPOP\r\n$3\r\nk\r\n\r\n$3\r\n512\r\n"
    assert bulk(b"") == b"$0\r\n\r\n"
