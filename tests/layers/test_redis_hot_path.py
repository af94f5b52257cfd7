"""The direct-send hot path on its own connections (roomcast.layers.redis.link, batching,
inbox), against real redis-server processes: pipelining, read-ahead, forgotten scripts, dead
and frozen servers."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from roomcast.layers import LayerConnectionError
from roomcast.layers.redis import RedisChannelLayer
from roomcast.layers.redis.hosts import HostSpec
from roomcast.layers.redis.link import RespLink
from roomcast.layers.redis.resp import pack

from tests.layers.test_redis_design import stat
from tests.redis_server import RedisServer


async def test_link_answers_in_order_and_fails_what_waits_when_the_server_dies(
    own_redis_server: RedisServer,
) -> None:
    link = await RespLink.open(HostSpec(own_redis_server.url))
    loop = asyncio.get_running_loop()
    got: list[Any] = []
    done = loop.create_future()

    def collect(replies: list[Any] | BaseException) -> None:
        got.append(replies)
        if len(got) == 3:
            done.set_result(None)

    # One write: two requests of one command each, then one request of two commands.
    link.send(pack("INCR", "n") * 2, 1, collect, requests=2)
    link.send(pack("INCR", "n") + pack("GET", "n"), 2, collect)
    await asyncio.wait_for(done, 5)
    assert got == [[1], [2], [3, b"3"]]

    waited = loop.create_future()
    link.send(pack("BLPOP", "nothing", 0), 1, waited.set_result, blocking=3600)
    own_redis_server.kill()
    error = await asyncio.wait_for(waited, 5)
    assert isinstance(error, RedisConnectionError)
    assert link.closed
    with pytest.raises(RedisConnectionError):
        link.send(pack("PING"), 1, collect)


async def test_a_frozen_server_times_sends_out_and_they_work_once_it_answers(
    own_redis_server: RedisServer,
) -> None:
    """No reply within socket_timeout: the send fails (after its reconnection attempts) with
    LayerConnectionError instead of hanging; the next send after the server resumes works."""
    server = own_redis_server
    host = {"address": server.url, "socket_timeout": 0.3}
    layer = RedisChannelLayer(hosts=[host], prefix="frozen", capacity=100)
    assert server.proc is not None
    try:
        await layer.send("jobs", {"type": "before"})
        server.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(LayerConnectionError, match="cannot use Redis"):
                await asyncio.wait_for(layer.send("jobs", {"type": "frozen"}), 30)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        await layer.send("jobs", {"type": "after"})
        seen = []
        while not seen or seen[-1] != "after":
            seen.append((await asyncio.wait_for(layer.receive("jobs"), 10))["type"])
        assert seen[0] == "before"
    finally:
        await layer.close()


async def test_sends_in_flight_when_the_server_forgets_its_scripts_keep_their_order(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """Several pipelined batches all answered NOSCRIPT: each command runs once, with EVAL,
    in the order sent, and nothing sent meanwhile overtakes them."""
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix, capacity=1000)
    try:
        await layer.send("warm", {"type": "x"})  # the link is open: the next send goes at once
        redis_server.command("SCRIPT", "FLUSH")
        evals = stat(redis_server, "commandstats", r"cmdstat_eval:calls=(\d+)")
        sends = []
        for wave in range(5):  # one wave per event-loop tick: batches pile up in flight
            sends += [
                asyncio.ensure_future(layer.send("jobs", {"type": "job", "n": wave * 4 + n}))
                for n in range(4)
            ]
            await asyncio.sleep(0)
        await asyncio.gather(*sends)
        got = [(await asyncio.wait_for(layer.receive("jobs"), 5))["n"] for _ in range(20)]
        assert got == list(range(20))
        assert redis_server.command("LLEN", f"{redis_prefix}:c{{jobs}}") == b":0\r\n"
        assert 1 <= stat(redis_server, "commandstats", r"cmdstat_eval:calls=(\d+)") - evals <= 20
    finally:
        await layer.flush()
        await layer.close()


async def test_inbox_read_ahead_delivers_each_message_once_in_order(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """The inbox keeps several BLMPOPs queued at the server: one at a time or in bursts,
    messages from another process arrive all, once each, in the order sent."""
    receiver = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix, capacity=5000)
    sender = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix, capacity=5000)
    try:
        channel = await receiver.new_channel()
        for n in range(300):  # one at a time
            await sender.send(channel, {"type": "m", "n": n})
        for start in range(300, 2300, 250):  # bursts sharing round trips
            await asyncio.gather(
                *(sender.send(channel, {"type": "m", "n": n}) for n in range(start, start + 250))
            )
        got = [(await asyncio.wait_for(receiver.receive(channel), 5))["n"] for _ in range(2300)]
        assert got == list(range(2300))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(receiver.receive(channel), 0.3)
        assert receiver.counters.dropped == 0
    finally:
        await sender.close()
        await receiver.flush()
        await receiver.close()


async def test_close_fails_sends_still_waiting(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix)
    await layer.send("warm", {"type": "x"})
    waiting = asyncio.ensure_future(layer.send("jobs", {"type": "x"}))
    await asyncio.sleep(0)  # written, its reply not read yet
    await layer.close()
    with contextlib.suppress(LayerConnectionError):  # closed before the reply came: told so
        await asyncio.wait_for(waiting, 5)  # either way, nothing hangs
    cleaner = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix)
    await cleaner.flush()
    await cleaner.close()


def test_hot_path_under_uvloop(redis_server: RedisServer, redis_prefix: str) -> None:
    """The links take over uvloop's transports too (layer-bench --loop uvloop, gateway)."""
    uvloop = pytest.importorskip("uvloop")

    async def exchange() -> list[str]:
        receiver = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix)
        sender = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix)
        try:
            channel = await receiver.new_channel()
            await sender.send(channel, {"type": "direct"})
            await sender.send("jobs", {"type": "plain"})
            return [
                (await asyncio.wait_for(receiver.receive(channel), 5))["type"],
                (await asyncio.wait_for(receiver.receive("jobs"), 5))["type"],
            ]
        finally:
            await sender.close()
            await receiver.flush()
            await receiver.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(exchange()) == ["direct", "plain"]
