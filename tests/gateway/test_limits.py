"""Limits per client address and per WebSocket: real gateway processes, real clients.

A flood is closed with 1008 and a reason, the Nth connection from one address is refused while
other addresses (forwarded by a trusted proxy) are not, and each refusal is counted in the
process's /metrics. The token bucket's arithmetic is checked with a clock the test moves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from roomcast.gateway.config import Config, ConfigError
from roomcast.gateway.limits import BYTE_RATE, MESSAGE_RATE, TOO_MANY, Bucket
from websockets.exceptions import ConnectionClosed

from tests.gateway.apps import GatewayProcess, free_port
from tests.metrics_support import Scrape

APP = "tests.gateway.apps:echo"
WAIT = 15.0


async def get(port: int, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=WAIT) as client:
        return await client.get(f"http://127.0.0.1:{port}/", headers=headers)


def scrape(port: int) -> Scrape:
    return Scrape.parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=WAIT).text)


async def closed_with(ws: websockets.ClientConnection) -> tuple[int | None, str | None]:
    """Read until the server closes: its close code and reason."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), WAIT)
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    received = ws.protocol.close_rcvd
    assert received is not None, "the server did not send a Close frame"
    return received.code, received.reason


@contextlib.asynccontextmanager
async def connected(
    port: int, headers: dict[str, str] | None = None
) -> AsyncIterator[websockets.ClientConnection]:
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/chat/", additional_headers=headers, open_timeout=WAIT
    ) as ws:
        yield ws


# The bucket -----------------------------------------------------------------------------------


def test_bucket_holds_one_seconds_worth_and_refills_continuously() -> None:
    bucket = Bucket(rate=10, burst=10, now=0.0)
    assert all(bucket.take(1, 0.0) for _ in range(10))
    assert not bucket.take(1, 0.0)  # empty
    assert not bucket.take(1, 0.05)  # half a token back
    assert bucket.take(1, 0.1)  # one token a tenth of a second
    assert all(bucket.take(1, 100.0) for _ in range(10))  # never more than the burst
    assert not bucket.take(1, 100.0)


def test_bucket_lets_one_message_larger_than_itself_through_from_full() -> None:
    bucket = Bucket(rate=100, burst=100, now=0.0)
    assert bucket.take(250, 0.0)  # full: the big message passes, the bucket owes 150
    assert not bucket.take(1, 1.0)  # 1 s later it still owes 50
    assert bucket.take(1, 1.6)


def test_limit_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="limit_connections_per_client must be a positive"):
        Config(app="a:b", limit_connections_per_client=0)
    with pytest.raises(ConfigError, match="websocket_max_messages_per_second must be a positive"):
        Config(app="a:b", websocket_max_messages_per_second=-1)


# Per-WebSocket rates ------------------------------------------------------------------------------


async def test_a_message_flood_is_closed_with_1008_and_counted() -> None:
    port, metrics_port = free_port(), free_port()
    args = ("-p", str(port), "--metrics-port", str(metrics_port))
    args += ("--websocket-max-messages-per-second", "20")
    with GatewayProcess(APP, *args) as gateway:
        gateway.wait_listening()
        # Within the burst: every message echoed, the connection stays open.
        async with connected(port) as honest:
            for i in range(15):
                await honest.send(f"ok {i}")
                assert await asyncio.wait_for(honest.recv(), WAIT) == f"ok {i}"
            # A flood: far more than one second's worth at once.
            async with connected(port) as flooder:
                for i in range(200):
                    try:
                        await flooder.send(f"spam {i}")
                    except ConnectionClosed:
                        break
                code, reason = await closed_with(flooder)
            assert (code, reason) == (1008, MESSAGE_RATE)
            await honest.send("still here")  # another connection is not affected
            assert await asyncio.wait_for(honest.recv(), WAIT) == "still here"
        values = scrape(metrics_port)
        assert (
            values.value("roomcast_gateway_limit_refusals_total", limit="messages_per_second") == 1
        )
        assert values.value("roomcast_gateway_limit_refusals_total", limit="bytes_per_second") == 0
        gateway.wait_for("closing WebSocket /chat/ from 127.0.0.1: message rate limit exceeded")
        for _ in range(300):  # the access log (stdout): the session's end, code 1008
            if '"WSDISCONNECT /chat/" 1008' in gateway.stdout:
                break
            await asyncio.sleep(0.05)
        assert '"WSDISCONNECT /chat/" 1008' in gateway.stdout, gateway.stdout
        assert "Traceback" not in gateway.stderr


async def test_a_byte_flood_is_closed_with_1008() -> None:
    port = free_port()
    args = ("-p", str(port), "--websocket-max-bytes-per-second", "10000")
    with GatewayProcess(APP, *args) as gateway:
        gateway.wait_listening()
        async with connected(port) as ws:
            await ws.send(b"x" * 30_000)  # larger than the bucket: passes from a full bucket
            assert len(await asyncio.wait_for(ws.recv(), WAIT)) == 30_000
            with contextlib.suppress(ConnectionClosed):
                await ws.send(b"y" * 5_000)  # the bucket is in debt: over the limit
            code, reason = await closed_with(ws)
        assert (code, reason) == (1008, BYTE_RATE)


# Per client address -----------------------------------------------------------------------------


async def test_the_nth_connection_from_one_address_is_refused_others_are_not() -> None:
    port, metrics_port = free_port(), free_port()
    args = ("-p", str(port), "--metrics-port", str(metrics_port))
    args += ("--limit-connections-per-client", "2", "--proxy-headers")
    with GatewayProcess(APP, *args) as gateway:
        gateway.wait_listening()
        async with connected(port) as first, connected(port) as second:
            # The third from 127.0.0.1: accepted and closed at once, 1008 with the reason.
            async with connected(port) as third:
                assert await closed_with(third) == (1008, TOO_MANY)
            # HTTP from the same address: 429, without reaching the app.
            answer = await get(port)
            assert (answer.status_code, answer.text) == (429, TOO_MANY + "\n")
            # Clients a trusted proxy (127.0.0.1) forwards count under their own addresses.
            other = {"X-Forwarded-For": "203.0.113.7"}
            async with connected(port, other) as a, connected(port, other) as b:
                for ws in (a, b):
                    await ws.send("from another address")
                    assert await asyncio.wait_for(ws.recv(), WAIT) == "from another address"
                async with connected(port, other) as c:
                    assert await closed_with(c) == (1008, TOO_MANY)
            forwarded = await get(port, other)
            assert forwarded.text == "hello"
            for ws in (first, second):  # those already open are untouched
                await ws.send("ping")
                assert await asyncio.wait_for(ws.recv(), WAIT) == "ping"
        # Once they closed, the address may connect again.
        for _ in range(50):
            if (await get(port)).status_code == 200:
                break
            await asyncio.sleep(0.05)
        async with connected(port) as again:
            await again.send("back")
            assert await asyncio.wait_for(again.recv(), WAIT) == "back"
        values = scrape(metrics_port)
        refused = values.value(
            "roomcast_gateway_limit_refusals_total", limit="connections_per_client"
        )
        assert refused == 3  # the third WebSocket, the request, the forwarded third
