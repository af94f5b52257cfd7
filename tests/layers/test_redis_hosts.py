"""Every form of channels_redis's ``hosts`` entry, each against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from roomcast.layers import LayerConfigError, LayerConnectionError
from roomcast.layers.redis import RedisChannelLayer

from tests.redis_server import RedisServer, SentinelServer, free_port
from tests.tls_support import self_signed_certificate


async def round_trip(hosts: list[Any]) -> None:
    """Direct send (from another process, through the inbox), plain channel and group message
    through a layer on ``hosts``."""
    layer = RedisChannelLayer(hosts=hosts, prefix="hosts")
    other = RedisChannelLayer(hosts=hosts, prefix="hosts")
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "group"})
        await layer.send("jobs", {"type": "plain"})
        await other.send(channel, {"type": "direct"})
        got = [(await asyncio.wait_for(layer.receive(channel), 5))["type"] for _ in range(2)]
        assert sorted(got) == ["direct", "group"]  # two paths: they may swap
        assert (await asyncio.wait_for(layer.receive("jobs"), 5))["type"] == "plain"
        assert await layer.group_members("room") == [channel]
        await layer.flush()
    finally:
        await other.close()
        await layer.close()


async def test_url_tuple_and_dict_hosts(redis_server: RedisServer) -> None:
    await round_trip([redis_server.url])
    await round_trip([("127.0.0.1", redis_server.port)])
    await round_trip([{"address": redis_server.url}])
    await round_trip([{"address": ("127.0.0.1", redis_server.port)}])
    await round_trip([{"host": "127.0.0.1", "port": redis_server.port, "db": 3}])


@pytest.fixture
def unix_server() -> Iterator[RedisServer]:
    server = RedisServer()
    socket_path = server.dir / "redis.sock"
    server.extra_args = ("--unixsocket", str(socket_path), "--unixsocketperm", "700")
    yield server.start()
    server.cleanup()


async def test_unix_socket_url(unix_server: RedisServer) -> None:
    await round_trip([f"unix://{unix_server.dir / 'redis.sock'}?db=1"])


@pytest.fixture
def sentinel() -> Iterator[tuple[RedisServer, SentinelServer]]:
    master = RedisServer().start()
    watcher = SentinelServer(master).start()
    yield master, watcher
    watcher.cleanup()
    master.cleanup()


async def test_sentinel_finds_the_master(sentinel: tuple[RedisServer, SentinelServer]) -> None:
    master, watcher = sentinel
    await round_trip(
        [{"sentinels": [("127.0.0.1", watcher.port)], "master_name": "mymaster", "db": 0}]
    )
    # The traffic really went to the master the Sentinel named.
    assert b"cmdstat_evalsha" in master.command("INFO", "commandstats")


@pytest.mark.parametrize(
    ("hosts", "fragment"),
    [
        ("redis://localhost", "must be a list"),
        ([], "at least one"),
        (["http://localhost:6379"], "redis://, rediss:// or unix://"),
        ([("localhost",)], "(host: str, port: int)"),
        ([42], "a URL, a (host, port) tuple or a dict"),
        ([{"sentinels": [("localhost", 26379)]}], "master_name"),
        (["redis://localhost:6379/0?socket_timout=2"], "unknown option(s) socket_timout"),
        (["rediss://localhost:6379/0?ssl_cert_req=none"], "unknown option(s) ssl_cert_req"),
        (["redis://localhost:6379/0?socket_timeout=soon"], "Invalid value for 'socket_timeout'"),
    ],
)
def test_bad_hosts_are_refused_at_construction(hosts: Any, fragment: str) -> None:
    with pytest.raises(LayerConfigError) as info:
        RedisChannelLayer(hosts=hosts)
    assert fragment in str(info.value)


def test_known_url_options_are_accepted() -> None:
    layer = RedisChannelLayer(
        hosts=[
            "redis://localhost:6379/0?socket_timeout=2&max_connections=10&health_check_interval=5",
            "rediss://localhost:6380/0?ssl_cert_reqs=none&ssl_check_hostname=false",
            "unix:///tmp/redis.sock?db=1",
        ]
    )
    assert len(layer.hosts) == 3


def test_bad_prefix_is_refused() -> None:
    with pytest.raises(LayerConfigError, match="prefix"):
        RedisChannelLayer(prefix="has{brace}")


async def test_rediss_tls_url() -> None:
    server = RedisServer()
    cert, key = self_signed_certificate(server.dir)
    tls_port = free_port()
    server.extra_args = (
        *("--tls-port", str(tls_port), "--tls-cert-file", str(cert)),
        *("--tls-key-file", str(key), "--tls-ca-cert-file", str(cert)),
        *("--tls-auth-clients", "no"),
    )
    server.start()
    try:
        # Only a TLS client gets through the TLS port; the certificate is verified.
        await round_trip([f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"])
        with pytest.raises(LayerConnectionError):
            await round_trip([f"redis://127.0.0.1:{tls_port}/0?socket_timeout=1"])
    finally:
        server.cleanup()


async def test_password_in_url() -> None:
    server = RedisServer()
    server.extra_args = ("--requirepass", "s3cret")
    server.start()
    try:
        await round_trip([f"redis://:s3cret@127.0.0.1:{server.port}/0"])
        with pytest.raises(LayerConnectionError, match=r"127\.0\.0\.1"):
            await round_trip([f"redis://:wrong@127.0.0.1:{server.port}/0"])
    finally:
        server.cleanup()
