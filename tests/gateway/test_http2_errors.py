"""HTTP/2 input the gateway must refuse, and how: the right error code, then a server still fine.

The client is h2 where h2 will produce the frames, raw bytes where it would refuse to. Each case
ends by checking that a fresh connection still gets a 200 and that nothing was logged as an
error beyond what the case expects. A hypothesis property feeds arbitrary frame sequences to a
server running in a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from roomcast.gateway.config import Config, Receive, Scope, Send

from tests.gateway import apps
from tests.gateway.conftest import Serve
from tests.gateway.h2_support import (
    CANCEL,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    HEADERS,
    INTERNAL_ERROR,
    PING,
    PRIORITY,
    PROTOCOL_ERROR,
    SETTINGS,
    STREAM_CLOSED,
    WAIT,
    WINDOW_UPDATE,
    Gate,
    H2Client,
    client_preface,
    get_200,
    header_block_frames,
    parse_frames,
    ping,
    raw_frame,
)
from tests.gateway.threaded_server import ThreadedServer

FLOOD = 5000  # frames in one write: well past the guard's burst of 1000


def request_block(
    encoder: hpack.Encoder,
    authority: str,
    method: str = "GET",
    path: str = "/",
    extra: list[tuple[bytes, bytes]] | None = None,
    huffman: bool = True,
) -> bytes:
    headers = [
        (b":method", method.encode()),
        (b":scheme", b"http"),
        (b":authority", authority.encode()),
        (b":path", path.encode()),
        *(extra or []),
    ]
    block: bytes = encoder.encode(headers, huffman=huffman)
    return block


def errors(log: pytest.LogCaptureFixture, *expected: str) -> list[str]:
    """What was logged at ERROR or above, but for messages containing one of ``expected``."""
    return [
        record.getMessage()
        for record in log.records
        if record.levelno >= logging.ERROR
        and not any(text in record.getMessage() for text in expected)
    ]


async def raw_client(host: str, port: int, **settings: int) -> H2Client:
    """A client that sends the preface and SETTINGS and leaves the rest to raw bytes."""
    return await H2Client.connect(host, port, use_h2=False, settings=settings or None)


async def expect_goaway(client: H2Client, code: int) -> GoAwayFrame:
    """The server's GOAWAY carries ``code`` and the server then closes the connection."""
    goaway = await client.goaway_and_close()
    assert goaway.error_code == code, (goaway, client.describe())
    return goaway


def assert_still_open(client: H2Client) -> None:
    """The server has neither sent GOAWAY nor closed the connection."""
    assert not client.goaways, client.describe()
    assert not client.closed, client.describe()


async def server_is_fine(host: str, port: int, log: pytest.LogCaptureFixture) -> None:
    await get_200(host, port)
    assert errors(log) == []


# Connection errors ------------------------------------------------------------------------------


def hpack_bomb(client: H2Client) -> bytes:
    encoder = hpack.Encoder()
    # 4000 bytes into the dynamic table once (the last entry added: index 62) ...
    block = request_block(encoder, client.authority, extra=[(b"x-bomb", b"b" * 4000)])
    # ... then referenced by index a thousand times: 4 KB on the wire, 4 MB decoded.
    block += b"\xbe" * 1000
    assert len(block) < 6000
    return header_block_frames(1, block, end_stream=True)


def hpack_bomb_across_header_blocks(client: H2Client) -> bytes:
    encoder = hpack.Encoder()
    first = request_block(encoder, client.authority, extra=[(b"x-bomb", b"b" * 4000)])
    second = request_block(encoder, client.authority) + b"\xbe" * 100  # 400 KB decoded
    fine = header_block_frames(1, first, end_stream=True)  # a fine request
    return fine + header_block_frames(3, second, end_stream=True)


def headers_on_an_even_stream(client: H2Client) -> bytes:
    return header_block_frames(2, request_block(hpack.Encoder(), client.authority), end_stream=True)


