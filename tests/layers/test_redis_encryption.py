"""``symmetric_encryption_keys`` on the Redis layer: what crosses Redis is sealed, what arrives
is opened, and rotated keys keep old messages readable.

Two layer instances on one server stand for two processes: each has its own process id, inbox
and pub/sub subscription, so a message between them really travels through Redis. Every path a
message can take across processes is covered: a plain channel's list (``plain``), another
process's inbox (``inbox``, a direct send to a ``new_channel()`` name of the other instance) and
a group's pub/sub channel (``group``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from roomcast.layers.exceptions import LayerConfigError
from roomcast.layers.redis import RedisChannelLayer, wire

from tests.redis_server import RedisServer

pytest.importorskip("cryptography")

TIMEOUT = 3.0  # a receive that should succeed; a bug fails the test instead of hanging it
NOTHING = 0.3  # how long a receive that should find nothing waits

SECRET = "attack at dawn, bring the cheese"
PATHS = ["plain", "inbox", "group"]

Factory = Callable[..., Awaitable[RedisChannelLayer]]


@pytest.fixture
async def make(redis_server: RedisServer, redis_prefix: str) -> AsyncIterator[Factory]:
    """An async ``make(**options)`` building Redis layers on the test's prefix; closed after."""
    made: list[RedisChannelLayer] = []

    async def build(**options: Any) -> RedisChannelLayer:
        options.setdefault("hosts", [redis_server.url])
        options.setdefault("prefix", redis_prefix)
        layer = RedisChannelLayer(**options)
        made.append(layer)
        return layer

    yield build
    for layer in made:
        await layer.close()


@pytest.fixture
async def raw_redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def recv(layer: RedisChannelLayer, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), TIMEOUT)


async def assert_nothing(layer: RedisChannelLayer, channel: str) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), NOTHING)


class Route:
    """One way from ``sender`` to a channel read by ``receiver``, across the two instances."""

    def __init__(self, path: str, receiver: RedisChannelLayer) -> None:
        self.path = path
        self.receiver = receiver
        self.channel = ""

    async def open(self) -> Route:
        if self.path == "plain":
            self.channel = "secret.jobs"
        else:
            self.channel = await self.receiver.new_channel("secret")
        if self.path == "group":
            await self.receiver.group_add("room", self.channel)
        return self

    async def send(self, sender: RedisChannelLayer, message: dict[str, Any]) -> None:
        if self.path == "group":
            await sender.group_send("room", message)
        else:
            await sender.send(self.channel, message)

    async def receive(self) -> dict[str, Any]:
        return await recv(self.receiver, self.channel)


# Round trips --------------------------------------------------------------------------------


async def test_local_round_trip(make: Factory) -> None:
    layer = await make(symmetric_encryption_keys=["k1"])
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "chat.message", "text": SECRET})
    assert await recv(layer, channel) == {"type": "chat.message", "text": SECRET}


async def test_plain_round_trip_same_instance(make: Factory) -> None:
    layer = await make(symmetric_encryption_keys=["k1"])
    message = {"type": "job", "text": SECRET, "n": 7, "blob": b"\x00\xff", "nested": {"a": [1]}}
    await layer.send("secret.jobs", message)
    assert await recv(layer, "secret.jobs") == message


@pytest.mark.parametrize("path", PATHS)
async def test_round_trip_between_instances(make: Factory, path: str) -> None:
    sender = await make(symmetric_encryption_keys=["k1", "k0"])
    receiver = await make(symmetric_encryption_keys=["k1", "k0"])
    route = await Route(path, receiver).open()
    for n in range(3):
        await route.send(sender, {"type": "chat.message", "text": SECRET, "n": n})
    for n in range(3):
        assert await route.receive() == {"type": "chat.message", "text": SECRET, "n": n}
    assert receiver.counters.rejected == 0


async def test_group_send_reaches_members_of_both_instances(make: Factory) -> None:
    keys = ["shared"]
    a = await make(symmetric_encryption_keys=keys)
    b = await make(symmetric_encryption_keys=keys)
    a1, a2 = await a.new_channel(), await a.new_channel()
    b1 = await b.new_channel()
    for layer, channel in ((a, a1), (a, a2), (b, b1)):
        await layer.group_add("room", channel)

    await a.group_send("room", {"type": "chat.message", "text": "from a"})
    await b.group_send("room", {"type": "chat.message", "text": "from b"})

    for layer, channel in ((a, a1), (a, a2), (b, b1)):
        got = [(await recv(layer, channel))["text"] for _ in range(2)]
        assert sorted(got) == ["from a", "from b"]
        await assert_nothing(layer, channel)
    assert a.counters.rejected == b.counters.rejected == 0


# What Redis holds ---------------------------------------------------------------------------


async def _stored(raw_redis: Redis, prefix: str, channel: str) -> list[bytes]:
    entries: list[bytes] = await raw_redis.lrange(wire.channel_key(prefix, channel), 0, -1)
    return entries


async def test_plaintext_is_not_stored_in_redis(
    make: Factory, raw_redis: Redis, redis_prefix: str
) -> None:
    encrypted = await make(symmetric_encryption_keys=["k1"])
    plain = await make()
    message = {"type": "chat.message", "text": SECRET}

    # The control: without keys the text is there for anyone who can read Redis.
    await plain.send("clear.box", message)
    [clear_entry] = await _stored(raw_redis, redis_prefix, "clear.box")
    assert SECRET.encode() in clear_entry

    await encrypted.send("secret.box", message)
    await encrypted.send("secret.box", message)
    stored = await _stored(raw_redis, redis_prefix, "secret.box")
    assert len(stored) == 2
    for entry in stored:
        assert SECRET.encode() not in entry
        assert b"chat.message" not in entry  # the type is sealed too
        assert b"dawn" not in entry
    # Fernet tokens carry a random IV: the same message is stored differently each time.
    assert stored[0] != stored[1]

    assert await recv(encrypted, "secret.box") == message
    assert await recv(encrypted, "secret.box") == message


