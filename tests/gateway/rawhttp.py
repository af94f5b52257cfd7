"""HTTP test helpers: a tiny client over raw sockets, and a connection fed without a socket."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from roomcast.gateway.config import Config, Receive, Scope, Send
from roomcast.gateway.connections.http1 import HTTP1Connection
from roomcast.gateway.state import ServerState

TIMEOUT = 5.0  # every wait in these tests is bounded


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-cased
    body: bytes
    chunked: bool
    head: bytes  # the status line and header block as received

    def header(self, name: bytes) -> bytes | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


def request(
    method: str = "GET",
    target: str = "/",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    version: str = "1.1",
) -> bytes:
    """The bytes of one request; adds Host, and Content-Length when there is a body."""
    lines = [f"{method} {target} HTTP/{version}"]
    given = headers if headers is not None else []
    names = {name.lower() for name, _ in given}
    if "host" not in names and version == "1.1":
        lines.append("Host: test")
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{name}: {value}" for name, value in given)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*pieces: bytes) -> bytes:
    """A chunked body made of ``pieces``, with the last chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


async def read_response(
    reader: asyncio.StreamReader, *, head_request: bool = False, timeout: float = TIMEOUT
) -> Response:
    """One response (a 1xx too) from ``reader``; its body framed as the headers say."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].split(b"\r\n")
        _version, status, reason = [*status_line.split(b" ", 2), b""][:3]
        headers = []
        for line in header_lines:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        code = int(status)
        values = dict(headers)
        is_chunked = b"chunked" in values.get(b"transfer-encoding", b"").lower()
        if head_request or code < 200 or code in (204, 304):
            body = b""
        elif is_chunked:
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers
                    break
                parts.append(await reader.readexactly(size))
                assert await reader.readexactly(2) == b"\r\n"
            body = b"".join(parts)
        elif b"content-length" in values:
            body = await reader.readexactly(int(values[b"content-length"]))
        else:
            body = await reader.read()  # close-delimited
    return Response(code, reason, headers, body, is_chunked, head)


async def read_all(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> bytes:
    """Everything until the server closes (a reset counts as a close)."""
    data = bytearray()
    async with asyncio.timeout(timeout):
        while True:
            try:
                piece = await reader.read(65536)
            except ConnectionResetError:
                break
            if not piece:
                break
            data += piece
    return bytes(data)


async def is_closed(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> bool:
    """Whether the server closes the connection within ``timeout`` without sending more."""
    try:
        return await read_all(reader, timeout) == b""
    except TimeoutError:
        return False


async def exchange(port: int, data: bytes, *, eof: bool = False, timeout: float = TIMEOUT) -> bytes:
    """Send ``data`` on a new connection and return all the server says until it closes.

    ``eof`` half-closes the connection after ``data``: the client will send nothing more.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        await writer.drain()
        return await read_all(reader, timeout)
    finally:
        await close(writer)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


# Without a socket -------------------------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    """Collects what a connection writes; the test calls ``data_received`` itself."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed:
            self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("10.0.0.1", 4242), "sockname": ("10.0.0.2", 80)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


@dataclass
class Fed:
    requests: list[tuple[Scope, bytes, str]] = field(default_factory=list)  # scope, body, last
    written: bytes = b""  # without Date lines and 100 Continue interim responses
    closed: bool = False


async def feed_connection(pieces: list[bytes], eof: bool = False) -> Fed:
    """Feed ``pieces`` to one HTTP1Connection, letting its app run after each; what was seen.

    The app reads the whole body, then answers with the method and body. ``eof`` ends the
    input as a client closing its side would.
    """
    fed = Fed()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            fed.requests.append((scope, b"", "websocket"))
            await send({"type": "websocket.close"})  # an HTTP 403
            return
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if message["type"] != "http.request" or not message["more_body"]:
                break
        fed.requests.append((scope, b"".join(parts), message["type"]))
        if message["type"] == "http.request":
            body = scope["method"].encode() + b" " + b"".join(parts)
            length = str(len(body)).encode()
            headers = [(b"content-length", length)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    async def settle() -> None:
        for _ in range(20):  # enough turns for the app to read and answer
            await asyncio.sleep(0)

    state = ServerState()
    state.server_header = None
    connection = HTTP1Connection(Config(app=app), app, state)
    transport = FakeTransport()
    connection.connection_made(transport)
    for piece in pieces:
        if transport.closed:
            break
        connection.data_received(piece)
        await settle()
    if eof and not transport.closed and not connection.eof_received():
        transport.close()
    await settle()
    fed.closed = transport.closed
    connection.connection_lost(None)
    async with asyncio.timeout(TIMEOUT):
        while state.tasks:
            await asyncio.sleep(0)
    fed.written = b"\r\n".join(
        line
        for line in bytes(transport.written)
        .replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
        .split(b"\r\n")
        if not line.startswith(b"date:")
    )
    return fed
