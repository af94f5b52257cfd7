"""Resumable consumers (:mod:`roomcast.consumers.resume`) on a real in-memory layer.

Each test drives a consumer through the test communicator and sends group messages through the
very layer the consumer uses. Races between the replay and live messages are made real, not
simulated: a layer subclass sends group messages from inside ``group_history``, before and
after it reads, exactly where a busy room's messages would land. The same scenarios through a
real gateway and real sockets are in ``tests/e2e/test_chat.py``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from roomcast.consumers import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from roomcast.consumers.resume import ResumableGroupsMixin, ResumeFrom, position_text
from roomcast.consumers.testing import WebsocketCommunicator
from roomcast.layers.history import HistoryResult, StreamPosition
from roomcast.layers.memory import InMemoryChannelLayer
from roomcast.layers.settings import channel_layers

from tests.redis_server import free_port

TIMEOUT = 5.0
HISTORY = {"room*": {"size": 100}, "elsewhere": {"size": 100}}


class Room(ResumableGroupsMixin, AsyncJsonWebsocketConsumer):
    """Resumes ``room_group`` from ``?since=``; relays ``{"n": ...}``."""

    room_group: str = "room"

    async def connect(self) -> None:
        await self.resume_group(self.room_group)
        await self.accept()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if content.get("whoami"):
            await self.send_json({"channel": self.channel_name})

    async def room_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"n": event["n"], "position": position_text(event)})


class RacingLayer(InMemoryChannelLayer):
    """Sends ``before`` into the group just before the next history read, ``after`` just
    after it: the messages of a busy room, landing in the replay's window."""

    before: list[int]
    after: list[int]

    def race(self, before: list[int], after: list[int]) -> None:
        self.before, self.after = before, after

    async def group_history(
        self, group: str, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryResult:
        before, self.before = getattr(self, "before", []), []
        after, self.after = getattr(self, "after", []), []
        for n in before:
            await self.group_send(group, {"type": "room.message", "n": n})
        result = await super().group_history(group, since, limit)
        for n in after:
            await self.group_send(group, {"type": "room.message", "n": n})
        return result


@pytest.fixture
async def layer() -> AsyncIterator[RacingLayer]:
    layer = RacingLayer(history=HISTORY, capacity=1000)
    channel_layers.set("default", layer)
    yield layer
    channel_layers.reset()


async def say(layer: InMemoryChannelLayer, numbers: range, group: str = "room") -> None:
    for n in numbers:
        await layer.group_send(group, {"type": "room.message", "n": n})


async def connect(path: str, consumer: type[Any] = Room, **initkwargs: Any) -> Any:
    communicator = WebsocketCommunicator(consumer.as_asgi(**initkwargs), path)
    connected, _ = await communicator.connect(TIMEOUT)
    assert connected
    return communicator


async def frames(communicator: Any, count: int) -> list[Any]:
    return [await communicator.receive_json_from(TIMEOUT) for _ in range(count)]


async def numbers(communicator: Any, count: int) -> list[int]:
    received = await frames(communicator, count)
    assert all("n" in frame for frame in received), received
    return [frame["n"] for frame in received]


async def closed_with(communicator: Any) -> tuple[int, str]:
    message = await communicator.receive_output(TIMEOUT)
    assert message["type"] == "websocket.close", message
    return message.get("code"), message.get("reason", "")


# The protocol ------------------------------------------------------------------------------


async def test_a_client_that_does_not_ask_hears_the_old_protocol(layer: RacingLayer) -> None:
    client = await connect("/ws/")
    await say(layer, range(2))
    epoch = (await layer.group_position("room")).epoch
    assert await frames(client, 2) == [
        {"n": 0, "position": f"{epoch}:1"},
        {"n": 1, "position": f"{epoch}:2"},
    ]
    assert await client.receive_nothing()
    await client.disconnect()


async def test_a_first_connection_is_told_its_position(layer: RacingLayer) -> None:
    await say(layer, range(3))
    client = await connect("/ws/?since=")
    position = await layer.group_position("room")
    assert await client.receive_json_from(TIMEOUT) == {
        "type": "resume",
        "group": "room",
        "position": str(position),
        "recovered": True,
        "replayed": 0,
    }
    assert await client.receive_nothing()  # what was said before is not replayed
    await client.disconnect()


async def test_resume_replays_the_missed_messages_then_goes_live(layer: RacingLayer) -> None:
    client = await connect("/ws/?since=")
    await frames(client, 1)  # the report
    await say(layer, range(3))
    seen = await frames(client, 3)
    await client.disconnect()
    await say(layer, range(3, 33))  # 30 messages while away
    client = await connect(f"/ws/?since={seen[-1]['position']}")
    report = await client.receive_json_from(TIMEOUT)
    assert report["recovered"] is True
    assert report["replayed"] == 30
    assert await numbers(client, 30) == list(range(3, 33))
    await say(layer, range(33, 36))
    assert await numbers(client, 3) == [33, 34, 35]
    assert await client.receive_nothing()
    await client.disconnect()


async def test_no_gap_and_no_duplicate_when_the_room_talks_during_the_replay(
    layer: RacingLayer,
) -> None:
    await say(layer, range(10))  # n 0..9 at offsets 1..10
    since = StreamPosition((await layer.group_position("room")).epoch, 4)  # has seen n 0..3
    # 10..14 land after the join and before the read: in the history answer AND live in the
    # member's buffer. 15..19 land after the read: live only.
    layer.race(before=list(range(10, 15)), after=list(range(15, 20)))
    client = await connect(f"/ws/?since={since}")
    report = await client.receive_json_from(TIMEOUT)
    assert (report["recovered"], report["replayed"]) == (True, 11)  # n 4..14
    assert await numbers(client, 16) == list(range(4, 20))
    await say(layer, range(20, 22))
    assert await numbers(client, 2) == [20, 21]
    assert await client.receive_nothing()
    await client.disconnect()


async def test_a_gap_from_a_full_buffer_is_filled_from_history() -> None:
    layer = InMemoryChannelLayer(history=HISTORY, capacity=5)
    channel_layers.set("default", layer)
    try:
        client = await connect("/ws/?since=")
        await frames(client, 1)
        await say(layer, range(20))  # no await point inside: the buffer overflows at 5
        assert layer.counters.dropped == 15
        assert await numbers(client, 5) == [0, 1, 2, 3, 4]
        await say(layer, range(20, 21))  # its offset shows the gap
        assert await numbers(client, 16) == list(range(5, 21))
        assert await client.receive_nothing()  # no report: nothing is missing
        await client.disconnect()
    finally:
        channel_layers.reset()


async def test_a_gap_the_history_cannot_fill_is_reported() -> None:
    layer = InMemoryChannelLayer(history={"room": {"size": 3}}, capacity=2)
    channel_layers.set("default", layer)
    try:
        client = await connect("/ws/?since=")
        await frames(client, 1)
        await say(layer, range(10))  # buffer keeps 0, 1; history keeps 7, 8, 9
        assert await numbers(client, 2) == [0, 1]
        await say(layer, range(10, 11))
        report = await client.receive_json_from(TIMEOUT)
        position = await layer.group_position("room")
        assert report == {
            "type": "resume",
            "group": "room",
            "position": str(position),
            "recovered": False,
            "replayed": 3,
        }
        assert await numbers(client, 3) == [8, 9, 10]
        assert await client.receive_nothing()
        await client.disconnect()
    finally:
        channel_layers.reset()


async def test_a_new_epoch_under_a_live_connection_is_reported(layer: RacingLayer) -> None:
    client = await connect("/ws/?since=")
    await frames(client, 1)
    await client.send_json_to({"whoami": True})
    channel = (await client.receive_json_from(TIMEOUT))["channel"]
    await layer.flush()  # the history is lost: new epochs
    await layer.group_add("room", channel)
    await say(layer, range(1))
    report = await client.receive_json_from(TIMEOUT)
    assert (report["recovered"], report["replayed"]) == (False, 1)
    assert report["position"] == str(await layer.group_position("room"))
    assert await numbers(client, 1) == [0]
    assert await client.receive_nothing()
    await client.disconnect()


# Bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("since=garbage", "'<epoch>:<offset>'"),
        ("since=e%3A-1", "decimal offset"),
        ("since=e:1&since=e:2", "given 2 times"),
        ("since=" + "x" * 500, "too long"),
        ("since=%C3%A9:1", "epoch must be"),
    ],
)
async def test_a_malformed_position_closes_1008_and_joins_nothing(
    layer: RacingLayer, query: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "roomcast.consumers")
    client = await connect(f"/ws/?{query}")
    code, reason = await closed_with(client)
    assert code == 1008
    assert reason.startswith("invalid position: ")
    assert says in reason
    assert len(reason.encode()) <= 123
    await say(layer, range(1))
    assert await client.receive_nothing()  # never joined
    await client.disconnect()
    assert "Traceback" not in caplog.text


