"""The Redis layer's own history (issue 13) beyond the contract: ordering across senders, the
fence, encryption, foreign bytes, calls from other threads. Real redis-server processes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from roomcast.layers.history import POSITION_KEY, StreamPosition, message_position
from roomcast.layers.redis import RedisChannelLayer

from tests.redis_server import RedisServer

HISTORY = {"room*": {"size": 1000}}
Make = Callable[..., RedisChannelLayer]


@pytest.fixture
async def make(redis_server: RedisServer, redis_prefix: str) -> AsyncIterator[Make]:
    """Layers on the session's server under this test's prefix (each its own process id and
    connections: two of them are two processes as Redis sees them); closed at teardown."""
    made: list[RedisChannelLayer] = []

    def build(**options: Any) -> RedisChannelLayer:
        options.setdefault("hosts", [redis_server.url])
        options.setdefault("prefix", redis_prefix)
        options.setdefault("history", HISTORY)
        layer = RedisChannelLayer(**options)
        made.append(layer)
        return layer

    yield build
    for layer in made:
        await layer.close()


async def drain(layer: RedisChannelLayer, channel: str, count: int) -> list[dict[str, Any]]:
    return [await asyncio.wait_for(layer.receive(channel), 10) for _ in range(count)]


def offsets(messages: list[dict[str, Any]]) -> list[int]:
    positions = [message_position(message) for message in messages]
    return [stamped.position.offset for stamped in positions if stamped is not None]


async def test_two_processes_sending_at_once_give_every_member_one_order(make: Make) -> None:
    """Both layers have members and both send at once: each process hands its own sends on
    from the script's reply and the other's from pub/sub, yet every member gets offsets
    1..600 in order, once: a copy that is not next in line waits for the one before it."""
    a, b = make(capacity=2000), make(capacity=2000)
    members = {
        a: [await a.new_channel() for _ in range(2)],
        b: [await b.new_channel() for _ in range(2)],
    }
    for layer, channels in members.items():
        for channel in channels:
            await layer.group_add("room", channel)

    async def talk(layer: RedisChannelLayer, who: str) -> None:
        for n in range(300):
            await layer.group_send("room", {"type": "m", "who": who, "n": n})

    await asyncio.gather(talk(a, "a"), talk(b, "b"), talk(a, "a2"))  # a sends concurrently too
    epochs = set()
    for layer, channels in members.items():
        for channel in channels:
            got = await drain(layer, channel, 900)
            assert offsets(got) == list(range(1, 901))
            for who in ("a", "b", "a2"):
                assert [m["n"] for m in got if m["who"] == who] == list(range(300))
            epochs |= {message_position(m).position.epoch for m in got}  # type: ignore[union-attr]
    assert len(epochs) == 1
    for layer in (a, b):
        assert layer.stats()["history_missed"] == 0
    waited = [layer.stats()["history_waited"] for layer in (a, b)]
    print(f"\ncopies that waited for an earlier one, per process: {waited}")


async def test_a_restart_from_an_older_snapshot_starts_a_new_epoch(make: Make) -> None:
    """The fence: a server that came back with the hash of an older snapshot (as a promoted
    replica that lacks the last writes) would hand offsets 4 and 5 out again; its new run_id
    makes the next script start a new epoch instead."""
    server = RedisServer().start()
    try:
        layer = make(hosts=[server.url], prefix="fence", retry_timeout=15)
        for n in range(3):
            await layer.group_send("room", {"type": "m", "n": n})
        assert server.command("SAVE").startswith(b"+OK")  # dump.rdb holds offsets 1..3
        for n in range(3, 5):
            await layer.group_send("room", {"type": "m", "n": n})
        last = await layer.group_position("room")
        assert last.offset == 5
        await asyncio.to_thread(server.restart)  # SIGKILL: 4 and 5 were never saved
        assert b"fence:hm{room}" in server.command("KEYS", "*")  # the old epoch came back
        await layer.group_send("room", {"type": "m", "n": 5})
        after = await layer.group_position("room")
        assert after.epoch != last.epoch
        assert after.offset == 1
        resumed = await layer.group_history("room", since=last)
        assert resumed.recovered is False
        assert [m["n"] for m in resumed.messages] == [5]
    finally:
        server.cleanup()


async def test_a_server_refusing_info_gives_no_fence_and_history_works(make: Make) -> None:
    server = RedisServer(extra_args=("--rename-command", "INFO", "")).start()
    try:
        layer = make(hosts=[server.url], prefix="noinfo")
        member = await layer.new_channel()
        await layer.group_add("room", member)
        for n in range(3):
            await layer.group_send("room", {"type": "m", "n": n})
        assert offsets(await drain(layer, member, 3)) == [1, 2, 3]
        result = await layer.group_history("room")
        assert ([m["n"] for m in result.messages], result.recovered) == ([0, 1, 2], True)
    finally:
        server.cleanup()


async def test_an_encrypted_history_is_sealed_in_redis_and_read_back(
    make: Make, redis_server: RedisServer, redis_prefix: str
) -> None:
    keys = ["first key", "second key"]
    a = make(symmetric_encryption_keys=keys)
    b = make(symmetric_encryption_keys=keys[1:] + keys[:1])  # decrypts with either
    member = await b.new_channel()
    await b.group_add("room", member)
    await a.group_send("room", {"type": "m", "text": "a secret"})
    (live,) = await drain(b, member, 1)
    assert live["text"] == "a secret"
    stream = redis_server.command("XRANGE", f"{redis_prefix}:h{{room}}", "-", "+")
    assert b"a secret" not in stream  # sealed in the stream too
    result = await b.group_history("room")
    assert result.messages == [live]
    stranger = make(symmetric_encryption_keys=["another key"])
    unreadable = await stranger.group_history("room")
    assert (unreadable.messages, unreadable.recovered) == ([], False)
    assert stranger.counters.rejected == 1


async def test_foreign_bytes_on_a_history_group_are_rejected_not_fatal(
    make: Make, redis_server: RedisServer, redis_prefix: str
) -> None:
    layer = make()
    member = await layer.new_channel()
    await layer.group_add("room", member)
    channel = f"{redis_prefix}:g{{room}}"
    for junk in (b"\x00", b"\x00\x05ab:c", b"\x00\x04ab:9", b"\x00\xff" + b"z" * 30):
        redis_server.command("PUBLISH", channel, junk.decode("latin-1"))
    await layer.group_send("room", {"type": "m", "n": 1})
    (message,) = await drain(layer, member, 1)
    assert message["n"] == 1
    assert offsets([message]) == [1]
    assert layer.counters.rejected == 4


async def test_history_calls_from_another_thread(make: Make) -> None:
    layer = make()
    member = await layer.new_channel()
    await layer.group_add("room", member)

    def from_a_thread() -> tuple[StreamPosition, list[int]]:
        async_to_sync(layer.group_send)("room", {"type": "m", "n": 7})
        position = async_to_sync(layer.group_position)("room")
        history = async_to_sync(layer.group_history)("room")
        return position, [m["n"] for m in history.messages]

    position, numbers = await asyncio.to_thread(from_a_thread)
    assert (position.offset, numbers) == (1, [7])
    (message,) = await drain(layer, member, 1)
    assert message[POSITION_KEY] == f"room:{position}"


async def test_history_calls_wait_out_a_short_outage(own_redis_server: RedisServer) -> None:
    layer = RedisChannelLayer(
        hosts=[own_redis_server.url], prefix="blip", history=HISTORY, retry_timeout=15
    )
    try:
        await layer.group_send("room", {"type": "m", "n": 0})
        own_redis_server.kill()

        async def come_back() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(own_redis_server.start)

        back = asyncio.ensure_future(come_back())
        position = await layer.group_position("room")  # waits, then a new epoch: data gone
        await back
        assert position.offset == 0
        assert re.fullmatch(r"[A-Za-z0-9_-]{12}", position.epoch)
    finally:
        await layer.close()