def headers_on_a_lower_stream_id(client: H2Client) -> bytes:
    encoder = hpack.Encoder()
    first = header_block_frames(5, request_block(encoder, client.authority), end_stream=True)
    return first + header_block_frames(3, request_block(encoder, client.authority), end_stream=True)


def continuation_flood(client: H2Client) -> bytes:
    block = request_block(hpack.Encoder(), client.authority)
    flood = raw_frame(HEADERS, END_STREAM, 1, block)  # no END_HEADERS
    return flood + raw_frame(CONTINUATION, 0, 1, b"") * 10_000


def another_frame_inside_a_header_block(client: H2Client) -> bytes:
    block = request_block(hpack.Encoder(), client.authority)
    return raw_frame(HEADERS, END_STREAM, 1, block[:3]) + ping()


def rapid_reset(client: H2Client) -> bytes:
    """Open and cancel a stream, five thousand times (in one write)."""
    headers = client.request_headers("GET", "/")
    for _ in range(FLOOD):
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, headers, end_stream=True)
        client.conn.reset_stream(sid, CANCEL)
    flood: bytes = client.conn.data_to_send()
    return flood


def empty_data_flood(client: H2Client) -> bytes:
    upload = client.upload("POST", "/")
    return raw_frame(DATA, 0, upload.sid) * FLOOD


class BadInput(NamedTuple):
    """What a client sends after the preface and SETTINGS, and the GOAWAY it gets for it."""

    send: bytes | Callable[[H2Client], bytes]  # the bytes, or what makes them for the client
    code: int  # the GOAWAY's error code
    last_stream_id: int | None = 0  # the GOAWAY's (None: not checked)
    h2: bool = False  # the client is h2 (else it leaves all after its SETTINGS to raw bytes)


