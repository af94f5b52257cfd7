"""Gap healing under real faults (issue 13): a history group loses nothing across pub/sub cuts.

Two OS processes and a real redis-server: a sender process (``tests.outages.history_sender``)
group_sends 1,000 numbered messages while this test's process, which holds three members of
the group, has its pub/sub connection killed five times (``CLIENT KILL TYPE pubsub``). Each
kill is made while the sender is mid-way through a chunk, and this process's event loop stands
still for the 50 ms the kill command takes, so that messages are published while its
subscription is down: without history they are lost (counted and printed); with history the
layer reads them from the group's stream when it resubscribes and hands them on in order,
before the newer ones, once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from roomcast.layers.redis import RedisChannelLayer

from tests.outages.history_support import Members, Sender, killed, subscribers, until_subscribed
from tests.redis_server import RedisServer

GROUP = "room.healing"
HISTORY = {"room.*": {"size": 5000}}
MESSAGES = 1000
CHUNK = 100
KILL_IN = (1, 2, 4, 6, 8)  # the chunks during which the subscription is killed
EVERY = 0.001  # seconds between two sends


Make = Callable[..., RedisChannelLayer]


@pytest.fixture
async def receiver(own_redis_server: RedisServer) -> AsyncIterator[Make]:
    """Builds this process's layers (members' side) on the test's own server; closes them."""
    made: list[RedisChannelLayer] = []

    def make(**options: Any) -> RedisChannelLayer:
        layer = RedisChannelLayer(
            hosts=[own_redis_server.url], capacity=10_000, retry_timeout=15, **options
        )
        made.append(layer)
        return layer

    yield make
    for layer in made:
        await layer.close()


async def stream_with_kills(
    server: RedisServer, receiver: RedisChannelLayer, history: Any
) -> tuple[Members, dict[str, Any]]:
    """1,000 messages from another process; this process's subscription killed 5 times."""
    members = await Members.join(receiver, GROUP, 3)
    sender = await Sender.start([server.url], receiver.prefix, GROUP, history)
    channel = f"{receiver.prefix}:g{{{GROUP}}}"
    kills = failed = 0
    try:
        for chunk in range(MESSAGES // CHUNK):
            start = chunk * CHUNK
            sending = asyncio.ensure_future(sender.send(start, CHUNK, EVERY))
            if chunk in KILL_IN:
                await until_subscribed(server, channel)  # the kill must cut this process
                await sender.reached(start + 30)
                # Synchronous on purpose: this loop stands still while the command runs.
                kills += killed(server.command("CLIENT", "KILL", "TYPE", "pubsub"))
            result = await sending
            failed += len(result["failed"])
        if history is None:
            await members.wait(lambda numbers: MESSAGES - 1 in numbers)
        else:
            await members.wait(lambda numbers: len(numbers) >= MESSAGES)
        await asyncio.sleep(0.3)  # anything more (a duplicate) would come now
    finally:
        await sender.stop()
        await members.stop()
    assert kills == len(KILL_IN)  # each kill cut this process's one subscription
    assert failed == 0  # only subscriptions were cut: no call failed
    assert subscribers(server, channel) == 1
    return members, receiver.stats()


async def test_a_history_group_loses_nothing_across_five_pubsub_kills(
    own_redis_server: RedisServer, receiver: Make
) -> None:
    layer = receiver(prefix="healed", history=HISTORY)
    members, stats = await stream_with_kills(own_redis_server, layer, HISTORY)
    for channel in members.got:
        assert members.numbers(channel) == list(range(MESSAGES))  # all, in order, once
        offsets = [int(position.rpartition(":")[2]) for _, position in members.got[channel]]
        assert offsets == list(range(1, MESSAGES + 1))  # one epoch, gapless
    print(
        f"\nwith history: {MESSAGES} sent, {len(members.got)} members got all of them; "
        f"healed from the stream: {stats['history_healed']}, stream reads: "
        f"{stats['history_reads']}, duplicates dropped: {stats['history_duplicates']}"
    )
    assert stats["history_healed"] > 0  # the kills did cost pub/sub copies: the stream filled in
    assert stats["history_missed"] == 0
    assert stats["history_epochs_lost"] == 0


async def test_without_history_the_same_kills_lose_messages(
    own_redis_server: RedisServer, receiver: Make
) -> None:
    layer = receiver(prefix="plain")
    members, _ = await stream_with_kills(own_redis_server, layer, None)
    first, *others = members.got
    numbers = members.numbers(first)
    lost = sorted(set(range(MESSAGES)) - set(numbers))
    print(f"\nwithout history: {MESSAGES} sent, each member got {len(numbers)}, lost {len(lost)}")
    assert lost, "the kills cost nothing: this test would not show what history buys"
    assert numbers == sorted(set(numbers))  # what arrives is still in order, once
    for channel in others:
        assert members.numbers(channel) == numbers  # the same copies for every member


async def test_a_hole_the_stream_no_longer_holds_is_skipped_and_counted(
    own_redis_server: RedisServer, receiver: Make
) -> None:
    """The stream keeps 5; this process is cut off (killed subscription, its loop standing
    still for a second) while 100 messages go by: its members get the 5 the stream still has,
    in order, then go on; the rest is counted as missed."""
    server = own_redis_server
    history = {"room.*": {"size": 5}}
    layer = receiver(prefix="trimmed", history=history)
    members = await Members.join(layer, GROUP, 2)
    sender = await Sender.start([server.url], "trimmed", GROUP, history)
    channel = f"trimmed:g{{{GROUP}}}"
    try:
        await sender.send(0, 10, EVERY)
        await members.wait(lambda numbers: len(numbers) >= 10)
        await until_subscribed(server, channel)
        sending = asyncio.ensure_future(sender.send(10, 100, EVERY))
        await sender.reached(12)
        assert killed(server.command("CLIENT", "KILL", "TYPE", "pubsub")) == 1
        time.sleep(1.5)  # noqa: ASYNC251 - on purpose: cut off, this process cannot resubscribe
        result = await sending
        assert result["failed"] == []
        await members.wait(lambda numbers: 109 in numbers)
        await asyncio.sleep(0.3)
    finally:
        await sender.stop()
        await members.stop()
    stats = layer.stats()
    for member in members.got:
        numbers = members.numbers(member)
        assert numbers == sorted(set(numbers))  # in order, once
        assert numbers[:10] == list(range(10))
        assert numbers[-5:] == list(range(105, 110))  # what the stream still had
    missed = 110 - len(members.numbers(next(iter(members.got))))
    print(f"\nsize 5, cut off for 1.5 s: {missed} missed, counted {stats['history_missed']}")
    assert missed > 0  # a hole the stream could not fill (size 5)
    assert stats["history_missed"] == missed
    assert stats["history_epochs_lost"] == 0
