"""Surges and outages at the layer: no pool to exhaust, bounded queues, outages waited out and
logged twice, check() and readiness, membership that survives a Redis that is down."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from roomcast.layers import LayerConfigError, LayerConnectionError
from roomcast.layers.redis import RedisChannelLayer
from roomcast.layers.redis.pipeline import MAX_QUEUED

from roomcast import readiness
from tests.redis_server import RedisServer, free_port

LAYER_SOURCES = Path(__file__).resolve().parents[2] / "layers" / "redis"


async def eventually(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await check()
        except LayerConnectionError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{check.__name__} did not succeed within {timeout} s")
        await asyncio.sleep(0.05)


async def loss_noticed(layer: RedisChannelLayer) -> None:
    """Wait until the layer has seen its connection drop. (A send written to a connection
    whose loss is not yet noticed fails at once: Redis may or may not have run it.)"""

    async def noticed() -> bool:
        return not layer._pipes[0].connected

    await eventually(noticed)


def connections_of(server: RedisServer, layer: RedisChannelLayer) -> int:
    return server.command("CLIENT", "LIST").decode().count(f":{layer.process_id}:")


@pytest.fixture(autouse=True)
def fresh_readiness() -> Iterator[None]:
    readiness.reset()
    yield
    readiness.reset()


async def test_ten_thousand_concurrent_calls_complete_on_a_few_connections(
    own_redis_server: RedisServer,
) -> None:
    """10,000 concurrent group_add + group_send: all complete, each member gets its message,
    the queue never holds more than MAX_QUEUED calls, peak memory stays bounded, and the
    process uses a handful of Redis connections throughout."""
    calls = 10_000
    layer = RedisChannelLayer(hosts=[own_redis_server.url], prefix="surge", capacity=10)
    try:
        channels = [await layer.new_channel() for _ in range(calls)]
        peak_queue = 0
        peak_connections = 0
        stop = asyncio.Event()

        async def sample() -> None:
            nonlocal peak_queue, peak_connections
            while not stop.is_set():
                peak_queue = max(peak_queue, layer.stats()["queued_calls"])
                await asyncio.sleep(0.01)

        async def member(index: int) -> None:
            room = f"room{index}"
            await layer.group_add(room, channels[index])
            await layer.group_send(room, {"type": "hello", "n": index})

        sampler = asyncio.ensure_future(sample())
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            results = await asyncio.gather(
                *(member(index) for index in range(calls)), return_exceptions=True
            )
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
            stop.set()
            await sampler
        peak_connections = connections_of(own_redis_server, layer)
        failures = [result for result in results if isinstance(result, BaseException)]
        assert failures == []
        for index in (0, 1, calls // 2, calls - 1):
            got = await asyncio.wait_for(layer.receive(channels[index]), 5)
            assert got == {"type": "hello", "n": index}
        assert layer.counters.group_sent == calls
        assert 0 < peak_queue <= MAX_QUEUED
        assert peak_connections <= 4  # commands, subscriptions, inbox (no plain receivers)
        # What 10,000 callers hold themselves (coroutines, futures, the messages) is most of
        # it; the bound says memory does not grow with anything but the callers.
        assert peak < 200 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
        print(f"10,000 concurrent calls: peak {peak / 1e6:.1f} MB traced, queue peak {peak_queue}")
    finally:
        await layer.flush()
        await layer.close()


async def test_callers_past_the_queue_bound_wait_their_turn(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """More sends at once than the queue holds: every one completes, in order per channel."""
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix, capacity=20_000)
    try:
        count = MAX_QUEUED * 3
        await asyncio.gather(*(layer.send("jobs", {"type": "job", "n": n}) for n in range(count)))
        got = [(await asyncio.wait_for(layer.receive("jobs"), 5))["n"] for _ in range(count)]
        assert got == list(range(count))
    finally:
        await layer.flush()
        await layer.close()


async def test_a_short_outage_is_waited_out_and_logged_once_each_way(
    own_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis killed and restarted while 20 callers send: they wait (retry_timeout 10 s), all
    their group messages arrive, and the outage is two log lines, not one per call."""
    server = own_redis_server
    sender = RedisChannelLayer(hosts=[server.url], prefix="blip", retry_timeout=10)
    receiver = RedisChannelLayer(hosts=[server.url], prefix="blip", capacity=10_000)
    try:
        channel = await receiver.new_channel()
        await receiver.group_add("room", channel)
        await sender.group_send("room", {"type": "warm", "n": -1})
        assert (await asyncio.wait_for(receiver.receive(channel), 5))["n"] == -1
        caplog.clear()
        caplog.set_level(logging.INFO, logger="roomcast.layers.redis")
        server.kill()
        await loss_noticed(sender)

        async def say(n: int) -> None:
            await sender.group_send("room", {"type": "m", "n": n})

        sends = [asyncio.ensure_future(say(n)) for n in range(20)]
        await asyncio.sleep(1.0)
        assert not any(send.done() for send in sends)  # waiting, not failing
        assert "channel layer 'blip'" in readiness.not_ready()
        server.start()
        await asyncio.wait_for(asyncio.gather(*sends), 30)

        async def resubscribed() -> bool:  # the receiver's subscription is back: 20 arrive
            return receiver.stats()["outages"] >= 1 and receiver._subscribers[0].wanted != []

        await eventually(resubscribed)
        # Messages published before the receiver resubscribed are lost for it (pub/sub keeps
        # no backlog); those published after arrive. Here the sender's calls were queued
        # until its own reconnection; count what arrived and require order.
        seen = []
        while True:
            try:
                seen.append((await asyncio.wait_for(receiver.receive(channel), 0.5))["n"])
            except TimeoutError:
                break
        assert seen == sorted(seen)
        lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
        sender_lines = [r.getMessage() for r in lines if "'blip'" in r.getMessage()]
        # Two layers (two "processes"): each says once that Redis went and once that it is back.
        assert len(sender_lines) <= 4, sender_lines
        assert sum("is unreachable" in line for line in sender_lines) == 2
        assert sum("is back after" in line for line in sender_lines) == 2
        assert readiness.not_ready() == {}
    finally:
        await sender.close()
        await receiver.close()