CONNECTION_ERRORS = {
    "data-on-stream-0": BadInput(raw_frame(DATA, 0, 0, b"abc"), PROTOCOL_ERROR),
    "frame-over-max-frame-size": BadInput(raw_frame(DATA, 0, 1, b"x" * 16385), FRAME_SIZE_ERROR),
    "ping-of-nine-bytes": BadInput(raw_frame(PING, 0, 0, b"x" * 9), FRAME_SIZE_ERROR),
    "ping-on-a-stream": BadInput(raw_frame(PING, 0, 1, b"x" * 8), PROTOCOL_ERROR),
    "settings-with-odd-length": BadInput(raw_frame(SETTINGS, 0, 0, b"\0\4\0"), FRAME_SIZE_ERROR),
    # RFC 9113 §6.5 says FRAME_SIZE_ERROR; hyperframe rejects the frame as invalid data and
    # h2 answers that with PROTOCOL_ERROR.
    "settings-ack-with-payload": BadInput(
        raw_frame(SETTINGS, 1, 0, b"\0\4\0\0\0\1"), PROTOCOL_ERROR
    ),
    "initial-window-too-large": BadInput(
        raw_frame(SETTINGS, 0, 0, b"\0\4\x80\0\0\0"),
        FLOW_CONTROL_ERROR,
    ),
    "window-update-overflow": BadInput(
        raw_frame(WINDOW_UPDATE, 0, 0, (2**31 - 1).to_bytes(4, "big")),
        FLOW_CONTROL_ERROR,
    ),
    "window-update-of-zero": BadInput(raw_frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\0"), PROTOCOL_ERROR),
    "continuation-without-headers": BadInput(
        raw_frame(CONTINUATION, END_HEADERS, 1, b"\x82"),
        PROTOCOL_ERROR,
    ),
    # Read as a frame header, "hello, th" declares a frame of 6.8 MB: over 16384 at once.
    "garbage-after-the-preface": BadInput(
        b"hello, this is not HTTP/2 at all\r\n" * 4, FRAME_SIZE_ERROR
    ),
    # Only the header of a 16 MiB PING: its length alone is the error, no need to buffer it.
    "oversized-frame-header-only": BadInput(
        (2**24 - 1).to_bytes(3, "big") + bytes((PING, 0)) + b"\0\0\0\0",
        FRAME_SIZE_ERROR,
    ),
    "headers-on-an-even-stream": BadInput(headers_on_an_even_stream, PROTOCOL_ERROR, None),
    "headers-on-a-lower-stream-id": BadInput(headers_on_a_lower_stream_id, PROTOCOL_ERROR, 5),
    # Indexed field 0x7f+: far past the static table with an empty dynamic table. RFC 9113 §4.3
    # asks for COMPRESSION_ERROR; h2 turns every HPACK decoding error into a ProtocolError, so
    # the GOAWAY says PROTOCOL_ERROR.
    "undecodable-header-block": BadInput(
        header_block_frames(1, b"\xff\xff\xff\x0f", end_stream=True),
        PROTOCOL_ERROR,
        None,
    ),
    "ping-flood": BadInput(ping() * FLOOD, ENHANCE_YOUR_CALM, None),
    "settings-flood": BadInput(raw_frame(SETTINGS, 0, 0) * FLOOD, ENHANCE_YOUR_CALM, None),
    "priority-flood": BadInput(
        raw_frame(PRIORITY, 0, 1, b"\0\0\0\0\x0f") * FLOOD,  # depends on 0, weight 16
        ENHANCE_YOUR_CALM,
        None,
    ),
    "unknown-frame-flood": BadInput(raw_frame(0xFA, 0, 0, b"?") * FLOOD, ENHANCE_YOUR_CALM, None),
    "hpack-bomb": BadInput(hpack_bomb, ENHANCE_YOUR_CALM, None),
    "hpack-bomb-across-header-blocks": BadInput(
        hpack_bomb_across_header_blocks, ENHANCE_YOUR_CALM, None
    ),
    # h2 buffers at most 64 CONTINUATION frames of one block (h2.frame_buffer).
    "continuation-flood": BadInput(continuation_flood, PROTOCOL_ERROR, None),
    "rapid-reset": BadInput(rapid_reset, ENHANCE_YOUR_CALM, None, h2=True),
    "empty-data-flood": BadInput(empty_data_flood, ENHANCE_YOUR_CALM, None, h2=True),
    "another-frame-inside-a-header-block": BadInput(
        another_frame_inside_a_header_block, PROTOCOL_ERROR, None
    ),
}


@pytest.mark.parametrize("case", sorted(CONNECTION_ERRORS))
async def test_protocol_errors_get_goaway_with_their_code(
    serve: Serve, error_log: pytest.LogCaptureFixture, case: str
) -> None:
    host, port, state = await serve(apps.hello)
    send, code, last_stream_id, h2 = CONNECTION_ERRORS[case]
    async with await H2Client.connect(host, port, use_h2=h2) as client:
        client.send_raw(send if isinstance(send, bytes) else send(client))
        goaway = await expect_goaway(client, code)
    if last_stream_id is not None:
        assert goaway.last_stream_id == last_stream_id
    assert state.counters.bad_requests == 1
    await server_is_fine(host, port, error_log)


@pytest.mark.parametrize(
    "preface",
    [
        b"PRI * HTTP/2.0\r\n\r\nXM\r\n\r\n",  # the request line matches, the rest does not
        b"PRI * HTTP/2.1\r\n\r\nSM\r\n\r\n",  # differs within the request line
    ],
)
async def test_a_bad_preface_is_not_http2_but_a_bad_http1_request(
    serve: Serve, preface: bytes
) -> None:
    called: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope)
        await apps.hello(scope, receive, send)

    host, port, _ = await serve(app)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(preface + raw_frame(SETTINGS, 0, 0))
        answer = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
    # An HTTP/2.x request line is no HTTP/1.1 request: 400 (or 505, RFC 9112 §2.6).
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 505 ")), answer[:300]
    assert [scope["method"] for scope in called] == []
    await get_200(host, port)


# Stream errors ----------------------------------------------------------------------------------