async def test_plaintext_is_not_in_another_process_inbox(
    make: Factory, raw_redis: Redis, redis_prefix: str
) -> None:
    sender = await make(symmetric_encryption_keys=["k1"])
    receiver = await make(symmetric_encryption_keys=["k1"])
    channel = await receiver.new_channel()
    await receiver.close()  # stop its inbox reader so the entry stays in Redis to be read
    await sender.send(channel, {"type": "chat.message", "text": SECRET})
    key = wire.inbox_key(redis_prefix, wire.process_of(channel))
    [entry] = await raw_redis.lrange(key, 0, -1)
    assert SECRET.encode() not in entry


# Key rotation -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
async def test_new_keys_read_what_old_keys_sent(make: Factory, path: str) -> None:
    old_sender = await make(symmetric_encryption_keys=["old"])
    rotated = await make(symmetric_encryption_keys=["new", "old"])
    route = await Route(path, rotated).open()
    await route.send(old_sender, {"type": "chat.message", "text": "sealed with old"})
    assert await route.receive() == {"type": "chat.message", "text": "sealed with old"}
    assert rotated.counters.rejected == 0


@pytest.mark.parametrize("path", PATHS)
async def test_old_keys_drop_what_new_keys_sent(make: Factory, path: str) -> None:
    rotated_sender = await make(symmetric_encryption_keys=["new", "old"])
    old_sender = await make(symmetric_encryption_keys=["old"])
    old_receiver = await make(symmetric_encryption_keys=["old"])
    route = await Route(path, old_receiver).open()

    await route.send(rotated_sender, {"type": "chat.message", "text": "sealed with new"})
    await route.send(old_sender, {"type": "chat.message", "text": "sealed with old"})

    # The unreadable message is dropped, not raised, and does not block the next one.
    assert await route.receive() == {"type": "chat.message", "text": "sealed with old"}
    assert old_receiver.counters.rejected == 1
    await assert_nothing(old_receiver, route.channel)
    assert old_receiver.counters.rejected == 1


async def test_rotation_end_to_end(make: Factory) -> None:
    """Roll a key across two processes with no message lost: add, switch, then retire."""
    channel = "rotate.jobs"
    a = await make(symmetric_encryption_keys=["k0"])
    b = await make(symmetric_encryption_keys=["k0"])
    # Step 1: every process learns the new key as a second (decrypt-only) key.
    a2 = await make(symmetric_encryption_keys=["k0", "k1"])
    b2 = await make(symmetric_encryption_keys=["k0", "k1"])
    await a.send(channel, {"type": "m", "n": 1})
    assert (await recv(b2, channel))["n"] == 1
    # Step 2: the new key becomes the first (encrypting) key.
    a3 = await make(symmetric_encryption_keys=["k1", "k0"])
    await a3.send(channel, {"type": "m", "n": 2})
    assert (await recv(b2, channel))["n"] == 2
    await a2.send(channel, {"type": "m", "n": 3})
    assert (await recv(b, channel))["n"] == 3
    # Step 3: the old key is retired.
    b4 = await make(symmetric_encryption_keys=["k1"])
    await a3.send(channel, {"type": "m", "n": 4})
    assert (await recv(b4, channel))["n"] == 4
    assert sum(layer.counters.rejected for layer in (a, b, a2, b2, a3, b4)) == 0


async def test_unencrypted_sender_is_rejected_by_encrypted_receiver(make: Factory) -> None:
    plain_sender = await make()
    receiver = await make(symmetric_encryption_keys=["k1"])
    sender = await make(symmetric_encryption_keys=["k1"])
    await plain_sender.send("secret.jobs", {"type": "m", "text": "in the clear"})
    await sender.send("secret.jobs", {"type": "m", "text": "sealed"})
    assert await recv(receiver, "secret.jobs") == {"type": "m", "text": "sealed"}
    assert receiver.counters.rejected == 1


@pytest.mark.parametrize("path", ["plain", "inbox"])
async def test_encrypted_message_is_rejected_by_unencrypted_receiver(
    make: Factory, path: str
) -> None:
    """A process left without keys (a half-rolled-out config) drops what it cannot read."""
    encrypted_sender = await make(symmetric_encryption_keys=["k1"])
    plain_sender = await make()
    plain_receiver = await make()
    route = await Route(path, plain_receiver).open()
    await route.send(encrypted_sender, {"type": "m", "text": SECRET})
    await route.send(plain_sender, {"type": "m", "text": "in the clear"})
    assert await route.receive() == {"type": "m", "text": "in the clear"}
    assert plain_receiver.counters.rejected == 1


# Configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("keys", ["a-single-key", b"a-single-key"])
def test_keys_must_be_a_list(keys: Any) -> None:
    with pytest.raises(LayerConfigError, match="list"):
        RedisChannelLayer(symmetric_encryption_keys=keys)


def test_empty_key_list_means_no_encryption() -> None:
    assert not RedisChannelLayer(symmetric_encryption_keys=[])._codec.encrypted


def test_keys_may_be_bytes_or_str_of_any_length() -> None:
    layer = RedisChannelLayer(symmetric_encryption_keys=[b"\x00" * 3, "x" * 200])
    assert layer._codec.encrypted
    sealed = layer._codec.seal(b"hello")
    same_keys = RedisChannelLayer(symmetric_encryption_keys=[b"\x00" * 3])
    assert same_keys._codec.unseal(sealed) == b"hello"
