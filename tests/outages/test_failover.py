"""Redis restarted, pub/sub connections killed, a Sentinel failover: under traffic, the layer's
processes keep running and their readers resume by themselves.

Traffic is a sender process (as Redis sees it: a layer instance) calling ``group_send`` every
5 ms to a room whose member lives in a receiver process, plus direct sends to that member. Each
test prints its figures (sent, failed, delivered, lost, time until deliveries resumed): pub/sub
keeps no backlog, so messages published while the receiver's subscription is down are lost by
design; what is asserted is that nothing arrives twice or out of order, that the process
recovers alone, and that every message sent once it has recovered arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from roomcast.layers import LayerConnectionError
from roomcast.layers.redis import RedisChannelLayer

from tests.redis_server import RedisServer

TICK = 0.005


async def traffic_through(
    hosts: list[Any], fault: Callable[[], Awaitable[None]], *, prefix: str
) -> dict[str, Any]:
    """Run traffic, inject ``fault`` a second in, go on until the receiver has heard 100
    messages in a row after it; the figures."""
    sender = RedisChannelLayer(hosts=hosts, prefix=prefix, retry_timeout=15)
    receiver = RedisChannelLayer(hosts=hosts, prefix=prefix, capacity=100_000, retry_timeout=15)
    try:
        channel = await receiver.new_channel()
        await receiver.group_add("room", channel)
        sent: list[int] = []
        failed: list[int] = []
        got: list[int] = []
        fault_at = 0.0
        resumed_at: float | None = None
        done = asyncio.Event()

        async def send() -> None:
            n = 0
            while not done.is_set():
                try:
                    await sender.group_send("room", {"type": "m", "n": n})
                    sent.append(n)
                except LayerConnectionError:
                    failed.append(n)
                n += 1
                await asyncio.sleep(TICK)

        async def receive() -> None:
            nonlocal resumed_at
            while True:
                n = (await receiver.receive(channel))["n"]
                got.append(n)
                if resumed_at is None and n > after:  # sent after the fault: resumed
                    resumed_at = time.monotonic()
                if resumed_at is not None and len([m for m in got if m > after]) >= 100:
                    done.set()
                    return

        after = 10**9
        sending = asyncio.ensure_future(send())
        receiving = asyncio.ensure_future(receive())
        await asyncio.sleep(1.0)
        fault_at = time.monotonic()
        await fault()
        after = sent[-1] if sent else 0
        await asyncio.wait_for(done.wait(), 120)
        sending.cancel()
        receiving.cancel()
        await asyncio.gather(sending, receiving, return_exceptions=True)
        assert resumed_at is not None
        delivered = set(got)
        assert len(got) == len(delivered), "a message arrived twice"
        assert got == sorted(got), "messages arrived out of order"
        lost = [n for n in sent if n not in delivered and n < (got[-1] if got else 0)]
        # Once resumed, nothing sent is lost: the losses lie in the fault's window.
        window = [n for n in sent if n in delivered and n > after]
        assert window, "nothing sent after the fault arrived"
        late = [n for n in sent if window[0] <= n <= got[-1] and n not in delivered]
        assert late == [], f"lost after resuming: {late[:10]}"
        figures = {
            "sent": len(sent),
            "failed_calls": len(failed),
            "delivered": len(got),
            "lost": len(lost),
            "resumed_after_s": round(resumed_at - fault_at, 2),
            "sender_outages": sender.stats()["outages"],
            "receiver_outages": receiver.stats()["outages"],
        }
        print(f"\n{prefix}: {figures}")
        # Direct sends across processes work again too.
        await sender.send(channel, {"type": "direct", "n": -1})
        while (await asyncio.wait_for(receiver.receive(channel), 10))["type"] != "direct":
            pass
        return figures
    finally:
        await sender.close()
        await receiver.close()


async def test_redis_restart_under_traffic(own_redis_server: RedisServer) -> None:
    server = own_redis_server

    async def restart() -> None:
        server.kill()
        await asyncio.sleep(1.0)
        server.start()

    figures = await traffic_through([server.url], restart, prefix="restart")
    assert figures["failed_calls"] <= 1  # at most the group_send in flight at the kill


async def test_client_kill_type_pubsub_under_traffic(own_redis_server: RedisServer) -> None:
    server = own_redis_server

    async def kill_pubsub() -> None:
        assert b":" in server.command("CLIENT", "KILL", "TYPE", "pubsub")

    figures = await traffic_through([server.url], kill_pubsub, prefix="kill_pubsub")
    assert figures["failed_calls"] == 0  # only subscribers were cut: no call is affected


class Sentinels:
    """A master, its replica and three Sentinels (quorum 2) on free ports of 127.0.0.1."""

    def __init__(self) -> None:
        self.master = RedisServer().start()
        self.replica = RedisServer(
            extra_args=("--replicaof", "127.0.0.1", str(self.master.port))
        ).start()
        self.sentinels: list[RedisServer] = []
        for _ in range(3):
            sentinel = RedisServer()
            config = sentinel.dir / "sentinel.conf"
            config.write_text(
                f"sentinel monitor mymaster 127.0.0.1 {self.master.port} 2\n"
                "sentinel down-after-milliseconds mymaster 1000\n"
                "sentinel failover-timeout mymaster 10000\n"
                "sentinel parallel-syncs mymaster 1\n"
            )
            sentinel.extra_args = (str(config), "--sentinel")
            sentinel.persistence_args = ()
            self.sentinels.append(sentinel.start())

    def wait_replicated(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while b"master_link_status:up" not in self.replica.command("INFO", "replication"):
            assert time.monotonic() < deadline, "the replica never synced"
            time.sleep(0.1)
        while not all(
            sentinel.command("SENTINEL", "SENTINELS", "mymaster").startswith(b"*2\r\n")
            for sentinel in self.sentinels
        ):
            assert time.monotonic() < deadline, "the Sentinels never found each other"
            time.sleep(0.1)

    def hosts(self) -> list[Any]:
        return [
            {
                "sentinels": [("127.0.0.1", s.port) for s in self.sentinels],
                "master_name": "mymaster",
                "socket_timeout": 3,
                "socket_connect_timeout": 1,
            }
        ]

    def cleanup(self) -> None:
        for server in (*self.sentinels, self.replica, self.master):
            server.cleanup()


@pytest.fixture
def sentinels() -> Iterator[Sentinels]:
    group = Sentinels()
    yield group
    group.cleanup()


async def test_sentinel_failover_under_traffic(sentinels: Sentinels) -> None:
    await asyncio.to_thread(sentinels.wait_replicated)

    async def fail_over() -> None:
        sentinels.master.kill()  # the Sentinels notice, agree and promote the replica

    figures = await traffic_through(sentinels.hosts(), fail_over, prefix="failover")
    # The replica is the master now, and the traffic went there.
    assert b"role:master" in sentinels.replica.command("INFO", "replication")
    assert figures["delivered"] > 0