async def test_data_on_a_stream_the_client_closed_is_a_stream_error(
    serve: Serve, error_log: pytest.LogCaptureFixture
) -> None:
    app = Gate(path="/wait")
    host, port, _ = await serve(app)
    async with await H2Client.connect(host, port) as client:
        waiting = client.request("GET", "/wait")  # END_STREAM: the client's half is closed
        client.send_raw(raw_frame(DATA, 0, waiting.sid, b"more"))
        rst = await client.wait_frame(lambda f: isinstance(f, RstStreamFrame))
        assert rst.stream_id == waiting.sid
        assert rst.error_code == STREAM_CLOSED
        assert not client.goaways
        # The connection is still good for other streams.
        other = client.request("GET", "/other")
        assert await other.body() == b"ok"
        app.release.set()
        assert_still_open(client)
    await server_is_fine(host, port, error_log)


async def test_response_shorter_than_its_content_length_is_reset(
    serve: Serve, error_log: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await apps.drain_body(receive)
        size = {"/short": b"10", "/long": b"2"}.get(scope["path"], b"5")
        headers = [(b"content-length", size)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"12345"})

    host, port, _ = await serve(app)
    async with await H2Client.connect(host, port) as client:
        short = await client.request("GET", "/short").finished()
        long = await client.request("GET", "/long").finished()
        assert short.reset_code == INTERNAL_ERROR, client.describe()
        assert long.reset_code == INTERNAL_ERROR, client.describe()
        assert not client.goaways
    await get_200(host, port)
    logged = errors(error_log)
    assert len(logged) == 2
    assert all("Content-Length" in message for message in logged), logged


# Floods -----------------------------------------------------------------------------------------


async def test_ping_flood_is_not_answered_beyond_the_burst(serve: Serve) -> None:
    """The guard allows a burst of 1000 control frames: a flood gets no more answers than
    that (not one PING ACK for each of the 5000 PINGs, queued before the guard looked)."""
    host, port, _ = await serve(apps.hello)
    async with await raw_client(host, port) as client:
        client.send_raw(ping() * FLOOD)
        await expect_goaway(client, ENHANCE_YOUR_CALM)
        acks = [f for f in client.frames if isinstance(f, PingFrame) and "ACK" in f.flags]
    assert len(acks) <= 1000 + 1, f"{len(acks)} PING ACKs for a flood of {FLOOD}"


async def test_a_few_pings_are_answered_and_the_connection_stays(
    serve: Serve, error_log: pytest.LogCaptureFixture
) -> None:
    host, port, _ = await serve(apps.hello)
    async with await H2Client.connect(host, port) as client:
        opaques = [b"ping%04d" % i for i in range(50)]
        client.send_raw(b"".join(ping(opaque) for opaque in opaques))

        def acks() -> list[bytes]:
            return [
                f.opaque_data
                for f in client.frames
                if isinstance(f, PingFrame) and "ACK" in f.flags
            ]

        await client.wait(lambda: len(acks()) >= 50 or client.closed)
        assert acks() == opaques
        stream = client.request("GET", "/")
        assert await stream.body() == b"hello"
        assert_still_open(client)
    await server_is_fine(host, port, error_log)


async def test_pings_in_batches_within_the_burst_are_answered(
    serve: Serve, error_log: pytest.LogCaptureFixture
) -> None:
    """900 pings in batches of 100, each answered before the next: within the burst."""
    host, port, _ = await serve(apps.hello)
    async with await H2Client.connect(host, port) as client:
        for batch in range(1, 10):  # 900 pings: within the burst whatever the timing
            client.send_raw(ping(b"batch%03d" % batch) * 100)

            def answered(expected: int = 100 * batch) -> bool:
                pings = sum(1 for f in client.frames if isinstance(f, PingFrame))
                return pings >= expected or client.closed

            await client.wait(answered)
        assert_still_open(client)
    await server_is_fine(host, port, error_log)


# Too many streams, big headers --------------------------------------------------------------------