async def test_a_forged_position_gets_this_groups_history_only(layer: RacingLayer) -> None:
    await say(layer, range(100, 105), group="elsewhere")
    await say(layer, range(3))
    foreign = await layer.group_position("elsewhere")
    client = await connect(f"/ws/?since={foreign.epoch}:1")
    report = await client.receive_json_from(TIMEOUT)
    assert (report["recovered"], report["replayed"]) == (False, 3)
    assert await numbers(client, 3) == [0, 1, 2]
    assert await client.receive_nothing()
    await client.disconnect()


async def test_a_position_ahead_of_the_group_is_not_recovered(layer: RacingLayer) -> None:
    await say(layer, range(2))
    epoch = (await layer.group_position("room")).epoch
    client = await connect(f"/ws/?since={epoch}:999")
    report = await client.receive_json_from(TIMEOUT)
    assert (report["recovered"], report["replayed"], report["position"]) == (
        False,
        2,
        f"{epoch}:2",
    )
    assert await numbers(client, 2) == [0, 1]
    await client.disconnect()


async def test_a_group_without_history_is_joined_plainly(layer: RacingLayer) -> None:
    client = await connect("/ws/?since=", room_group="plain")
    await say(layer, range(1), group="plain")
    assert await client.receive_json_from(TIMEOUT) == {"n": 0, "position": None}
    assert await client.receive_nothing()
    await client.disconnect()


