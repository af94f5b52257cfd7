"""The channel layer contract of :mod:`roomcast.layers.base`, run against every backend.

Each test gets ``layer_factory``: an async ``make(**options)`` that builds a layer of the backend
under test (in-memory or Redis) and closes it at teardown. Tests that need no options use the
``layer`` fixture. Where it matters, a test runs on both kinds of channel name: process-local
ones from ``new_channel()`` (``kind="local"``) and plain ones like ``"worker.jobs"``
(``kind="plain"``), which the Redis layer keeps in Redis rather than in the process.

"Nothing was delivered" is checked with a marker: send a fresh message and require it to be the
first one received, so such checks cost no waiting. Every receive that should succeed is bounded
by ``asyncio.wait_for`` so a bug fails fast instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack
import pytest
from roomcast.layers.base import CHANNEL_NAME_RE
from roomcast.layers.exceptions import (
    ChannelFull,
    HistoryNotEnabled,
    InvalidChannelName,
    InvalidGroupName,
    InvalidMessage,
    InvalidPosition,
    LayerConfigError,
    MessageEncodeError,
    MessageTooLarge,
)
from roomcast.layers.history import POSITION_KEY, StreamPosition, message_position

from tests.history_support import skip_unless_history

# A receive that should succeed gets this long; a bug then fails the test instead of hanging.
TIMEOUT = 2.0
# How long a receive that should find nothing waits before we accept that nothing came.
NOTHING = 0.3
# A layer that does not close within this long fails its test's teardown instead of hanging.
CLOSE_TIMEOUT = 10.0

Factory = Callable[..., Awaitable[Any]]


# Fixtures -------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def layer_factory(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """An async ``make(**options)`` building layers of one backend; all closed at teardown."""
    made: list[Any] = []
    build: Callable[..., Any]
    if request.param == "memory":
        from roomcast.layers.memory import InMemoryChannelLayer

        build = InMemoryChannelLayer
    else:
        server = request.getfixturevalue("redis_server")
        prefix = request.getfixturevalue("redis_prefix")
        from roomcast.layers.redis import RedisChannelLayer  # imported lazily: may not exist yet

        def build(**options: Any) -> Any:
            options.setdefault("hosts", [server.url])
            options.setdefault("prefix", prefix)
            return RedisChannelLayer(**options)

    async def make(**options: Any) -> Any:
        layer = build(**options)
        made.append(layer)
        return layer

    yield make

    errors: list[BaseException] = []
    for layer in made:
        try:
            await asyncio.wait_for(layer.close(), CLOSE_TIMEOUT)
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
async def layer(layer_factory: Factory) -> Any:
    """A layer with default options."""
    return await layer_factory()


@pytest.fixture(params=["local", "plain"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which kind of channel name a test uses: from ``new_channel()`` or a plain name."""
    return str(request.param)


# Helpers --------------------------------------------------------------------------------------


async def make_channel(layer: Any, kind: str, name: str = "worker.jobs") -> str:
    """A channel of ``kind``: ``new_channel(name)`` for local, ``name`` itself for plain."""
    if kind == "local":
        return str(await layer.new_channel(name))
    return name


async def recv(layer: Any, channel: str) -> dict[str, Any]:
    message: dict[str, Any] = await asyncio.wait_for(layer.receive(channel), TIMEOUT)
    return message


async def deliver(layer: Any, via: str, channel: str, message: Any) -> None:
    """``send`` to ``channel``, or ``group_send`` to ``"room"`` (of which it is a member)."""
    if via == "send":
        await layer.send(channel, message)
    else:
        await layer.group_send("room", message)


async def assert_nothing_waiting(layer: Any, channel: str) -> None:
    """Nothing is buffered for ``channel``: a fresh marker is the first message received."""
    marker = {"type": "test.marker", "n": -1}
    await layer.send(channel, marker)
    assert await recv(layer, channel) == marker