async def test_too_many_concurrent_streams_is_a_connection_error(
    serve: Serve, error_log: pytest.LogCaptureFixture
) -> None:
    host, port, _ = await serve(apps.hello, h2_max_concurrent_streams=10)
    async with await raw_client(host, port) as client:
        await client.wait(lambda: bool(client.frames))
        settings_frame = client.frames[0]
        assert isinstance(settings_frame, SettingsFrame)
        assert settings_frame.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 10
        encoder = hpack.Encoder()
        # Eleven streams, none ended: each app waits for a body that does not come.
        for sid in range(1, 23, 2):
            block = request_block(encoder, client.authority, "POST", f"/{sid}")
            client.send_raw(header_block_frames(sid, block))
        goaway = await expect_goaway(client, PROTOCOL_ERROR)
    assert goaway.last_stream_id == 19  # the ten it accepted
    await server_is_fine(host, port, error_log)


async def test_streams_within_the_limit_are_served(serve: Serve) -> None:
    host, port, _ = await serve(apps.hello, h2_max_concurrent_streams=10)
    async with await H2Client.connect(host, port) as client:
        uploads = [client.upload("POST", f"/{i}") for i in range(10)]
        for stream in uploads:
            await client.send_body(stream.sid, b"body")
        assert [await stream.body() for stream in uploads] == [b"hello"] * 10
        # Ten more, now that the first ten are done.
        again = [client.request("GET", f"/again{i}") for i in range(10)]
        assert [await stream.body() for stream in again] == [b"hello"] * 10
        assert not client.goaways


async def test_header_list_over_the_head_limit_is_enhance_your_calm(
    serve: Serve, error_log: pytest.LogCaptureFixture
) -> None:
    host, port, _ = await serve(apps.hello)  # limit_request_head: 64 KiB
    async with await raw_client(host, port) as client:
        await client.wait(lambda: bool(client.frames))
        assert client.frames[0].settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == 64 * 1024
        big = [(b"x-big", b"v" * 100_000)]
        block = request_block(hpack.Encoder(), f"{host}:{port}", extra=big, huffman=False)
        client.send_raw(header_block_frames(1, block, end_stream=True))
        # h2 decodes the block (HEADERS and 6 CONTINUATION), hpack finds the list over the
        # limit: DenialOfServiceError, whose code is ENHANCE_YOUR_CALM.
        await expect_goaway(client, ENHANCE_YOUR_CALM)
    await server_is_fine(host, port, error_log)


async def test_headers_just_within_the_limit_are_served(serve: Serve) -> None:
    host, port, _ = await serve(apps.hello, limit_request_head=16 * 1024)
    async with await H2Client.connect(host, port) as client:
        stream = client.request("GET", "/", headers=[(b"x-big", b"v" * 8000)])
        assert await stream.body() == b"hello"


# Limits answered on the stream ------------------------------------------------------------------


async def test_declared_body_over_the_limit_is_413(
    serve: Serve, error_log: pytest.LogCaptureFixture
) -> None:
    called: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope["path"])
        await apps.hello(scope, receive, send)

    host, port, _ = await serve(app, limit_request_body=1000)
    async with await H2Client.connect(host, port) as client:
        big = client.upload("POST", "/big", headers=[(b"content-length", b"5000")])
        await big.finished()
        assert big.status == 413, client.describe()
        assert b"413" in big.data
        # The connection is still good.
        small = client.request("POST", "/small", body=b"x" * 1000)
        assert await small.body() == b"hello"
        assert not client.goaways
    assert called == ["/small"]
    await server_is_fine(host, port, error_log)


async def test_streamed_body_over_the_limit_is_413(
    serve: Serve, error_log: pytest.LogCaptureFixture
) -> None:
    host, port, state = await serve(apps.hello, limit_request_body=1000)
    async with await H2Client.connect(host, port) as client:
        big = client.upload("POST", "/big")
        await client.send_body(big.sid, b"x" * 600, end=False)
        await client.send_body(big.sid, b"x" * 600, end=False)
        await big.finished()
        assert big.status == 413, client.describe()
        small = client.request("POST", "/small", body=b"x" * 1000)
        assert await small.body() == b"hello"
        assert not client.goaways
    assert state.counters.bad_requests == 1
    await server_is_fine(host, port, error_log)


