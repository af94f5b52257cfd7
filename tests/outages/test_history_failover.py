"""A history group through a Redis restart without persistence and a real Sentinel failover.

The same two OS processes as ``test_history_healing``: a sender process group_sends numbered
messages, this test's process holds three members. Mid-stream the server loses the history:

* **restart without persistence** (SIGKILL, then a fresh ``redis-server``): every key is gone,
  so the next script starts a new epoch. The members see it (positions of another epoch),
  ``group_history`` from the last position before the restart answers ``recovered=False``,
  and nothing is delivered twice.
* **Sentinel failover** (a master, a replica and three Sentinels, all started here; the
  master is killed and the replica promoted): the replica keeps the replicated hash and
  stream, but the fence (the server's ``run_id``) differs, so the new master starts a new
  epoch instead of handing out offsets a second time. What can be guaranteed is asserted: no
  duplicate, order, the epoch change (so every client is told ``recovered: false``), and
  every message the new master took reaches every member. What replication lost is measured
  and printed: messages the old master took (and published live) but never replicated, which
  a client that was away cannot get back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from roomcast.layers.history import StreamPosition
from roomcast.layers.redis import RedisChannelLayer

from tests.outages.history_support import Members, Sender
from tests.outages.test_failover import Sentinels
from tests.redis_server import RedisServer

GROUP = "room.failover"
HISTORY = {"room.*": {"size": 5000}}


def epochs(members: Members, channel: str) -> list[str]:
    """The epochs a member's copies carried, in the order they first appeared."""
    seen: list[str] = []
    for _, position in members.got[channel]:
        assert position is not None
        epoch = position.rpartition(":")[0]
        if epoch not in seen:
            seen.append(epoch)
    return seen


def in_epoch(members: Members, channel: str, epoch: str) -> list[int]:
    """The numbers a member got in ``epoch``."""
    return [n for n, text in members.got[channel] if text and text.rpartition(":")[0] == epoch]


def check_order(members: Members) -> None:
    """Every member: no number twice, numbers rising, offsets rising by one within an epoch
    (gapless after a new epoch's start), and the same copies as the others."""
    reference: list[int] | None = None
    for channel, got in members.got.items():
        numbers = [n for n, _ in got]
        assert len(numbers) == len(set(numbers)), "a message was delivered twice"
        assert numbers == sorted(numbers), "messages arrived out of order"
        previous: StreamPosition | None = None
        for _, text in got:
            assert text is not None
            position = StreamPosition.parse(text)
            if previous is not None and previous.epoch == position.epoch:
                assert position.offset == previous.offset + 1, (previous, position)
            previous = position
        if reference is None:
            reference = numbers
        assert numbers == reference, f"{channel} got other copies than the first member"


