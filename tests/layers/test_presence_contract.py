"""The presence contract (:mod:`roomcast.layers.presence`), run against both backends.

Parametrised as ``tests/layers/test_contract.py`` is: every test gets ``layer_factory``, an
async ``make(**options)`` building in-memory or Redis layers (closed at teardown). Two Redis
layers made by one factory are two processes as far as Redis can tell (their own process ids,
connections and heartbeats); tests that need separate OS processes, and a SIGKILL, are in
``tests/layers/test_presence_processes.py``.

Event bounds are counted, never timed: a storm's duration is measured and the bound follows
from it (``2 * (duration / interval + 2)`` messages per process), so a slow machine gets a
looser bound, not a failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack
import pytest
from roomcast.layers.exceptions import InvalidChannelName, InvalidGroupName, LayerConfigError
from roomcast.layers.presence import (
    JOIN,
    LEAVE,
    MAX_INFO_SIZE,
    InvalidPresenceInfo,
    PresenceInfoTooLarge,
    PresenceStats,
)

from tests.history_support import skip_unless_history

TIMEOUT = 5.0
NOTHING = 0.3
CLOSE_TIMEOUT = 10.0
INTERVAL = 0.2
EVENTS = {"room*": {"interval": INTERVAL}}

Factory = Callable[..., Awaitable[Any]]


@pytest.fixture(params=["memory", "redis"])
async def layer_factory(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    made: list[Any] = []
    build: Callable[..., Any]
    if request.param == "memory":
        from roomcast.layers.memory import InMemoryChannelLayer

        build = InMemoryChannelLayer
    else:
        server = request.getfixturevalue("redis_server")
        prefix = request.getfixturevalue("redis_prefix")
        from roomcast.layers.redis import RedisChannelLayer

        def build(**options: Any) -> Any:
            options.setdefault("hosts", [server.url])
            options.setdefault("prefix", prefix)
            return RedisChannelLayer(**options)

    async def make(**options: Any) -> Any:
        options.setdefault("capacity", 10_000)
        layer = build(**options)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        await asyncio.wait_for(layer.close(), CLOSE_TIMEOUT)


@pytest.fixture
def backend(layer_factory: Factory, request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["layer_factory"])


async def member(layer: Any, group: str = "room") -> str:
    """A channel of ``layer`` that is a member of ``group`` (it hears the group's events)."""
    channel = str(await layer.new_channel())
    await layer.group_add(group, channel)
    return channel


async def recv(layer: Any, channel: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    message: dict[str, Any] = await asyncio.wait_for(layer.receive(channel), timeout)
    return message


async def nothing_more(layer: Any, channel: str) -> bool:
    try:
        message = await asyncio.wait_for(layer.receive(channel), NOTHING)
    except TimeoutError:
        return True
    pytest.fail(f"unexpected message {message!r}")


async def events_until(
    layer: Any, channel: str, done: Callable[[dict[str, dict[str, Any]]], bool]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Receive presence events, applying them to a map, until ``done(map)``; returns them."""
    seen: list[dict[str, Any]] = []
    state: dict[str, dict[str, Any]] = {}
    while not done(state):
        message = await recv(layer, channel, timeout=30)
        assert message["type"] in (JOIN, LEAVE), message
        seen.append(message)
        if message["type"] == JOIN:
            state.update(message["members"])
        else:
            for channel_name in message["members"]:
                state.pop(channel_name, None)
    return seen, state


# Entries -------------------------------------------------------------------------------------


async def test_add_read_remove(layer_factory: Factory) -> None:
    layer = await layer_factory()
    alice, bob = await layer.new_channel(), await layer.new_channel()
    assert await layer.presence("room") == {}
    await layer.presence_add("room", alice, {"user": "1", "name": "Alice"})
    await layer.presence_add("room", bob, {"user": 2, "name": "Bob", "status": None})
    assert await layer.presence("room") == {
        alice: {"user": "1", "name": "Alice"},
        bob: {"user": 2, "name": "Bob", "status": None},
    }
    await layer.presence_add("room", bob, {"user": 2, "name": "Bobby"})  # replaces its info
    assert (await layer.presence("room"))[bob] == {"user": 2, "name": "Bobby"}
    await layer.presence_remove("room", alice)
    await layer.presence_remove("room", alice)  # already gone: a no-op
    await layer.presence_remove("room", "never.there")
    assert await layer.presence("room") == {bob: {"user": 2, "name": "Bobby"}}
    assert await layer.presence("elsewhere") == {}


async def test_the_layer_keeps_its_own_copy(layer_factory: Factory) -> None:
    layer = await layer_factory()
    channel = await layer.new_channel()
    info: dict[str, Any] = {"user": "1", "tags": ["a"]}
    await layer.presence_add("room", channel, info)
    info["tags"].append("changed later")
    read = await layer.presence("room")
    assert read == {channel: {"user": "1", "tags": ["a"]}}
    read[channel]["tags"].append("changed by a reader")
    assert await layer.presence("room") == {channel: {"user": "1", "tags": ["a"]}}


async def test_stats_count_connections_and_distinct_users(layer_factory: Factory) -> None:
    layer = await layer_factory()
    assert await layer.presence_stats("room") == PresenceStats(0, 0)
    channels = [await layer.new_channel() for _ in range(5)]
    infos = [{"user": "alice"}, {"user": "alice"}, {"user": "bob"}, {"user": 7}, {"name": "x"}]
    for channel, info in zip(channels, infos, strict=True):
        await layer.presence_add("room", channel, info)
    stats = await layer.presence_stats("room")
    assert stats == PresenceStats(connections=5, users=3)  # two tabs of alice are one user
    assert stats.as_dict() == {"connections": 5, "users": 3}


async def test_both_layers_list_presence_in_their_extensions(layer_factory: Factory) -> None:
    layer = await layer_factory()
    assert "presence" in layer.extensions


@pytest.mark.parametrize(
    ("info", "error", "says"),
    [
        (None, InvalidPresenceInfo, "must be a dict"),
        (["user", "1"], InvalidPresenceInfo, "not list"),
        ("alice", InvalidPresenceInfo, "not str"),
        ({1: "one"}, InvalidPresenceInfo, "keys must be str"),
        ({"when": object()}, InvalidPresenceInfo, "cannot be encoded with msgpack"),
        ({"user": ["a"]}, InvalidPresenceInfo, "'user' must be a str or an int"),
        ({"user": True}, InvalidPresenceInfo, "'user' must be a str or an int"),
        ({"bio": "x" * MAX_INFO_SIZE}, PresenceInfoTooLarge, f"the limit is {MAX_INFO_SIZE}"),
    ],
)
async def test_bad_info_is_refused_with_a_clear_error_and_nothing_written(
    layer_factory: Factory, info: Any, error: type[Exception], says: str
) -> None:
    layer = await layer_factory(presence=EVENTS)
    watcher = await member(layer)
    channel = await layer.new_channel()
    with pytest.raises(error) as raised:
        await layer.presence_add("room", channel, info)
    assert says in str(raised.value)
    assert await layer.presence("room") == {}
    assert await nothing_more(layer, watcher)


async def test_info_at_the_limit_is_accepted(layer_factory: Factory) -> None:
    layer = await layer_factory()
    overhead = len(msgpack.packb({"bio": "x" * 300})) - 300  # a str16 header
    info = {"bio": "x" * (MAX_INFO_SIZE - overhead)}
    assert len(msgpack.packb(info)) == MAX_INFO_SIZE
    channel = await layer.new_channel()
    await layer.presence_add("room", channel, info)
    assert await layer.presence("room") == {channel: info}
    with pytest.raises(PresenceInfoTooLarge):
        await layer.presence_add("room", channel, {"bio": info["bio"] + "x"})
    assert await layer.presence("room") == {channel: info}  # the refused one changed nothing


async def test_bad_names_are_refused(layer_factory: Factory) -> None:
    layer = await layer_factory()
    channel = await layer.new_channel()
    with pytest.raises(InvalidGroupName):
        await layer.presence_add("bad group", channel, {})
    with pytest.raises(InvalidChannelName):
        await layer.presence_add("room", "bad channel", {})
    with pytest.raises(InvalidGroupName):
        await layer.presence("x" * 100)
    with pytest.raises(InvalidGroupName):
        await layer.presence_remove("bad group", channel)


async def test_flush_forgets_presence(layer_factory: Factory) -> None:
    layer = await layer_factory()
    await layer.presence_add("room", await layer.new_channel(), {"user": "1"})
    await layer.flush()
    assert await layer.presence("room") == {}


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"room": 1}, "must be a dict such as {'interval': 0.5}"),
        ({"room": {"interval": 0}}, "presence['room']['interval'] must be a number of seconds"),
        ({"room": {"interval": "fast"}}, "must be a number of seconds from 0.05 to 60"),
        ({"room": {"every": 1}}, "unknown key 'every'"),
        (["room"], "presence must be a dict of pattern"),
    ],
)
async def test_a_bad_presence_option_names_the_key(
    layer_factory: Factory, config: Any, says: str
) -> None:
    with pytest.raises(LayerConfigError) as raised:
        await layer_factory(presence=config)
    assert says in str(raised.value)


# Events --------------------------------------------------------------------------------------


async def test_members_hear_joins_and_leaves(layer_factory: Factory) -> None:
    layer = await layer_factory(presence=EVENTS)
    watcher = await member(layer)
    alice = await layer.new_channel()
    await layer.presence_add("room", alice, {"user": "1", "name": "Alice"})
    assert await recv(layer, watcher) == {
        "type": JOIN,
        "group": "room",
        "members": {alice: {"user": "1", "name": "Alice"}},
    }
    await layer.presence_remove("room", alice)
    assert await recv(layer, watcher) == {
        "type": LEAVE,
        "group": "room",
        "members": {alice: {"user": "1", "name": "Alice"}},
    }
    assert await nothing_more(layer, watcher)


async def test_groups_that_did_not_ask_send_no_events(layer_factory: Factory) -> None:
    layer = await layer_factory(presence=EVENTS)
    watcher = await member(layer, "quiet")
    channel = await layer.new_channel()
    await layer.presence_add("quiet", channel, {"user": "1"})
    await layer.presence_remove("quiet", channel)
    await layer.group_send("quiet", {"type": "marker"})
    assert (await recv(layer, watcher))["type"] == "marker"


async def test_a_join_and_leave_within_an_interval_is_one_leave(layer_factory: Factory) -> None:
    # A long interval: the test's own calls must fit in it even on a stalled machine.
    layer = await layer_factory(presence={"room": {"interval": 3.0}})
    watcher = await member(layer)
    first, passing = await layer.new_channel(), await layer.new_channel()
    await layer.presence_add("room", first, {"n": 1})  # after a quiet spell: at once
    assert (await recv(layer, watcher))["members"] == {first: {"n": 1}}
    await layer.presence_add("room", passing, {"n": 2})  # both within the next interval
    await layer.presence_remove("room", passing)
    assert await recv(layer, watcher) == {
        "type": LEAVE,
        "group": "room",
        "members": {passing: {"n": 2}},
    }
    assert await nothing_more(layer, watcher)


async def test_a_storm_of_1000_joins_gives_a_bounded_number_of_events(
    layer_factory: Factory, backend: str
) -> None:
    """Two processes (Redis; one in memory), 500 joins each, then 500 leaves and 500 joins
    each (a reconnect storm), spread over many event-loop turns: a member hears at most the
    coalesced count."""
    here = await layer_factory(presence=EVENTS)
    there = await layer_factory(presence=EVENTS) if backend == "redis" else here
    watcher = await member(here)

    async def storm(layer: Any, channels: list[str], leaving: list[str]) -> None:
        for n, channel in enumerate(channels):
            if leaving:
                await layer.presence_remove("room", leaving[n])
            await layer.presence_add("room", channel, {"user": channel[-6:]})
            if n % 10 == 0:
                await asyncio.sleep(0)  # spread out: many turns, as sockets arrive

    layers = [here, there]
    first = [[await layer.new_channel() for _ in range(500)] for layer in layers]
    started = time.monotonic()
    await asyncio.gather(*(storm(layer, new, []) for layer, new in zip(layers, first, strict=True)))
    everyone = {channel for channels in first for channel in channels}
    seen, _ = await events_until(here, watcher, lambda state: set(state) == everyone)
    elapsed = time.monotonic() - started
    bound = 2 * int(elapsed / INTERVAL + 2)  # per process
    assert len(seen) <= 2 * bound, (len(seen), elapsed)
    assert len(seen) <= 250, "far fewer than one message per join"
    print(f"\n1,000 joins: {len(seen)} messages in {elapsed:.2f} s")
    assert len(await here.presence("room")) == 1000

    second = [[await layer.new_channel() for _ in range(500)] for layer in layers]
    started = time.monotonic()
    await asyncio.gather(
        *(storm(layer, new, old) for layer, new, old in zip(layers, second, first, strict=True))
    )
    everyone = {channel for channels in second for channel in channels}
    seen, _ = await events_until(here, watcher, lambda state: set(state) == everyone)
    elapsed = time.monotonic() - started
    assert len(seen) <= 2 * 2 * int(elapsed / INTERVAL + 2), (len(seen), elapsed)
    assert len(seen) < 2000
    print(f"reconnect storm of 1,000: {len(seen)} messages in {elapsed:.2f} s")
    assert set(await here.presence("room")) == everyone


async def test_a_large_batch_is_split_under_max_message_size(layer_factory: Factory) -> None:
    layer = await layer_factory(presence=EVENTS, max_message_size=4096)
    watcher = await member(layer)
    channels = [await layer.new_channel() for _ in range(200)]
    for channel in channels:  # one turn: one batch of 200 joins, ~17 KB
        await layer.presence_add("room", channel, {"user": channel, "name": "n" * 20})
    seen, state = await events_until(layer, watcher, lambda state: len(state) == 200)
    assert set(state) == set(channels)
    assert len(seen) > 1
    assert all(len(msgpack.packb(message)) <= 4096 for message in seen)


async def test_events_never_enter_a_groups_history(layer_factory: Factory, backend: str) -> None:
    skip_unless_history(backend)
    layer = await layer_factory(presence=EVENTS, history={"room": {"size": 10}})
    watcher = await member(layer)
    channel = await layer.new_channel()
    await layer.presence_add("room", channel, {"user": "1"})
    assert (await recv(layer, watcher))["type"] == JOIN
    await layer.group_send("room", {"type": "chat.message", "text": "hi"})
    assert (await recv(layer, watcher))["type"] == "chat.message"
    history = await layer.group_history("room")
    assert [message["type"] for message in history.messages] == ["chat.message"]