async def test_body_over_the_limit_after_the_response_started_resets_the_stream(
    serve: Serve, error_log: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"early", "more_body": True})
        await apps.drain_body(receive)
        await send({"type": "http.response.body", "body": b""})

    host, port, _ = await serve(app, limit_request_body=1000)
    async with await H2Client.connect(host, port) as client:
        stream = client.upload("POST", "/")
        await stream.wait(lambda: stream.headers is not None)
        await client.send_body(stream.sid, b"x" * 2000)
        await stream.finished()
        assert stream.status == 200
        assert stream.reset_code == CANCEL, client.describe()
        assert not client.goaways
    await get_200(host, port)


async def test_concurrency_limit_is_503_on_the_stream(
    serve: Serve, error_log: pytest.LogCaptureFixture
) -> None:
    app = Gate(path="/hold")
    host, port, state = await serve(app, limit_concurrency=1)
    async with await H2Client.connect(host, port) as client:
        held = client.request("GET", "/hold")
        await client.wait(lambda: state.active == 1)
        refused = await client.request("GET", "/refused").finished()
        assert refused.status == 503
        assert refused.ended
        app.release.set()
        assert await held.body() == b"ok"
        again = client.request("GET", "/again")
        assert await again.body() == b"ok"
    assert state.counters.rejected_overload == 1
    await server_is_fine(host, port, error_log)


async def test_plain_connect_is_501(serve: Serve, error_log: pytest.LogCaptureFixture) -> None:
    host, port, _ = await serve(apps.hello)
    async with await H2Client.connect(host, port) as client:
        connect = client.open_stream(
            [(b":method", b"CONNECT"), (b":authority", b"example.org:443")], end=False
        )
        await connect.finished()
        assert connect.status == 501, client.describe()
        stream = client.request("GET", "/")
        assert await stream.body() == b"hello"
    await server_is_fine(host, port, error_log)


# Any frames at all ------------------------------------------------------------------------------


class FuzzServer(ThreadedServer):
    """The gateway on a free port in a thread with its own loop; records what it logs."""

    def __init__(self) -> None:
        config = Config(
            app=apps.hello,
            limit_request_head=8 * 1024,
            limit_request_body=64 * 1024,
            timeout_request_headers=3.0,
            h2_max_concurrent_streams=8,
        )
        super().__init__(apps.hello, config, "h2-fuzz-server", logging.WARNING)

    def problems(self) -> list[str]:
        """Loop errors, and gateway records at WARNING or above but the expected ones."""
        found = [str(context.get("message")) for context in self.loop_errors]
        found += [
            record.getMessage()
            for record in self.records
            if "control frame flood" not in record.getMessage()
        ]
        return found


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[FuzzServer]:
    server = FuzzServer().start()
    yield server
    server.stop()


STREAM_IDS = st.sampled_from([1, 1, 1, 3, 5, 2, 0x7FFFFFFF])
PAYLOAD = st.binary(max_size=40)
FLAGS = st.integers(0, 255)


def _flags(frame: Frame, bits: int) -> Frame:
    for flag in frame.defined_flags:
        if bits & flag.bit:
            frame.flags.add(flag.name)
    return frame