async def test_a_long_outage_fails_calls_after_retry_timeout(own_redis_server: RedisServer) -> None:
    layer = RedisChannelLayer(hosts=[own_redis_server.url], prefix="long", retry_timeout=0.5)
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        own_redis_server.kill()
        await loss_noticed(layer)
        with pytest.raises(LayerConnectionError, match=r"retry_timeout=0\.5"):
            await asyncio.wait_for(layer.group_send("room", {"type": "x"}), 10)
        with pytest.raises(LayerConnectionError):
            await asyncio.wait_for(layer.send("jobs", {"type": "x"}), 10)
        # group_discard of our own channel never fails: the local membership goes at once.
        await asyncio.wait_for(layer.group_discard("room", channel), 10)
        assert layer.stats()["local_memberships"] == 0
        assert layer.stats()["unrecorded_discards"] == 1
    finally:
        await layer.close()


class PersistentRedis(RedisServer):
    """A redis-server that keeps its data across a kill (append-only file, fsync always)."""

    persistence_args = ("--save", "", "--appendonly", "yes", "--appendfsync", "always")


async def test_a_discard_made_while_redis_was_down_is_reconciled() -> None:
    server = PersistentRedis().start()
    layer = RedisChannelLayer(
        hosts=[server.url], prefix="rec", retry_timeout=0.5, liveness_timeout=1.5
    )
    try:
        keep, leave = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("room", keep)
        await layer.group_add("room", leave)
        server.kill()
        await layer.group_discard("room", leave)  # Redis is down: returns, record waits
        server.start()  # the record is still there (AOF) ...

        async def reconciled() -> bool:
            return await layer.group_members("room") == [keep]

        await eventually(reconciled)  # ... and goes once the layer reaches Redis again
        assert layer.stats()["unrecorded_discards"] == 0
        assert server.command("ZSCORE", "rec:g{room}", leave) == b"$-1\r\n"
    finally:
        await layer.close()
        server.cleanup()


async def test_check_names_the_host_and_readiness_follows_redis_without_traffic() -> None:
    port = free_port()
    layer = RedisChannelLayer(
        hosts=[{"address": f"redis://127.0.0.1:{port}/0", "socket_connect_timeout": 1}],
        prefix="ready",
        alias="default",
    )
    server = RedisServer(port)
    try:
        with pytest.raises(LayerConnectionError, match=rf"127\.0\.0\.1:{port}"):
            await asyncio.wait_for(layer.check(), 10)
        assert list(readiness.not_ready()) == ["channel layer 'default'"]
        assert f"127.0.0.1:{port}" in readiness.not_ready()["channel layer 'default'"]
        server.start()  # no call is made: the layer reconnects in the background

        async def ready() -> bool:
            return readiness.not_ready() == {}

        await eventually(ready)
        await layer.check()  # and check() passes now
    finally:
        await layer.close()
        server.cleanup()


