"""The sans-I/O response writer: framing and keep-alive decided from bytes alone."""

from __future__ import annotations

import pytest
from roomcast.gateway.connections.h1writer import ResponseFramingError, ResponseWriter


def writer(
    head_request: bool = False, http11: bool = True, keep_alive: bool = True
) -> ResponseWriter:
    return ResponseWriter(head_request=head_request, http11=http11, keep_alive=keep_alive)


def test_content_length_frames_the_body() -> None:
    w = writer()
    head = w.head(200, b"OK", [(b"content-length", b"5"), (b"x-a", b"1")])
    assert head == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\n"
    assert w.body(b"hel") + w.body(b"lo") + w.end() == b"hello"
    assert w.keep_alive


def test_too_much_or_too_little_body_is_refused() -> None:
    w = writer()
    w.head(200, b"OK", [(b"content-length", b"2")])
    with pytest.raises(ResponseFramingError, match="longer"):
        w.body(b"abc")
    w = writer()
    w.head(200, b"OK", [(b"content-length", b"2")])
    w.body(b"a")
    with pytest.raises(ResponseFramingError, match="shorter"):
        w.end()


def test_chunked_without_length_for_http11() -> None:
    w = writer()
    head = w.head(200, b"OK", [(b"transfer-encoding", b"gzip")])  # the app's TE is dropped
    assert head == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    assert w.body(b"hello") == b"5\r\nhello\r\n"
    assert w.body(b"") == b""  # an empty piece must not end the body early
    assert w.end() == b"0\r\n\r\n"


def test_http10_body_is_delimited_by_closing() -> None:
    w = writer(http11=False, keep_alive=False)
    head = w.head(200, b"OK", [])
    assert head.endswith(b"connection: close\r\n\r\n")
    assert w.body(b"raw") == b"raw"
    assert not w.keep_alive


@pytest.mark.parametrize(("status", "head_request"), [(204, False), (304, False), (200, True)])
def test_no_body_responses(status: int, head_request: bool) -> None:
    w = writer(head_request=head_request)
    head = w.head(status, b"X", [(b"content-length", b"10")])
    assert b"transfer-encoding" not in head
    assert w.body(b"ignored") == b""
    assert w.end() == b""


def test_connection_close_from_app_or_request() -> None:
    w = writer()
    head = w.head(200, b"OK", [(b"connection", b"Close"), (b"content-length", b"0")])
    assert not w.keep_alive
    assert head.lower().count(b"connection: close") == 1
    w = writer(keep_alive=False)
    assert w.head(200, b"OK", [(b"content-length", b"0")]).endswith(b"connection: close\r\n\r\n")


def test_bad_content_length_is_refused() -> None:
    with pytest.raises(ResponseFramingError, match="not a number"):
        writer().head(200, b"OK", [(b"content-length", b"-1")])
    with pytest.raises(ResponseFramingError, match="conflicting"):
        writer().head(200, b"OK", [(b"content-length", b"1"), (b"content-length", b"2")])
