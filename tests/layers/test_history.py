"""The history vocabulary (:mod:`roomcast.layers.history`) and the in-memory layer's own history.

What every backend must do is in ``test_contract.py``; here: positions and their validation
(the input clients send), the stamp on encoded bytes, the selection rules of ``group_history``
as a table, and what only the in-memory layer does (epochs per instance, forgetting idle
records).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
from roomcast.layers.exceptions import InvalidPosition, LayerError
from roomcast.layers.history import (
    POSITION_KEY,
    HistoryPolicy,
    StreamPosition,
    message_position,
    select_history,
    stamp,
    stamp_payload,
    without_position,
)
from roomcast.layers.local import shareable
from roomcast.layers.memory import InMemoryChannelLayer
from roomcast.layers.serializers import MessageCodec

# StreamPosition ------------------------------------------------------------------------------


def test_position_text_and_dict_forms_round_trip() -> None:
    position = StreamPosition("AbC-_9", 42)
    assert str(position) == "AbC-_9:42"
    assert position.as_dict() == {"epoch": "AbC-_9", "offset": 42}
    assert StreamPosition.parse("AbC-_9:42") == position
    assert StreamPosition.parse(position.as_dict()) == position
    assert StreamPosition.parse(["AbC-_9", 42]) == position
    assert StreamPosition.parse(msgpack.unpackb(msgpack.packb(position.as_dict()))) == position
    assert StreamPosition.parse(position) is position
    assert {position, StreamPosition("AbC-_9", 42)} == {position}  # hashable, by value
    with pytest.raises(AttributeError):
        position.offset = 43  # type: ignore[misc]


MALFORMED = [
    pytest.param("", "'<epoch>:<offset>'", id="empty"),
    pytest.param("epoch", "'<epoch>:<offset>'", id="no-colon"),
    pytest.param("epoch:", "'<epoch>:<offset>'", id="no-offset"),
    pytest.param(":5", "epoch must be", id="no-epoch"),
    pytest.param("e:-1", "decimal offset", id="negative"),
    pytest.param("e:+1", "decimal offset", id="plus-sign"),
    pytest.param("e:01", "decimal offset", id="leading-zero"),
    pytest.param("e:1.5", "decimal offset", id="fraction"),
    pytest.param("e:١٢", "decimal offset", id="arabic-digits"),
    pytest.param("e:1\n", "decimal offset", id="trailing-newline"),
    pytest.param("e\n:1", "epoch must be", id="newline-in-epoch"),
    pytest.param("e:9223372036854775808", "offset must be an int from 0", id="offset-over-2**63"),
    pytest.param("e:99999999999999999999", "decimal offset", id="offset-20-digits"),
    pytest.param("a:b:1", "decimal offset", id="two-colons"),
    pytest.param("é:1", "epoch must be", id="non-ascii-epoch"),
    pytest.param("x" * 65 + ":1", "epoch must be 1 to 64", id="epoch-too-long"),
    pytest.param("x" * 300, "too long", id="huge"),
    pytest.param({"epoch": "e"}, "exactly the keys", id="dict-missing-offset"),
    pytest.param({"epoch": "e", "offset": 1, "x": 2}, "exactly the keys", id="dict-extra-key"),
    pytest.param({"epoch": "e", "offset": "1"}, "offset must be an int", id="dict-str-offset"),
    pytest.param({"epoch": "e", "offset": True}, "offset must be an int", id="dict-bool-offset"),
    pytest.param({"epoch": 5, "offset": 1}, "epoch must be", id="dict-int-epoch"),
    pytest.param(["e"], "not list", id="short-list"),
    pytest.param(12, "not int", id="int"),
    pytest.param(None, "not NoneType", id="none"),
    pytest.param(b"e:1", "not bytes", id="bytes"),
]


@pytest.mark.parametrize(("value", "says"), MALFORMED)
def test_malformed_positions_are_refused_saying_why(value: Any, says: str) -> None:
    with pytest.raises(InvalidPosition, match=says[:30].replace("(", r"\(")) as info:
        StreamPosition.parse(value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, LayerError)


def test_position_constructor_validates_too() -> None:
    with pytest.raises(InvalidPosition):
        StreamPosition("", 0)
    with pytest.raises(InvalidPosition):
        StreamPosition("e", -1)
    with pytest.raises(InvalidPosition):
        StreamPosition("e", 2**63)
    assert StreamPosition("e", 2**63 - 1).offset == 2**63 - 1


# The stamp -----------------------------------------------------------------------------------


@pytest.mark.parametrize("keys", [0, 1, 14, 15, 16, 70_000])
def test_stamp_payload_adds_one_key_to_any_map(keys: int) -> None:
    message: dict[str, Any] = {"type": "t", **{f"k{n}": n for n in range(keys)}}
    payload = msgpack.packb(message)
    stamped = stamp_payload(payload, stamp("room", "E", 7))
    decoded = msgpack.unpackb(stamped)
    assert decoded == {**message, POSITION_KEY: "room:E:7"}
    assert message_position(decoded) == ("room", StreamPosition("E", 7))
    assert without_position(decoded) == message


@pytest.mark.parametrize("length", [1, 31, 32, 255, 256, 70_000])
def test_stamp_payload_writes_strs_of_any_length_as_msgpack_does(length: int) -> None:
    payload = msgpack.packb({"type": "t"})
    value = "v" * length
    stamped = stamp_payload(payload, value)
    assert stamped == msgpack.packb({"type": "t", POSITION_KEY: value})


def test_stamp_payload_overrides_a_key_already_there() -> None:
    payload = msgpack.packb({"type": "t", POSITION_KEY: "room:forged:1"})
    decoded = msgpack.unpackb(stamp_payload(payload, stamp("room", "E", 2)))
    assert decoded[POSITION_KEY] == "room:E:2"


def test_stamp_payload_refuses_what_is_not_a_map() -> None:
    with pytest.raises(ValueError, match="not an encoded message"):
        stamp_payload(msgpack.packb([1, 2]), "room:E:1")


@pytest.mark.parametrize(
    "value", ["", "room", "room:", ":E:1", "room:E", "room:E:x", 5, ["room", "E", 1]]
)
def test_message_position_refuses_a_stamp_the_layer_did_not_write(value: Any) -> None:
    with pytest.raises(InvalidPosition):
        message_position({"type": "t", POSITION_KEY: value})


def test_message_position_of_a_plain_message_is_none() -> None:
    assert message_position({"type": "t"}) is None


# The selection rules -------------------------------------------------------------------------

E = "E"
RETAINED = [(n, n) for n in range(4, 8)]  # offsets 4..7 retained; 1..3 trimmed
CURRENT = StreamPosition(E, 7)


@pytest.mark.parametrize(
    ("since", "limit", "offsets", "recovered"),
    [
        pytest.param(None, None, [4, 5, 6, 7], False, id="none-but-trimmed"),
        pytest.param(StreamPosition(E, 3), None, [4, 5, 6, 7], True, id="right-at-the-edge"),
        pytest.param(StreamPosition(E, 2), None, [4, 5, 6, 7], False, id="3-was-trimmed"),
        pytest.param(StreamPosition(E, 5), None, [6, 7], True, id="inside"),
        pytest.param(StreamPosition(E, 7), None, [], True, id="caught-up"),
        pytest.param(StreamPosition(E, 8), None, [4, 5, 6, 7], False, id="ahead"),
        pytest.param(StreamPosition("F", 5), None, [4, 5, 6, 7], False, id="other-epoch"),
        pytest.param(StreamPosition(E, 3), 2, [6, 7], False, id="limit-cuts"),
        pytest.param(StreamPosition(E, 5), 2, [6, 7], True, id="limit-fits"),
        pytest.param(StreamPosition(E, 7), 0, [], True, id="limit-0-caught-up"),
        pytest.param(StreamPosition(E, 6), 0, [], False, id="limit-0-behind"),
        pytest.param(StreamPosition("F", 5), 1, [7], False, id="other-epoch-limited"),
    ],
)
def test_select_history_rules(
    since: StreamPosition | None, limit: int | None, offsets: list[int], recovered: bool
) -> None:
    assert select_history(RETAINED, CURRENT, since, limit) == (offsets, recovered)


def test_select_history_of_a_whole_epoch_and_of_an_empty_one() -> None:
    whole = [(n, n) for n in range(1, 4)]
    assert select_history(whole, StreamPosition(E, 3), None, None) == ([1, 2, 3], True)
    assert select_history([], StreamPosition(E, 0), None, None) == ([], True)
    assert select_history([], StreamPosition(E, 3), None, None) == ([], False)  # all expired
    assert select_history([], StreamPosition(E, 3), StreamPosition(E, 3), None) == ([], True)


def test_policy_from_config() -> None:
    assert HistoryPolicy.from_config("x", {"size": 5}) == HistoryPolicy(5, None)
    assert HistoryPolicy.from_config("x", {"size": 5, "ttl": 2}) == HistoryPolicy(5, 2.0)
    with pytest.raises(LayerError, match=r"x\['ttl'\]"):
        HistoryPolicy.from_config("x", {"size": 5, "ttl": float("nan")})


# The in-memory layer's own history -------------------------------------------------------------


async def test_each_layer_instance_has_its_own_epochs() -> None:
    """A new process (a new layer instance) starts new epochs: old positions never resume."""
    first = InMemoryChannelLayer(history={"room": {"size": 5}})
    await first.group_send("room", {"type": "t"})
    old = await first.group_position("room")
    second = InMemoryChannelLayer(history={"room": {"size": 5}})
    result = await second.group_history("room", since=old)
    assert result.position.epoch != old.epoch
    assert (result.messages, result.recovered) == ([], False)


async def test_idle_empty_records_are_forgotten_and_start_a_new_epoch() -> None:
    layer = InMemoryChannelLayer(
        group_expiry=0.5, history={"room*": {"size": 5, "ttl": 0.2}, "kept": {"size": 5}}
    )
    await layer.group_send("room", {"type": "t"})
    await layer.group_send("kept", {"type": "t"})
    room, kept = await layer.group_position("room"), await layer.group_position("kept")
    await asyncio.sleep(1.0)  # past the ttl and past group_expiry
    await layer.group_position("room-other")  # any use sweeps
    assert (await layer.group_position("room")).epoch != room.epoch
    # Without a ttl the record keeps its message, and so its epoch.
    assert await layer.group_position("kept") == kept


async def test_plain_groups_are_untouched_when_history_is_configured() -> None:
    layer = InMemoryChannelLayer(history={"room": {"size": 5}})
    member = await layer.new_channel()
    await layer.group_add("other", member)
    await layer.group_send("other", {"type": "t", "n": 1})
    assert await layer.receive(member) == {"type": "t", "n": 1}
    assert layer.history_policy("other") is None
    assert layer.history_policy("room") == HistoryPolicy(5, None)


def test_a_stamped_message_still_fans_out_from_one_decoded_copy() -> None:
    """The stamp is a str: a flat message stays shareable (decoded once per fan-out)."""
    codec = MessageCodec()
    payload = stamp_payload(codec.encode({"type": "t", "text": "hi"}), stamp("room", "E", 1))
    shared = shareable(payload, codec.decode, 3)
    assert shared == {"type": "t", "text": "hi", POSITION_KEY: "room:E:1"}


async def test_every_member_gets_its_own_stamped_copy() -> None:
    layer = InMemoryChannelLayer(history={"room": {"size": 5}})
    members = [await layer.new_channel() for _ in range(3)]
    for member in members:
        await layer.group_add("room", member)
    await layer.group_send("room", {"type": "t", "text": "hi"})
    copies = [await layer.receive(member) for member in members]
    assert all(copy == copies[0] for copy in copies)
    copies[0]["text"] = "changed"
    assert copies[1]["text"] == "hi"