async def test_layer_down_closes_1013_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    from roomcast.layers.redis import RedisChannelLayer

    down = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{free_port()}/0"], retry_timeout=0.5)
    channel_layers.set("default", down)
    try:
        with caplog.at_level(logging.WARNING, "roomcast.consumers"):
            client = await connect("/ws/?since=")
            assert await closed_with(client) == (1013, "channel layer unavailable")
            await client.disconnect()
        lines = [r for r in caplog.records if r.name == "roomcast.consumers"]
        assert len(lines) == 1
        assert "channel layer is unavailable" in lines[0].getMessage()
        assert lines[0].exc_info is None
    finally:
        channel_layers.reset()
        await down.close()


# Shapes of consumers -------------------------------------------------------------------------


class PlainRoom(ResumableGroupsMixin, AsyncWebsocketConsumer):
    """Not a JSON consumer: frames are the message numbers as text; the report is JSON."""

    async def connect(self) -> None:
        await self.accept()
        await self.resume_group("room")  # after the accept: all at once

    async def room_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=str(event["n"]))


async def test_a_plain_websocket_consumer_resumes_too(layer: RacingLayer) -> None:
    await say(layer, range(2))
    since = StreamPosition((await layer.group_position("room")).epoch, 1)
    client = await connect(f"/ws/?since={since}", PlainRoom)
    assert (await client.receive_json_from(TIMEOUT))["replayed"] == 1
    assert await client.receive_from(TIMEOUT) == "1"
    await say(layer, range(2, 3))
    assert await client.receive_from(TIMEOUT) == "2"
    await client.disconnect()


class TwoRooms(Room):
    async def connect(self) -> None:
        await self.resume_group("room-a")
        await self.resume_group("room-b")
        await self.accept()


class TwoRoomsByName(TwoRooms):
    async def resume_from(self, group: str) -> ResumeFrom | None:
        query = parse_qs(self.scope["query_string"].decode(), keep_blank_values=True)
        values = query.get(f"since_{group}")
        if values is None:
            return None
        return ResumeFrom(StreamPosition.parse(values[0]) if values[0] else None)


async def test_the_default_hook_refuses_a_second_group(layer: RacingLayer) -> None:
    communicator = WebsocketCommunicator(TwoRooms.as_asgi(), "/ws/?since=")
    with pytest.raises(RuntimeError, match="override resume_from"):
        await communicator.connect(TIMEOUT)


async def test_an_overridden_hook_resumes_several_groups(layer: RacingLayer) -> None:
    await say(layer, range(3), group="room-a")
    await say(layer, range(10, 12), group="room-b")
    a = StreamPosition((await layer.group_position("room-a")).epoch, 1)
    client = await connect(f"/ws/?since_room-a={a}&since_room-b=", TwoRoomsByName)
    report_a = await client.receive_json_from(TIMEOUT)
    assert (report_a["group"], report_a["replayed"]) == ("room-a", 2)
    assert await numbers(client, 2) == [1, 2]
    report_b = await client.receive_json_from(TIMEOUT)
    assert (report_b["group"], report_b["replayed"]) == ("room-b", 0)
    await say(layer, range(12, 13), group="room-b")
    await say(layer, range(3, 4), group="room-a")
    assert await numbers(client, 2) == [12, 3]
    await client.disconnect()