async def test_check_of_a_server_that_refuses_the_password() -> None:
    server = RedisServer(extra_args=("--requirepass", "right"))
    server.start()
    layer = RedisChannelLayer(hosts=[f"redis://:wrong@127.0.0.1:{server.port}/0"], prefix="pw")
    try:
        with pytest.raises(LayerConnectionError, match="refused AUTH"):
            await asyncio.wait_for(layer.check(), 10)
    finally:
        await layer.close()
        server.cleanup()


async def test_in_memory_layer_check_is_a_no_op() -> None:
    from roomcast.layers import InMemoryChannelLayer

    await InMemoryChannelLayer().check()


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"retry_timeout": 0}, "retry_timeout must be a number of seconds between"),
        ({"retry_timeout": -1}, "retry_timeout"),
        ({"retry_timeout": "5"}, "retry_timeout"),
        ({"retry_timeout": True}, "retry_timeout"),
        ({"liveness_timeout": 0.1}, "liveness_timeout must be a number of seconds between 0.5"),
        ({"liveness_timeout": 10_000}, "liveness_timeout"),
        ({"subscribe_timeout": 0}, "subscribe_timeout"),
        ({"alias": 3}, "alias must be a str"),
    ],
)
def test_bad_timeouts_are_refused_with_their_name(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(LayerConfigError, match=re.escape(fragment)):
        RedisChannelLayer(**options)


async def test_the_python_reader_carries_the_layer_too(
    redis_server: RedisServer, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With hiredis hidden the links read with the plain-Python reader; everything works."""
    monkeypatch.setitem(sys.modules, "hiredis", None)
    from roomcast.layers.redis.resp import ReplyParser, make_reader

    assert isinstance(make_reader(), ReplyParser)
    receiver = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix)
    sender = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_prefix)
    try:
        channel = await receiver.new_channel()
        await receiver.group_add("room", channel)
        await sender.group_send("room", {"type": "group"})
        await sender.send(channel, {"type": "direct"})
        await sender.send("jobs", {"type": "plain"})
        got = sorted([(await asyncio.wait_for(receiver.receive(channel), 5))["type"]] * 1)
        got.append((await asyncio.wait_for(receiver.receive(channel), 5))["type"])
        assert sorted(got) == ["direct", "group"]
        assert (await asyncio.wait_for(receiver.receive("jobs"), 5))["type"] == "plain"
        assert await sender.group_members("room") == [channel]
    finally:
        await sender.close()
        await receiver.flush()
        await receiver.close()


def test_no_redis_py_internals_are_touched() -> None:
    """The links own their sockets: no private attribute or module of redis-py is used."""
    forbidden = re.compile(r"\._writer|\._reader\b|redis\._parsers|_parsers\.|make_connection")
    for source in sorted(LAYER_SOURCES.glob("*.py")):
        for number, line in enumerate(source.read_text().splitlines(), 1):
            assert not forbidden.search(line), f"{source.name}:{number}: {line.strip()}"


async def test_a_frozen_server_answers_late_and_nothing_is_lost(
    own_redis_server: RedisServer,
) -> None:
    """SIGSTOP for 1 s (shorter than retry_timeout): the calls made meanwhile complete after."""
    server = own_redis_server
    layer = RedisChannelLayer(hosts=[server.url], prefix="freeze", capacity=100)
    assert server.proc is not None
    try:
        await layer.send("jobs", {"type": "before"})
        server.proc.send_signal(signal.SIGSTOP)
        try:
            sends = [
                asyncio.ensure_future(layer.send("jobs", {"type": "m", "n": n})) for n in range(5)
            ]
            await asyncio.sleep(1.0)
            assert not any(send.done() for send in sends)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        await asyncio.wait_for(asyncio.gather(*sends), 10)
        got = [(await asyncio.wait_for(layer.receive("jobs"), 5)).get("n") for _ in range(6)]
        assert got == [None, 0, 1, 2, 3, 4]
    finally:
        await layer.flush()
        await layer.close()