async def assert_receives_nothing(layer: Any, channel: str) -> None:
    """A receive on ``channel`` finds nothing within ``NOTHING`` seconds."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), NOTHING)


# Send / receive -------------------------------------------------------------------------------


async def test_send_receive_round_trip(layer: Any, kind: str) -> None:
    channel = await make_channel(layer, kind)
    message = {
        "type": "test.message",
        "text": "héllo",
        "bytes": b"\x00\xff",
        "int": 2**40,
        "float": 1.5,
        "none": None,
        "bool": True,
        "list": [1, "two", [3.0]],
        "dict": {"nested": {"deep": [1, 2]}},
    }
    await layer.send(channel, message)
    assert await recv(layer, channel) == message


async def test_receive_waits_for_a_later_send(layer: Any, kind: str) -> None:
    channel = await make_channel(layer, kind)
    receiver = asyncio.create_task(recv(layer, channel))
    await asyncio.sleep(0.05)  # let the receiver block first
    assert not receiver.done()
    await layer.send(channel, {"type": "test.late"})
    assert await receiver == {"type": "test.late"}


async def test_receive_on_plain_name(layer: Any) -> None:
    await layer.send("worker.jobs", {"type": "job", "id": 1})
    assert await recv(layer, "worker.jobs") == {"type": "job", "id": 1}


async def test_channels_are_separate(layer: Any, kind: str) -> None:
    a = await make_channel(layer, kind, "worker.a")
    b = await make_channel(layer, kind, "worker.b")
    await layer.send(a, {"type": "for.a"})
    await layer.send(b, {"type": "for.b"})
    assert await recv(layer, b) == {"type": "for.b"}
    assert await recv(layer, a) == {"type": "for.a"}
    await assert_nothing_waiting(layer, a)
    await assert_nothing_waiting(layer, b)


async def test_longest_valid_name_is_accepted(layer: Any) -> None:
    name = "a" * 99
    await layer.send(name, {"type": "test.long"})
    assert await recv(layer, name) == {"type": "test.long"}
    await layer.group_add("g" * 99, name)
    await layer.group_send("g" * 99, {"type": "test.long.group"})
    assert await recv(layer, name) == {"type": "test.long.group"}


async def test_new_channel_names(layer: Any) -> None:
    names = [await layer.new_channel("chat") for _ in range(50)]
    assert len(set(names)) == 50
    for name in names:
        assert isinstance(name, str)
        assert name.startswith("chat")
        assert "!" in name
        assert CHANNEL_NAME_RE.match(name)
        assert len(name) < 100
        assert layer.require_valid_channel_name(name)
    default = await layer.new_channel()
    assert default.startswith("specific")
    assert "!" in default
    assert default not in names


async def test_extensions(layer: Any) -> None:
    assert "groups" in layer.extensions
    assert "flush" in layer.extensions


# Ordering -------------------------------------------------------------------------------------


async def test_fifo_per_sender_and_channel(layer_factory: Factory, kind: str) -> None:
    layer = await layer_factory(capacity=300)
    channel = await make_channel(layer, kind)
    for n in range(200):
        await layer.send(channel, {"type": "test.seq", "n": n})
    received = [(await recv(layer, channel))["n"] for _ in range(200)]
    assert received == list(range(200))
    await assert_nothing_waiting(layer, channel)


async def test_fifo_with_receiver_already_waiting(layer_factory: Factory, kind: str) -> None:
    layer = await layer_factory(capacity=300)
    channel = await make_channel(layer, kind)

    async def consume() -> list[int]:
        return [(await recv(layer, channel))["n"] for _ in range(100)]

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.02)
    for n in range(100):
        await layer.send(channel, {"type": "test.seq", "n": n})
    assert await asyncio.wait_for(consumer, TIMEOUT * 5) == list(range(100))


async def test_group_send_fifo(layer_factory: Factory) -> None:
    layer = await layer_factory(capacity=300)
    local = await layer.new_channel("member")
    plain = "worker.member"
    await layer.group_add("room", local)
    await layer.group_add("room", plain)
    for n in range(200):
        await layer.group_send("room", {"type": "test.seq", "n": n})
    for channel in (local, plain):
        received = [(await recv(layer, channel))["n"] for _ in range(200)]
        assert received == list(range(200)), channel
        await assert_nothing_waiting(layer, channel)


# Copies ---------------------------------------------------------------------------------------


async def test_each_group_member_gets_its_own_copy(layer: Any, kind: str) -> None:
    a = await make_channel(layer, kind, "worker.a")
    b = await make_channel(layer, kind, "worker.b")
    await layer.group_add("room", a)
    await layer.group_add("room", b)
    await layer.group_send("room", {"type": "test.copy", "items": [1, 2], "meta": {"k": "v"}})
    first = await recv(layer, a)
    first["items"].append(3)
    first["meta"]["k"] = "changed"
    first["type"] = "mutated"
    first["extra"] = True
    second = await recv(layer, b)
    assert second == {"type": "test.copy", "items": [1, 2], "meta": {"k": "v"}}


async def test_sender_mutating_after_send_changes_nothing(layer: Any, kind: str) -> None:
    channel = await make_channel(layer, kind)
    message = {"type": "test.copy", "items": [1, 2]}
    await layer.send(channel, message)
    message["items"].append(3)
    message["type"] = "mutated"
    assert await recv(layer, channel) == {"type": "test.copy", "items": [1, 2]}


# Groups ---------------------------------------------------------------------------------------


async def test_group_add_send_discard(layer: Any, kind: str) -> None:
    a = await make_channel(layer, kind, "worker.a")
    b = await make_channel(layer, kind, "worker.b")
    outsider = await make_channel(layer, kind, "worker.outsider")
    await layer.group_add("room", a)
    await layer.group_add("room", b)
    await layer.group_send("room", {"type": "test.one"})
    assert await recv(layer, a) == {"type": "test.one"}
    assert await recv(layer, b) == {"type": "test.one"}
    await assert_nothing_waiting(layer, outsider)

    await layer.group_discard("room", a)
    await layer.group_send("room", {"type": "test.two"})
    assert await recv(layer, b) == {"type": "test.two"}
    await assert_nothing_waiting(layer, a)
    await assert_nothing_waiting(layer, b)


async def test_channel_in_several_groups(layer: Any, kind: str) -> None:
    channel = await make_channel(layer, kind)
    await layer.group_add("room1", channel)
    await layer.group_add("room2", channel)
    await layer.group_send("room1", {"type": "from.one"})
    await layer.group_send("room2", {"type": "from.two"})
    assert await recv(layer, channel) == {"type": "from.one"}
    assert await recv(layer, channel) == {"type": "from.two"}
    await layer.group_discard("room1", channel)
    await layer.group_send("room1", {"type": "from.one"})
    await layer.group_send("room2", {"type": "from.two"})
    assert await recv(layer, channel) == {"type": "from.two"}
    await assert_nothing_waiting(layer, channel)


async def test_group_send_to_unknown_or_empty_group_is_a_no_op(layer: Any, kind: str) -> None:
    channel = await make_channel(layer, kind)
    await layer.group_send("nobody.here", {"type": "test.lost"})
    await layer.group_add("emptied", channel)
    await layer.group_discard("emptied", channel)
    await layer.group_send("emptied", {"type": "test.lost"})
    await assert_nothing_waiting(layer, channel)


async def test_group_discard_of_non_member_is_fine(layer: Any, kind: str) -> None:
    member = await make_channel(layer, kind, "worker.member")
    stranger = await make_channel(layer, kind, "worker.stranger")
    await layer.group_discard("no.such.group", stranger)
    await layer.group_add("room", member)
    await layer.group_discard("room", stranger)
    await layer.group_discard("room", stranger)
    await layer.group_send("room", {"type": "test.still"})
    assert await recv(layer, member) == {"type": "test.still"}
    await assert_nothing_waiting(layer, member)
    await assert_nothing_waiting(layer, stranger)


async def test_group_add_twice_delivers_once(layer: Any, kind: str) -> None:
    channel = await make_channel(layer, kind)
    await layer.group_add("room", channel)
    await layer.group_add("room", channel)
    await layer.group_send("room", {"type": "test.once"})
    assert await recv(layer, channel) == {"type": "test.once"}
    await assert_nothing_waiting(layer, channel)
    # One discard undoes any number of adds.
    await layer.group_discard("room", channel)
    await layer.group_send("room", {"type": "test.gone"})
    await assert_nothing_waiting(layer, channel)


# Capacity -------------------------------------------------------------------------------------


async def test_send_raises_channel_full_at_capacity(layer_factory: Factory, kind: str) -> None:
    layer = await layer_factory(capacity=3)
    channel = await make_channel(layer, kind)
    for n in range(3):
        await layer.send(channel, {"type": "test.fill", "n": n})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "test.fill", "n": 3})
    assert (await recv(layer, channel))["n"] == 0
    await layer.send(channel, {"type": "test.fill", "n": 4})
    assert [(await recv(layer, channel))["n"] for _ in range(3)] == [1, 2, 4]
    await assert_nothing_waiting(layer, channel)


async def test_channel_full_is_per_channel(layer_factory: Factory, kind: str) -> None:
    layer = await layer_factory(capacity=1)
    a = await make_channel(layer, kind, "worker.a")
    b = await make_channel(layer, kind, "worker.b")
    await layer.send(a, {"type": "test.fill"})
    with pytest.raises(ChannelFull):
        await layer.send(a, {"type": "test.fill"})
    await layer.send(b, {"type": "test.other"})
    assert await recv(layer, b) == {"type": "test.other"}


async def test_channel_capacity_glob(layer_factory: Factory) -> None:
    layer = await layer_factory(capacity=5, channel_capacity={"hi.*": 1})
    assert layer.get_capacity("hi.there") == 1
    assert layer.get_capacity("other") == 5
    await layer.send("hi.there", {"type": "test.fill"})
    with pytest.raises(ChannelFull):
        await layer.send("hi.there", {"type": "test.fill"})
    for n in range(5):
        await layer.send("other", {"type": "test.fill", "n": n})
    with pytest.raises(ChannelFull):
        await layer.send("other", {"type": "test.fill"})
    assert await recv(layer, "hi.there") == {"type": "test.fill"}
    await layer.send("hi.there", {"type": "test.again"})
    assert await recv(layer, "hi.there") == {"type": "test.again"}


async def test_channel_capacity_regex(layer_factory: Factory) -> None:
    layer = await layer_factory(capacity=5, channel_capacity={re.compile(r"^x"): 2})
    assert layer.get_capacity("xyz") == 2
    assert layer.get_capacity("axy") == 5
    await layer.send("xyz", {"type": "test.fill", "n": 0})
    await layer.send("xyz", {"type": "test.fill", "n": 1})
    with pytest.raises(ChannelFull):
        await layer.send("xyz", {"type": "test.fill", "n": 2})
    for n in range(3):
        await layer.send("axy", {"type": "test.fill", "n": n})
    assert [(await recv(layer, "xyz"))["n"] for _ in range(2)] == [0, 1]


async def test_group_send_drops_for_full_member_only(layer_factory: Factory, kind: str) -> None:
    layer = await layer_factory(capacity=1)
    full = await make_channel(layer, kind, "worker.full")
    free = await make_channel(layer, kind, "worker.free")
    await layer.group_add("room", full)
    await layer.group_add("room", free)
    await layer.send(full, {"type": "test.first"})
    dropped = layer.counters.dropped
    await layer.group_send("room", {"type": "test.group"})  # must not raise
    assert layer.counters.dropped == dropped + 1
    assert await recv(layer, free) == {"type": "test.group"}
    assert await recv(layer, full) == {"type": "test.first"}
    await assert_nothing_waiting(layer, full)
    await assert_nothing_waiting(layer, free)


# Expiry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["send", "group_send"])
async def test_expired_message_is_never_delivered(
    layer_factory: Factory, kind: str, via: str
) -> None:
    layer = await layer_factory(expiry=0.2)
    channel = await make_channel(layer, kind)
    if via == "send":
        await layer.send(channel, {"type": "test.old"})
    else:
        await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "test.old"})
    await asyncio.sleep(0.4)
    await layer.send(channel, {"type": "test.new"})
    assert await recv(layer, channel) == {"type": "test.new"}
    await assert_nothing_waiting(layer, channel)


async def test_expired_message_receive_times_out(layer_factory: Factory, kind: str) -> None:
    layer = await layer_factory(expiry=0.2)
    channel = await make_channel(layer, kind)
    await layer.send(channel, {"type": "test.old"})
    await asyncio.sleep(0.4)
    await assert_receives_nothing(layer, channel)


async def test_expired_messages_free_capacity(layer_factory: Factory, kind: str) -> None:
    layer = await layer_factory(expiry=0.2, capacity=1)
    channel = await make_channel(layer, kind)
    await layer.send(channel, {"type": "test.old"})
    await asyncio.sleep(0.4)
    await layer.send(channel, {"type": "test.new"})  # the expired one holds no place
    assert await recv(layer, channel) == {"type": "test.new"}


async def test_group_membership_lapses(layer_factory: Factory, kind: str) -> None:
    layer = await layer_factory(group_expiry=0.3)
    channel = await make_channel(layer, kind)
    await layer.group_add("room", channel)
    await asyncio.sleep(0.5)
    await layer.group_send("room", {"type": "test.lapsed"})
    await assert_nothing_waiting(layer, channel)


async def test_group_membership_renewed_by_group_add(layer_factory: Factory, kind: str) -> None:
    layer = await layer_factory(group_expiry=0.3)
    channel = await make_channel(layer, kind)
    await layer.group_add("room", channel)
    # Renew every 0.1 s for 0.5 s: longer than group_expiry since the first add.
    for _ in range(5):
        await asyncio.sleep(0.1)
        await layer.group_add("room", channel)
    await layer.group_send("room", {"type": "test.renewed"})
    assert await recv(layer, channel) == {"type": "test.renewed"}
    await assert_nothing_waiting(layer, channel)


# Cancellation ---------------------------------------------------------------------------------


async def test_cancelled_receive_loses_no_later_message(layer: Any, kind: str) -> None:
    channel = await make_channel(layer, kind)
    receiver = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0.05)
    receiver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receiver
    await layer.send(channel, {"type": "test.after"})
    assert await recv(layer, channel) == {"type": "test.after"}


async def test_timed_out_receive_loses_no_later_message(layer: Any, kind: str) -> None:
    channel = await make_channel(layer, kind)
    await assert_receives_nothing(layer, channel)
    await layer.send(channel, {"type": "test.after"})
    assert await recv(layer, channel) == {"type": "test.after"}


async def test_receiver_cancelled_as_message_arrives_passes_it_on(layer: Any, kind: str) -> None:
    channel = await make_channel(layer, kind)
    first = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0.02)
    second = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0.05)
    await layer.send(channel, {"type": "test.only"})
    first.cancel()
    (outcome,) = await asyncio.gather(first, return_exceptions=True)
    if isinstance(outcome, asyncio.CancelledError):
        # The first receiver left without the message: the second one must get it.
        assert await asyncio.wait_for(second, TIMEOUT) == {"type": "test.only"}
    else:
        # The first receiver got it before the cancel landed; the second must still be waiting.
        assert outcome == {"type": "test.only"}
        await asyncio.sleep(0.05)
        assert not second.done()
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
    await assert_nothing_waiting(layer, channel)


# Flush ----------------------------------------------------------------------------------------


async def test_flush_empties_channels_and_groups(layer: Any) -> None:
    local = await layer.new_channel("member")
    plain = "worker.jobs"
    for channel in (local, plain):
        await layer.send(channel, {"type": "test.flushed"})
        await layer.group_add("room", channel)
    await layer.flush()
    await layer.group_send("room", {"type": "test.after.flush"})
    for channel in (local, plain):
        await assert_nothing_waiting(layer, channel)
    # The layer still works after a flush.
    await layer.group_add("room", local)
    await layer.group_send("room", {"type": "test.back"})
    assert await recv(layer, local) == {"type": "test.back"}


# Bad input ------------------------------------------------------------------------------------

BAD_CHANNEL_NAMES = [
    pytest.param("bad name", "only ASCII letters", id="space"),
    pytest.param("héllo", "only ASCII letters", id="non-ascii"),
    pytest.param("a!b!c", "only ASCII letters", id="two-bangs"),
    pytest.param("!suffix", "only ASCII letters", id="empty-head"),
    pytest.param("", "only ASCII letters", id="empty"),
    pytest.param("chan/nel", "only ASCII letters", id="slash"),
    pytest.param("a" * 100, "99", id="length-100"),
    pytest.param("b" * 250, "99", id="length-250"),
    pytest.param(123, "must be a str", id="int"),
    pytest.param(None, "must be a str", id="none"),
    pytest.param(b"bytes.name", "must be a str", id="bytes"),
]

BAD_GROUP_NAMES = [
    pytest.param("bad group", "only ASCII letters", id="space"),
    pytest.param("room!x", "only ASCII letters", id="bang"),
    pytest.param("", "only ASCII letters", id="empty"),
    pytest.param("g" * 100, "99", id="length-100"),
    pytest.param(5, "must be a str", id="int"),
    pytest.param(None, "must be a str", id="none"),
]


@pytest.mark.parametrize(("name", "says"), BAD_CHANNEL_NAMES)
async def test_invalid_channel_name(layer: Any, name: Any, says: str) -> None:
    good = await layer.new_channel("good")
    operations = {
        "send": lambda: layer.send(name, {"type": "test.bad"}),
        "receive": lambda: asyncio.wait_for(layer.receive(name), TIMEOUT),
        "group_add": lambda: layer.group_add("room", name),
        "group_discard": lambda: layer.group_discard("room", name),
    }
    for operation, call in operations.items():
        with pytest.raises(InvalidChannelName, match=re.escape(says)) as info:
            await call()
        assert isinstance(info.value, TypeError), operation
    # Nothing was delivered, and the bad name did not join the group.
    await layer.group_add("room", good)
    await layer.group_send("room", {"type": "test.good"})
    assert await recv(layer, good) == {"type": "test.good"}
    await assert_nothing_waiting(layer, good)


@pytest.mark.parametrize(("name", "says"), BAD_GROUP_NAMES)
async def test_invalid_group_name(layer: Any, name: Any, says: str) -> None:
    good = await layer.new_channel("good")
    operations = {
        "group_add": lambda: layer.group_add(name, good),
        "group_discard": lambda: layer.group_discard(name, good),
        "group_send": lambda: layer.group_send(name, {"type": "test.bad"}),
    }
    for operation, call in operations.items():
        with pytest.raises(InvalidGroupName, match=re.escape(says)) as info:
            await call()
        assert isinstance(info.value, TypeError), operation
    await assert_nothing_waiting(layer, good)


BAD_MESSAGES = [
    pytest.param("text", InvalidMessage, "must be a dict", id="str"),
    pytest.param([("type", "x")], InvalidMessage, "must be a dict", id="list"),
    pytest.param(None, InvalidMessage, "must be a dict", id="none"),
    pytest.param({1: "x", "type": "t"}, InvalidMessage, "keys must be str", id="int-key"),
    pytest.param({b"type": "t"}, InvalidMessage, "keys must be str", id="bytes-key"),
    pytest.param({}, InvalidMessage, "'type'", id="no-type"),
    pytest.param({"text": "hi"}, InvalidMessage, "'type'", id="missing-type"),
    pytest.param({"type": 5}, InvalidMessage, "'type'", id="int-type"),
    pytest.param({"type": None}, InvalidMessage, "'type'", id="none-type"),
    pytest.param(
        {"type": "t", "o": object()}, MessageEncodeError, "cannot be encoded", id="object"
    ),
    pytest.param({"type": "t", "s": {1, 2}}, MessageEncodeError, "cannot be encoded", id="set"),
    pytest.param(
        {"type": "t", "deep": {"list": [object()]}},
        MessageEncodeError,
        "cannot be encoded",
        id="deep",
    ),
    pytest.param({"type": "t", "n": 2**70}, MessageEncodeError, "cannot be encoded", id="huge-int"),
]


@pytest.mark.parametrize("via", ["send", "group_send"])
@pytest.mark.parametrize(("message", "error", "says"), BAD_MESSAGES)
async def test_invalid_message(
    layer: Any, kind: str, via: str, message: Any, error: type[Exception], says: str
) -> None:
    channel = await make_channel(layer, kind)
    await layer.group_add("room", channel)
    with pytest.raises(error, match=re.escape(says)) as info:
        await deliver(layer, via, channel, message)
    assert isinstance(info.value, InvalidMessage)
    assert isinstance(info.value, TypeError)
    await layer.send(channel, {"type": "test.good"})
    assert await recv(layer, channel) == {"type": "test.good"}
    await assert_nothing_waiting(layer, channel)


@pytest.mark.parametrize("via", ["send", "group_send"])
async def test_message_too_large(layer_factory: Factory, kind: str, via: str) -> None:
    layer = await layer_factory(max_message_size=1000)
    channel = await make_channel(layer, kind)
    await layer.group_add("room", channel)
    big = {"type": "test.big", "data": "x" * 2000}
    with pytest.raises(MessageTooLarge, match="max_message_size=1000") as info:
        await deliver(layer, via, channel, big)
    assert isinstance(info.value, ValueError)
    # A message under the limit still goes through, and is the first one received.
    small = {"type": "test.small", "data": "x" * 500}
    await deliver(layer, via, channel, small)
    assert await recv(layer, channel) == small
    await assert_nothing_waiting(layer, channel)


# Configuration --------------------------------------------------------------------------------

BAD_CONFIGS = [
    pytest.param({"capacity": 0}, "capacity", id="capacity-0"),
    pytest.param({"capacity": -5}, "capacity", id="capacity-negative"),
    pytest.param({"capacity": 2.5}, "capacity", id="capacity-float"),
    pytest.param({"capacity": True}, "capacity", id="capacity-bool"),
    pytest.param({"expiry": -1}, "expiry", id="expiry-negative"),
    pytest.param({"expiry": 0}, "expiry", id="expiry-0"),
    pytest.param({"expiry": "60"}, "expiry", id="expiry-str"),
    pytest.param({"group_expiry": 0}, "group_expiry", id="group-expiry-0"),
    pytest.param({"max_message_size": 0}, "max_message_size", id="max-size-0"),
    pytest.param({"channel_capacity": {1: 5}}, "channel_capacity", id="cc-int-key"),
    pytest.param({"channel_capacity": {b"hi.*": 5}}, "channel_capacity", id="cc-bytes-key"),
    pytest.param({"channel_capacity": {"hi.*": 0}}, "channel_capacity", id="cc-zero"),
    pytest.param({"channel_capacity": [("hi.*", 1)]}, "channel_capacity", id="cc-list"),
]


@pytest.mark.parametrize(("options", "says"), BAD_CONFIGS)
async def test_config_errors(layer_factory: Factory, options: dict[str, Any], says: str) -> None:
    with pytest.raises(LayerConfigError, match=re.escape(says)) as info:
        await layer_factory(**options)
    assert isinstance(info.value, ValueError)


async def test_valid_config_is_accepted(layer_factory: Factory) -> None:
    layer = await layer_factory(
        expiry=0.5,
        group_expiry=10,
        capacity=7,
        channel_capacity={"hi.*": 1, re.compile(r"^x"): 2},
        max_message_size=4096,
    )
    assert layer.get_capacity("hi.there") == 1
    assert layer.get_capacity("xyz") == 2
    assert layer.get_capacity("plain") == 7
    await layer.send("plain", {"type": "test.ok"})
    assert await recv(layer, "plain") == {"type": "test.ok"}


# Channels' deprecated name checks -------------------------------------------------------------


async def test_deprecated_valid_channel_name_warns_then_checks(layer: Any) -> None:
    with pytest.warns(DeprecationWarning, match="valid_channel_name is deprecated"):
        assert layer.valid_channel_name("valid-channel") is True
    with (
        pytest.warns(DeprecationWarning, match="valid_channel_name"),
        pytest.raises(InvalidChannelName) as info,
    ):
        layer.valid_channel_name("¯\\_(ツ)_/¯")
    assert isinstance(info.value, TypeError)


async def test_deprecated_valid_group_name_warns_then_checks(layer: Any) -> None:
    with pytest.warns(DeprecationWarning, match="valid_group_name is deprecated"):
        assert layer.valid_group_name("valid-group") is True
    with (
        pytest.warns(DeprecationWarning, match="valid_group_name"),
        pytest.raises(InvalidGroupName) as info,
    ):
        layer.valid_group_name("a" * 101)
    assert isinstance(info.value, TypeError)


def test_deprecated_checks_point_at_the_caller() -> None:
    from roomcast.layers.base import BaseChannelLayer

    with pytest.warns(DeprecationWarning, match="require_valid_channel_name") as record:
        BaseChannelLayer().valid_channel_name("chat")
    assert record[0].filename == __file__


# The in-memory layer's introspection (Channels' ``channels`` and ``groups``) -------------------


async def test_memory_groups_has_channels_shape() -> None:
    import time

    from roomcast.layers.memory import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    assert layer.groups == {}
    before = time.time()
    await layer.group_add("room", "chan-b")
    await layer.group_add("room", "chan-a")
    await layer.group_add("other", "chan-a")
    after = time.time()
    assert sorted(layer.groups) == ["other", "room"]
    assert len(layer.groups) == 2
    assert "room" in layer.groups
    assert "nowhere" not in layer.groups
    members = layer.groups["room"]
    assert list(members) == ["chan-b", "chan-a"]  # joining order, as a dict keeps it
    assert len(layer.groups["room"]) == 2
    assert all(before - 1 <= joined <= after + 1 for joined in members.values())
    await layer.group_add("room", "chan-b")  # a renewal keeps the place
    assert list(layer.groups["room"]) == ["chan-b", "chan-a"]
    await layer.group_discard("room", "chan-b")
    await layer.group_discard("other", "chan-a")
    assert layer.groups == {"room": {"chan-a": layer.groups["room"]["chan-a"]}}
    with pytest.raises(KeyError):
        layer.groups["other"]  # no members left: gone, as in Channels
    with pytest.raises(TypeError):
        del layer.groups["room"]  # type: ignore[attr-defined]
    await layer.flush()
    assert layer.groups == {}


async def test_memory_groups_hide_lapsed_memberships() -> None:
    from roomcast.layers.memory import InMemoryChannelLayer

    layer = InMemoryChannelLayer(group_expiry=0.2)
    await layer.group_add("room", "chan-a")
    assert "room" in layer.groups
    await asyncio.sleep(0.4)
    assert "room" not in layer.groups
    assert layer.groups == {}


async def test_memory_channels_has_channels_shape() -> None:
    from roomcast.layers.memory import BufferedMessages, InMemoryChannelLayer

    layer = InMemoryChannelLayer(capacity=3)
    assert layer.channels == {}
    await layer.send("test-channel-1", {"type": "test.message", "text": "Ahoy-hoy!"})
    await layer.send("test-channel-1", {"type": "test.message", "text": "again"})
    assert "test-channel-1" in layer.channels
    assert len(layer.channels) == 1
    queue = layer.channels["test-channel-1"]
    assert isinstance(queue, BufferedMessages)
    assert (queue.qsize(), queue.empty(), queue.full(), queue.maxsize) == (2, False, False, 3)
    assert [message["text"] for _, message in queue] == ["Ahoy-hoy!", "again"]
    queue[0][1]["text"] = "changed"  # a snapshot: the layer's copy is untouched
    assert (await recv(layer, "test-channel-1"))["text"] == "Ahoy-hoy!"
    assert "test-channel-1" in layer.channels  # not removed because not empty
    assert (await recv(layer, "test-channel-1"))["text"] == "again"
    assert "test-channel-1" not in layer.channels  # removed because empty
    for _ in range(3):
        await layer.send("full", {"type": "test.message"})
    assert layer.channels["full"].full()
    with pytest.raises(TypeError):
        del layer.channels["full"]  # type: ignore[attr-defined]
    await layer.flush()
    assert len(layer.channels) == 0


async def test_memory_channels_hide_expired_messages() -> None:
    from roomcast.layers.memory import InMemoryChannelLayer

    layer = InMemoryChannelLayer(expiry=0.2)
    await layer.send("test-channel-1", {"type": "message.1"})
    assert len(layer.channels) == 1
    await asyncio.sleep(0.4)
    assert len(layer.channels) == 0
    with pytest.raises(KeyError):
        layer.channels["test-channel-1"]


async def test_memory_channels_expiry_is_wall_clock() -> None:
    import time

    from roomcast.layers.memory import InMemoryChannelLayer

    layer = InMemoryChannelLayer(expiry=60)
    before = time.time()
    await layer.send("c", {"type": "m"})
    [(expires, message)] = layer.channels["c"]
    assert message == {"type": "m"}
    assert before + 59 <= expires <= time.time() + 61


# History (issue 13) ---------------------------------------------------------------------------
#
# Written for every backend; skipped where the backend keeps no history yet, from the one place
# tests/history_support.py says so.

ROOM_HISTORY = {"room*": {"size": 50}}


@pytest.fixture
def history_factory(layer_factory: Factory, request: pytest.FixtureRequest) -> Factory:
    """``layer_factory`` for the history tests of a backend that keeps history."""
    skip_unless_history(request.node.callspec.params["layer_factory"])
    return layer_factory


async def history_layer(factory: Factory, **options: Any) -> Any:
    options.setdefault("history", ROOM_HISTORY)
    return await factory(**options)


def seq(message: dict[str, Any]) -> int:
    return int(message["n"])


def offset_of(message: dict[str, Any]) -> int:
    stamped = message_position(message)
    assert stamped is not None, message
    return stamped.position.offset


async def send_seq(layer: Any, group: str, numbers: range) -> None:
    for n in numbers:
        await layer.group_send(group, {"type": "test.seq", "n": n})


async def test_history_stamps_every_copy_with_one_position(
    history_factory: Factory, kind: str
) -> None:
    layer = await history_layer(history_factory)
    a = await make_channel(layer, kind, "worker.a")
    b = await make_channel(layer, kind, "worker.b")
    await layer.group_add("room", a)
    await layer.group_add("room", b)
    start = await layer.group_position("room")
    assert start.offset == 0
    await send_seq(layer, "room", range(5))
    for channel in (a, b):
        copies = [await recv(layer, channel) for _ in range(5)]
        assert [seq(m) for m in copies] == list(range(5))
        stamps = [message_position(m) for m in copies]
        assert {s.group for s in stamps if s} == {"room"}
        assert [s.position for s in stamps if s] == [
            StreamPosition(start.epoch, n) for n in range(1, 6)
        ]
        assert all(isinstance(m[POSITION_KEY], str) for m in copies)
    assert await layer.group_position("room") == StreamPosition(start.epoch, 5)


async def test_history_answers_what_came_after_since(history_factory: Factory) -> None:
    layer = await history_layer(history_factory)
    member = await layer.new_channel("member")
    await layer.group_add("room", member)
    await send_seq(layer, "room", range(5))
    live = [await recv(layer, member) for _ in range(5)]
    position = await layer.group_position("room")
    result = await layer.group_history("room", since=StreamPosition(position.epoch, 2))
    assert result.recovered is True
    assert result.position == position
    assert result.messages == live[2:]  # the same copies, positions included
    everything = await layer.group_history("room")
    assert everything.recovered is True  # since None: the whole epoch, nothing trimmed
    assert everything.messages == live
    caught_up = await layer.group_history("room", since=position)
    assert caught_up.messages == []
    assert caught_up.recovered is True


async def test_history_of_a_group_without_members_is_kept(history_factory: Factory) -> None:
    layer = await history_layer(history_factory)
    await send_seq(layer, "room-empty", range(3))
    result = await layer.group_history("room-empty")
    assert [seq(m) for m in result.messages] == [0, 1, 2]
    assert result.position.offset == 3


async def test_history_groups_count_apart(history_factory: Factory) -> None:
    layer = await history_layer(history_factory)
    for n in range(4):
        await layer.group_send("room-a", {"type": "test.seq", "n": n})
        if n % 2:
            await layer.group_send("room-b", {"type": "test.seq", "n": n})
    a = await layer.group_history("room-a")
    b = await layer.group_history("room-b")
    assert [offset_of(m) for m in a.messages] == [1, 2, 3, 4]
    assert [offset_of(m) for m in b.messages] == [1, 2]
    assert [seq(m) for m in b.messages] == [1, 3]
    assert {message_position(m).group for m in b.messages} == {"room-b"}  # type: ignore[union-attr]


async def test_history_size_trims_the_oldest(history_factory: Factory) -> None:
    layer = await history_layer(history_factory, history={"room": {"size": 3}})
    await send_seq(layer, "room", range(5))
    epoch = (await layer.group_position("room")).epoch
    retained = await layer.group_history("room")
    assert [offset_of(m) for m in retained.messages] == [3, 4, 5]
    assert retained.recovered is False  # offsets 1 and 2 are gone
    lost = await layer.group_history("room", since=StreamPosition(epoch, 1))
    assert [offset_of(m) for m in lost.messages] == [3, 4, 5]
    assert lost.recovered is False  # offset 2 was trimmed
    whole = await layer.group_history("room", since=StreamPosition(epoch, 2))
    assert [offset_of(m) for m in whole.messages] == [3, 4, 5]
    assert whole.recovered is True


async def test_history_ttl_trims_old_messages(history_factory: Factory) -> None:
    layer = await history_layer(history_factory, history={"room": {"size": 10, "ttl": 1.5}})
    await layer.group_send("room", {"type": "test.seq", "n": 0})
    await asyncio.sleep(2.0)  # past the first message's ttl
    await layer.group_send("room", {"type": "test.seq", "n": 1})
    result = await layer.group_history("room")
    assert [seq(m) for m in result.messages] == [1]
    assert result.position.offset == 2  # the position outlives the message
    since_first = await layer.group_history("room", since=StreamPosition(result.position.epoch, 1))
    assert since_first.recovered is True
    assert [seq(m) for m in since_first.messages] == [1]
    since_start = await layer.group_history("room", since=StreamPosition(result.position.epoch, 0))
    assert since_start.recovered is False


async def test_history_limit_keeps_the_newest(history_factory: Factory) -> None:
    layer = await history_layer(history_factory)
    await send_seq(layer, "room", range(10))
    epoch = (await layer.group_position("room")).epoch
    since = StreamPosition(epoch, 4)
    cut = await layer.group_history("room", since=since, limit=3)
    assert [offset_of(m) for m in cut.messages] == [8, 9, 10]
    assert cut.recovered is False  # 5, 6 and 7 are not in the answer
    exact = await layer.group_history("room", since=since, limit=6)
    assert [offset_of(m) for m in exact.messages] == [5, 6, 7, 8, 9, 10]
    assert exact.recovered is True
    probe = await layer.group_history("room", since=since, limit=0)
    assert probe.messages == []
    assert probe.recovered is False  # six messages came after since
    assert (await layer.group_history("room", since=cut.position, limit=0)).recovered is True


@pytest.mark.parametrize("forged", ["other-epoch", "ahead"])
async def test_history_position_it_never_gave(history_factory: Factory, forged: str) -> None:
    layer = await history_layer(history_factory)
    await send_seq(layer, "room", range(3))
    await send_seq(layer, "roomx", range(100, 103))
    current = await layer.group_position("room")
    since = (
        StreamPosition("not-this-epoch", 1)
        if forged == "other-epoch"
        else StreamPosition(current.epoch, current.offset + 10)
    )
    result = await layer.group_history("room", since=since)
    assert result.recovered is False
    assert [seq(m) for m in result.messages] == [0, 1, 2]  # this group's, never another's
    assert result.position == current


async def test_group_without_history_is_unchanged(history_factory: Factory, kind: str) -> None:
    layer = await history_layer(history_factory)
    assert layer.history_policy("plain-group") is None
    channel = await make_channel(layer, kind)
    await layer.group_add("plain-group", channel)
    message = {"type": "test.plain", "n": 1}
    await layer.group_send("plain-group", message)
    assert await recv(layer, channel) == message  # no position key
    with pytest.raises(HistoryNotEnabled, match="'plain-group'") as info:
        await layer.group_history("plain-group")
    assert "CONFIG['history']" in str(info.value)
    assert isinstance(info.value, LookupError)
    with pytest.raises(HistoryNotEnabled):
        await layer.group_position("plain-group")


async def test_history_patterns_match_like_channel_capacity(history_factory: Factory) -> None:
    layer = await history_factory(
        history={re.compile(r"^live\."): {"size": 2}, "live*": {"size": 9}, "chat_*": {"size": 4}}
    )
    assert layer.history_policy("live.scores").size == 2  # first match wins
    assert layer.history_policy("lively").size == 9
    assert layer.history_policy("chat_lobby").size == 4
    assert layer.history_policy("xchat_lobby") is None  # globs match the whole name


async def test_history_overrides_the_reserved_key(history_factory: Factory) -> None:
    layer = await history_layer(history_factory)
    member = await layer.new_channel("member")
    await layer.group_add("room", member)
    await layer.group_send("room", {"type": "test.forged", POSITION_KEY: "room:forged:999"})
    received = await recv(layer, member)
    stamped = message_position(received)
    assert stamped is not None
    assert stamped.position.offset == 1
    assert stamped.position.epoch != "forged"


async def test_history_survives_nothing_of_a_flush(history_factory: Factory) -> None:
    layer = await history_layer(history_factory)
    await send_seq(layer, "room", range(3))
    before = await layer.group_position("room")
    await layer.flush()
    after = await layer.group_position("room")
    assert after.epoch != before.epoch
    assert after.offset == 0
    result = await layer.group_history("room", since=before)
    assert (result.messages, result.recovered) == ([], False)


async def test_history_message_limit_is_the_plain_one(history_factory: Factory) -> None:
    """The position is not counted against max_message_size: history groups take exactly the
    messages plain groups take, and a refused message takes no offset."""
    layer = await history_layer(history_factory, max_message_size=1000)
    member = await layer.new_channel("member")
    await layer.group_add("room", member)
    await layer.group_add("plain", member)
    overhead = len(msgpack.packb({"type": "t", "data": "x" * 900})) - 900
    largest = {"type": "t", "data": "x" * (1000 - overhead)}  # exactly 1000 bytes encoded
    await layer.group_send("plain", largest)
    await layer.group_send("room", largest)
    assert (await recv(layer, member))["data"] == largest["data"]
    assert (await recv(layer, member))["data"] == largest["data"]
    with pytest.raises(MessageTooLarge):
        await layer.group_send("room", {"type": "t", "data": largest["data"] + "x"})
    assert (await layer.group_position("room")).offset == 1


BAD_HISTORY = [
    pytest.param({"room": {"size": 0}}, "history['room']['size']", id="size-0"),
    pytest.param({"room": {"size": 10_001}}, "from 1 to 10000", id="size-over-limit"),
    pytest.param({"room": {"size": 2.5}}, "history['room']['size']", id="size-float"),
    pytest.param({"room": {"size": True}}, "history['room']['size']", id="size-bool"),
    pytest.param({"room": {"ttl": 5}}, "'size' is required", id="size-missing"),
    pytest.param({"room": {"size": 5, "ttl": 0}}, "history['room']['ttl']", id="ttl-0"),
    pytest.param({"room": {"size": 5, "ttl": -1}}, "history['room']['ttl']", id="ttl-negative"),
    pytest.param({"room": {"size": 5, "ttl": 1e9}}, "at most 2.592e+06", id="ttl-over-limit"),
    pytest.param({"room": {"size": 5, "ttl": "60"}}, "history['room']['ttl']", id="ttl-str"),
    pytest.param({"room": {"size": 5, "tll": 60}}, "unknown key 'tll'", id="unknown-key"),
    pytest.param({"room": 100}, "history['room'] must be a dict", id="not-a-dict"),
    pytest.param({1: {"size": 5}}, "history keys must be glob strings", id="int-pattern"),
    pytest.param([("room", {"size": 5})], "history must be a dict", id="list"),
]


@pytest.mark.parametrize(("history", "says"), BAD_HISTORY)
async def test_history_config_errors(history_factory: Factory, history: Any, says: str) -> None:
    with pytest.raises(LayerConfigError, match=re.escape(says)) as info:
        await history_factory(history=history)
    assert isinstance(info.value, ValueError)


async def test_group_history_argument_errors(history_factory: Factory) -> None:
    layer = await history_layer(history_factory)
    with pytest.raises(InvalidPosition, match=r"StreamPosition\.parse"):
        await layer.group_history("room", since="epoch:1")
    with pytest.raises(ValueError, match="limit must be 0 or more"):
        await layer.group_history("room", limit=-1)
    with pytest.raises(TypeError, match="limit must be an int"):
        await layer.group_history("room", limit="3")
    with pytest.raises(InvalidGroupName):
        await layer.group_history("no spaces")
    with pytest.raises(InvalidGroupName):
        await layer.group_position("x" * 200)