@st.composite
def hyperframe_frame(draw: st.DrawFn) -> bytes:
    """A frame built by hyperframe: well-formed on its own, not in sequence."""
    kind = draw(st.sampled_from(["data", "headers", "priority", "rst", "settings", "ping",
                                 "goaway", "window", "continuation", "push"]))  # fmt: skip
    sid = draw(STREAM_IDS)
    bits = draw(FLAGS)
    frame: Frame
    if kind == "data":
        frame = DataFrame(sid, draw(PAYLOAD))
    elif kind == "headers":
        encoder = hpack.Encoder()
        headers = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                   (b":authority", b"fuzz")]  # fmt: skip
        data = draw(st.one_of(st.just(encoder.encode(headers)), PAYLOAD))
        frame = HeadersFrame(sid, data)
    elif kind == "priority":
        frame = PriorityFrame(sid, depends_on=draw(STREAM_IDS), stream_weight=draw(FLAGS))
    elif kind == "rst":
        frame = RstStreamFrame(sid, error_code=draw(st.integers(0, 15)))
    elif kind == "settings":
        pairs = st.dictionaries(st.integers(0, 9), st.integers(0, 2**32 - 1), max_size=3)
        frame = SettingsFrame(0, settings=draw(pairs))
        bits &= ~1  # an ACK carries no settings
    elif kind == "ping":
        frame = PingFrame(0, opaque_data=draw(st.binary(min_size=8, max_size=8)))
    elif kind == "goaway":
        frame = GoAwayFrame(0, last_stream_id=sid, error_code=draw(st.integers(0, 15)))
    elif kind == "window":
        frame = WindowUpdateFrame(draw(st.sampled_from([0, 1, 3])),
                                  window_increment=draw(st.integers(1, 2**31 - 1)))  # fmt: skip
    elif kind == "continuation":
        frame = ContinuationFrame(sid, draw(PAYLOAD))
    else:
        frame = PushPromiseFrame(sid, promised_stream_id=2, data=draw(PAYLOAD))
    return bytes(_flags(frame, bits).serialize())


@st.composite
def any_frame(draw: st.DrawFn) -> bytes:
    """Any frame header with any payload: types, flags and stream ids hyperframe rejects too."""
    kind = draw(st.one_of(st.integers(0, 10), st.integers(0, 255)))
    return raw_frame(kind, draw(FLAGS), draw(st.one_of(STREAM_IDS, st.integers(0, 2**31 - 1))),
                     draw(PAYLOAD))  # fmt: skip


FRAME_SEQUENCES = st.lists(st.one_of(hyperframe_frame(), any_frame()), min_size=1, max_size=8)


def exchange(port: int, data: bytes) -> tuple[list[Frame], bool]:
    """Send ``data`` after the preface, then a PING; read until its ACK or the close.

    The server's frames (all of them parsed) and whether it closed the connection.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    marker = b"fuzzdone"
    received = b""
    closed = False
    try:
        with contextlib.suppress(OSError):  # the server may close early
            sock.sendall(client_preface() + data + ping(marker))
        while True:
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                piece = b""
            except TimeoutError:
                raise AssertionError(f"neither the PING ACK nor a close: {received!r}") from None
            if not piece:
                closed = True
                break
            received += piece
            frames, rest = parse_frames(received)
            if any(isinstance(f, PingFrame) and f.opaque_data == marker and "ACK" in f.flags
                   for f in frames):  # fmt: skip
                break
    finally:
        sock.close()
    frames, rest = parse_frames(received)
    assert rest == b"", f"the server sent a partial frame: {rest!r}"
    return frames, closed


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frames=FRAME_SEQUENCES)
def test_any_frames_get_clean_frames_or_goaway(
    fuzz_server: FuzzServer, frames: list[bytes]
) -> None:
    received, closed = exchange(fuzz_server.port, b"".join(frames))
    assert received, "the server sent nothing, not even its SETTINGS"
    assert isinstance(received[0], SettingsFrame)
    goaways = [frame for frame in received if isinstance(frame, GoAwayFrame)]
    # The server's GOAWAY is its last word; it closes only after one (or the client's own).
    assert len(goaways) <= 1, received
    if goaways:
        assert received[-1] is goaways[0], received
        assert closed
    client_goaway = any(frame[3] == 0x7 for frame in frames)
    if closed and not client_goaway:
        assert goaways, f"closed without GOAWAY: {received}"
    assert fuzz_server.problems() == []


def test_server_still_serves_after_the_fuzzing(fuzz_server: FuzzServer) -> None:
    asyncio.run(get_200("127.0.0.1", fuzz_server.port))
    assert fuzz_server.problems() == []
    # The last examples' streams end in the server's thread as their connections go: wait
    # (bounded) for every one of them to finish rather than race it.
    deadline = time.monotonic() + 5
    while fuzz_server.state.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fuzz_server.state.active == 0
