"""Sans-I/O serializer for one HTTP/1.1 response: framing and keep-alive decided here.

h11 parses requests (the part where bad input lives); responses come from the application,
already validated by the stream, and writing them is simple enough that h11's general
machinery (events, state transitions, header normalisation) cost more than the rest of a
small response together. The rules are RFC 9112's, as h11 applies them:

* no body for HEAD, 1xx, 204 and 304;
* the app's Content-Length frames the body, and the writer refuses more or fewer bytes;
* otherwise ``Transfer-Encoding: chunked`` for an HTTP/1.1 client, and for HTTP/1.0 a body
  delimited by closing the connection;
* the connection is kept alive only if the request allowed it and the response did not say
  ``Connection: close``.
"""

from __future__ import annotations


class ResponseFramingError(Exception):
    """The app's body does not match its own Content-Length (or it is not a number)."""


class ResponseWriter:
    """Bytes for one response: :meth:`head`, then :meth:`body` pieces, then :meth:`end`."""

    __slots__ = ("_chunked", "_http11", "_no_body", "_remaining", "keep_alive")

    def __init__(self, *, head_request: bool, http11: bool, keep_alive: bool) -> None:
        self._no_body = head_request
        self._chunked = False
        self._remaining: int | None = None
        self.keep_alive = keep_alive
        self._http11 = http11

    def head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The status line and headers (names lower-cased and validated by the stream)."""
        if status < 200 or status in (204, 304):
            self._no_body = True
        length: bytes | None = None
        said_close = False
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        for name, value in headers:
            if name == b"content-length":
                if length is not None and value != length:
                    raise ResponseFramingError("conflicting Content-Length headers")
                if length is not None:
                    continue
                length = value
            elif name == b"transfer-encoding":
                continue  # framing is ours to choose
            elif name == b"connection" and b"close" in value.lower():
                self.keep_alive = False
                said_close = True
            lines.append(b"%s: %s\r\n" % (name, value))
        if length is not None:
            if not length.isdigit():
                raise ResponseFramingError(f"Content-Length {length!r} is not a number")
            self._remaining = 0 if self._no_body else int(length)
        elif not self._no_body:
            if self._http11:
                self._chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # an HTTP/1.0 body ends when the connection does
        if not self.keep_alive and not said_close:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def body(self, data: bytes) -> bytes:
        if not data or self._no_body:
            return b""
        if self._remaining is not None:
            self._remaining -= len(data)
            if self._remaining < 0:
                raise ResponseFramingError("response body longer than its Content-Length")
            return data
        if self._chunked:
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data

    def end(self) -> bytes:
        if self._remaining:
            raise ResponseFramingError("response body shorter than its Content-Length")
        return b"0\r\n\r\n" if self._chunked else b""