@pytest.fixture
async def layer(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    made: list[RedisChannelLayer] = []

    def make(hosts: list[Any], prefix: str) -> RedisChannelLayer:
        built = RedisChannelLayer(
            hosts=hosts, prefix=prefix, history=HISTORY, capacity=20_000, retry_timeout=15
        )
        made.append(built)
        return built

    yield make
    for built in made:
        await built.close()


async def test_a_restart_without_persistence_starts_a_new_epoch_and_repeats_nothing(
    own_redis_server: RedisServer, layer: Any
) -> None:
    server = own_redis_server
    receiver = layer([server.url], "restart")
    members = await Members.join(receiver, GROUP, 3)
    sender = await Sender.start([server.url], "restart", GROUP, HISTORY)
    try:
        first = await sender.send(0, 200, 0.002)
        await members.wait(lambda numbers: len(numbers) >= 200)
        channel = next(iter(members.got))
        before = StreamPosition.parse(members.got[channel][-1][1] or "")
        assert before.offset == 200
        sending = asyncio.ensure_future(sender.send(200, 400, 0.002))
        await sender.reached(300)
        await asyncio.to_thread(server.restart)  # SIGKILL, then a fresh server: all keys gone
        second = await sending
        last_sent = second["sent"][-1]
        await members.wait(lambda numbers: last_sent in numbers)
        await asyncio.sleep(0.3)  # a duplicate would come now
    finally:
        await sender.stop()
        await members.stop()
    check_order(members)
    sent = first["sent"] + second["sent"]
    channel = next(iter(members.got))
    seen = epochs(members, channel)
    assert seen[0] == before.epoch
    assert len(seen) == 2, seen  # one new epoch: the restart
    numbers = members.numbers(channel)
    new = in_epoch(members, channel, seen[1])
    lost = [n for n in sent if n not in numbers]
    # Resuming from before the restart: the history is another epoch's, and says so.
    resumed = await receiver.group_history(GROUP, since=before)
    assert resumed.recovered is False
    assert resumed.position.epoch == seen[1]
    # Everything the new server took is in its stream and reached every member.
    assert [m["n"] for m in resumed.messages] == new
    assert all(n < new[0] for n in lost)  # what was lost went with the old server
    stats = receiver.stats()
    print(
        f"\nrestart: sent {len(sent)} (+{len(second['failed'])} failed calls, in flight at the "
        f"kill), delivered {len(numbers)} to each of 3 members ({len(new)} in the new epoch), "
        f"lost {len(lost)} {lost[:10]}; healed from the new stream {stats['history_healed']}, "
        f"epochs lost {stats['history_epochs_lost']}"
    )
    assert len(second["failed"]) <= 1  # at most the send in flight at the kill
    assert stats["history_epochs_lost"] == 1


@pytest.fixture
def sentinels() -> Iterator[Sentinels]:
    group = Sentinels()
    yield group
    group.cleanup()


async def test_a_sentinel_failover_tells_clients_and_loses_only_what_was_not_replicated(
    sentinels: Sentinels, layer: Any
) -> None:
    await asyncio.to_thread(sentinels.wait_replicated)
    hosts = sentinels.hosts()
    receiver = layer(hosts, "failover")
    members = await Members.join(receiver, GROUP, 3)
    sender = await Sender.start(hosts, "failover", GROUP, HISTORY)
    try:
        first = await sender.send(0, 300, 0.005)
        await members.wait(lambda numbers: len(numbers) >= 300)
        channel = next(iter(members.got))
        before = StreamPosition.parse(members.got[channel][-1][1] or "")
        sending = asyncio.ensure_future(sender.send(300, 1200, 0.005))
        await sender.reached(400)
        killed_at = time.monotonic()
        sentinels.master.kill()  # the Sentinels notice, agree and promote the replica
        second = await sending
        last_sent = second["sent"][-1]
        await members.wait(lambda numbers: last_sent in numbers, timeout=120)
        await asyncio.sleep(0.3)  # a duplicate would come now
    finally:
        await sender.stop()
        await members.stop()
    assert b"role:master" in sentinels.replica.command("INFO", "replication")
    check_order(members)
    seen = epochs(members, channel)
    assert seen[0] == before.epoch
    assert len(seen) == 2, seen  # the fence: the promoted replica started a new epoch
    numbers = members.numbers(channel)
    sent = first["sent"] + second["sent"]
    lost = [n for n in sent if n not in numbers]
    # A client that was away across the failover is told its history is gone.
    resumed = await receiver.group_history(GROUP, since=before)
    assert resumed.recovered is False
    assert resumed.position.epoch == seen[1]
    kept = [m["n"] for m in resumed.messages]
    # Every message the new master took is in its stream and reached every member.
    assert kept == in_epoch(members, channel, seen[1])
    old = in_epoch(members, channel, seen[0])
    first_new = next(
        at
        for (_, text), at in zip(members.got[channel], members.arrived[channel], strict=True)
        if text and text.rpartition(":")[0] == seen[1]
    )
    resumed_after = first_new - killed_at
    assert all(n < kept[0] for n in lost)  # what was lost went with the old master
    stats = receiver.stats()
    print(
        f"\nfailover: sent {len(sent)} (+{len(second['failed'])} failed calls), delivered "
        f"{len(numbers)} to each of 3 members ({len(old)} in the old epoch, {len(kept)} in the "
        f"new), lost {len(lost)} {lost[:10]}; deliveries resumed {resumed_after:.1f} s after "
        f"the kill; healed from the new stream {stats['history_healed']}, epochs lost "
        f"{stats['history_epochs_lost']}"
    )
    assert stats["history_epochs_lost"] == 1
