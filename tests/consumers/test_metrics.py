"""Consumer and layer metrics, scraped as Prometheus would.

In process: a small chat (async and sync consumers through the WebsocketCommunicator on the
in-memory layer) while /metrics is scraped over HTTP; instances go up and down, messages,
accepts, denials, closes by code and handler errors (with a bounded message_type label) move,
and so do the layer's counters and gauges. Across processes: a real ``roomcast worker
--metrics-port`` on a real redis-server, scraped while it handles messages, then stopped.
Every scrape's roomcast_ names and labels are checked against the naming rules.

The registry is the process's: tests read differences, never absolute values.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import httpx
import pytest
from roomcast.consumers import (
    AsyncJsonWebsocketConsumer,
    AsyncWebsocketConsumer,
    DenyConnection,
    JsonWebsocketConsumer,
)
from roomcast.consumers.metrics import MESSAGE_TYPE_LIMIT
from roomcast.consumers.testing import WebsocketCommunicator
from roomcast.layers import InMemoryChannelLayer
from roomcast.layers.settings import channel_layers

from roomcast import metrics
from tests.consumers.test_worker import ROOT, WorkerProcess, client_layer
from tests.metrics_support import Scrape
from tests.redis_server import RedisServer

WAIT = 10.0
HERE = __name__


@pytest.fixture
def layer() -> Iterator[InMemoryChannelLayer]:
    layer = InMemoryChannelLayer()
    channel_layers.set("default", layer)
    yield layer
    channel_layers.reset()


@contextlib.asynccontextmanager
async def scraper() -> AsyncIterator[Any]:
    """``await scrape()`` → a :class:`Scrape` of a real /metrics endpoint on this loop."""
    async with await metrics.serve(0) as server, httpx.AsyncClient(timeout=WAIT) as client:

        async def scrape() -> Scrape:
            response = await client.get(server.url)
            assert response.status_code == 200
            parsed = Scrape.parse(response.text)
            check_rules(parsed)
            return parsed

        yield scrape


# The naming rules, on what a scrape shows ---------------------------------------------------------

SAMPLE_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count")}


def check_rules(scrape: Scrape) -> None:
    """Every roomcast_ family and sample follows the module docstring's rules."""
    for name, (kind, help_text) in scrape.families.items():
        if not name.startswith("roomcast_"):
            continue
        full = f"{name}_total" if kind == "counter" else name
        metrics.check_name(full, kind, ())  # type: ignore[arg-type]
        assert help_text.strip(), name
    for sample, labels, _ in scrape.samples:
        if not sample.startswith("roomcast_"):
            continue
        label_names = tuple(k for k in labels if k != "le")
        metrics.check_name("roomcast_consumer_labels_total", "counter", label_names)
        assert all(len(v) <= metrics.MAX_LABEL_VALUE for v in labels.values())
    for name, (kind, _) in scrape.families.items():
        if name.startswith("roomcast_") and kind != "histogram":
            sample_name = f"{name}_total" if kind == "counter" else name
            series = [s for s in scrape.samples if s[0] == sample_name]
            assert len(series) <= metrics.MAX_SERIES, name


# Consumers under test --------------------------------------------------------------------------


class Chat(AsyncJsonWebsocketConsumer):
    """Everyone in "room" gets what anyone says; "boom" raises in the handler."""

    groups = ["room"]

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if content == "boom":
            raise RuntimeError("boom")
        await self.channel_layer.group_send("room", {"type": "chat.message", "text": content})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json(event["text"])


class SyncChat(JsonWebsocketConsumer):
    def receive_json(self, content: Any, **kwargs: Any) -> None:
        self.send_json(content, close=4001)


class Doorman(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        raise DenyConnection


class Picky(AsyncWebsocketConsumer):
    """Raises on every layer message: no handler for its type. Says where it listens."""

    channels: ClassVar[list[str]] = []

    async def connect(self) -> None:
        Picky.channels.append(self.channel_name)
        await self.accept()


CHAT = f"{HERE}.Chat"


async def test_a_small_chat_moves_consumer_and_layer_metrics(
    layer: InMemoryChannelLayer,
) -> None:
    people = 5
    async with scraper() as scrape:
        before = await scrape()
        clients = [WebsocketCommunicator(Chat.as_asgi(), "/ws/chat/") for _ in range(people)]
        for client in clients:
            assert (await client.connect(WAIT))[0]
        during = await scrape()
        assert during.value("roomcast_consumer_instances", consumer=CHAT) == people
        assert (
            during.value("roomcast_layer_groups", backend="memory")
            - before.value("roomcast_layer_groups", backend="memory")
            == 1
        )
        assert (
            during.value("roomcast_layer_group_members", backend="memory")
            - before.value("roomcast_layer_group_members", backend="memory")
            == people
        )
        for n, speaker in enumerate(clients[:3]):
            await speaker.send_json_to(f"line {n}")
            for listener in clients:
                assert await listener.receive_json_from(WAIT) == f"line {n}"
        talked = await scrape()
        await clients[0].send_json_to("boom")
        with pytest.raises(RuntimeError, match="boom"):
            await clients[0].wait(WAIT)
        for client in clients[1:3]:
            await client.disconnect(1000)
        for client in clients[3:]:
            await client.disconnect(1001)
        after = await scrape()

    def moved(scrape: Scrape, name: str, **labels: str) -> float:
        return scrape.value(name, **labels) - before.value(name, **labels)

    # connect x5; receive x3 by speakers; chat.message x15; boom; disconnect x4
    assert moved(talked, "roomcast_consumer_messages_total", consumer=CHAT) == 5 + 3 + 15
    assert moved(after, "roomcast_consumer_messages_total", consumer=CHAT) == 5 + 3 + 15 + 1 + 4
    assert after.value("roomcast_consumer_instances", consumer=CHAT) == 0
    assert moved(after, "roomcast_consumer_websocket_accepted_total", consumer=CHAT) == people
    assert moved(after, "roomcast_consumer_websocket_closed_total", consumer=CHAT, code="1000") == 2
    assert moved(after, "roomcast_consumer_websocket_closed_total", consumer=CHAT, code="1001") == 2
    errors = "roomcast_consumer_errors_total"
    assert moved(after, errors, consumer=CHAT, message_type="websocket.receive") == 1
    assert moved(talked, "roomcast_layer_group_sent_total", backend="memory") == 3
    assert moved(talked, "roomcast_layer_delivered_total", backend="memory") == 15
    assert moved(after, "roomcast_layer_dropped_total", backend="memory") == 0
    assert moved(after, "roomcast_layer_group_members", backend="memory") == 0
    documented = (ROOT / "docs" / "operations.md").read_text()
    for name, (kind, _) in after.families.items():
        if name.startswith(("roomcast_layer_", "roomcast_consumer_")):  # tests' own: _worker_
            full = f"{name}_total" if kind == "counter" else name
            assert f"`{full}`" in documented, f"{full} is not in docs/operations.md"


async def test_denials_sync_consumers_and_close_code_classes(layer: InMemoryChannelLayer) -> None:
    async with scraper() as scrape:
        before = await scrape()
        doorman = WebsocketCommunicator(Doorman.as_asgi(), "/ws/")
        assert await doorman.connect(WAIT) == (False, 1000)
        await doorman.wait(WAIT)
        sync = WebsocketCommunicator(SyncChat.as_asgi(), "/ws/")
        assert (await sync.connect(WAIT))[0]
        await sync.send_json_to({"hello": 1})
        assert await sync.receive_json_from(WAIT) == {"hello": 1}
        assert (await sync.receive_output(WAIT))["code"] == 4001
        await sync.disconnect(4001)
        after = await scrape()

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("roomcast_consumer_websocket_denied_total", consumer=f"{HERE}.Doorman") == 1
    assert moved("roomcast_consumer_websocket_accepted_total", consumer=f"{HERE}.Doorman") == 0
    assert moved("roomcast_consumer_websocket_closed_total", consumer=f"{HERE}.Doorman") == 0
    sync_name = f"{HERE}.SyncChat"
    assert moved("roomcast_consumer_websocket_accepted_total", consumer=sync_name) == 1
    assert moved("roomcast_consumer_websocket_closed_total", consumer=sync_name, code="4xxx") == 1
    assert moved("roomcast_consumer_messages_total", consumer=sync_name) == 3
    assert after.value("roomcast_consumer_instances", consumer=sync_name) == 0


class Joiner(AsyncWebsocketConsumer):
    groups: ClassVar[list[str]] = ["room"]


async def test_a_layer_down_close_counts_as_accepted_and_closed_1013() -> None:
    from roomcast.layers.redis import RedisChannelLayer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{port}/0"], retry_timeout=0.2)
    channel_layers.set("default", down)
    try:
        async with scraper() as scrape:
            before = await scrape()
            client = WebsocketCommunicator(Joiner.as_asgi(), "/ws/")
            assert await client.connect(WAIT) == (True, None)  # accepted so the code arrives
            assert (await client.receive_output(WAIT))["code"] == 1013
            await client.disconnect(1013)
            after = await scrape()
    finally:
        channel_layers.reset()
        await down.close()
    joiner = f"{HERE}.Joiner"
    for name, labels, count in (
        ("roomcast_consumer_websocket_accepted_total", {}, 1),
        ("roomcast_consumer_websocket_denied_total", {}, 0),
        ("roomcast_consumer_websocket_closed_total", {"code": "1013"}, 1),
    ):
        moved = after.value(name, consumer=joiner, **labels) - before.value(
            name, consumer=joiner, **labels
        )
        assert moved == count, name


async def test_handler_errors_keep_a_bounded_message_type_label(
    layer: InMemoryChannelLayer,
) -> None:
    kinds = MESSAGE_TYPE_LIMIT + 50
    async with scraper() as scrape:
        before = await scrape()
        for n in range(kinds):
            client = WebsocketCommunicator(Picky.as_asgi(), "/ws/")
            assert (await client.connect(WAIT))[0]
            await layer.send(Picky.channels.pop(), {"type": f"picky.kind{n}"})
            with pytest.raises(ValueError, match="No handler for message type"):
                await client.wait(WAIT)
        after = await scrape()
    name, picky = "roomcast_consumer_errors_total", f"{HERE}.Picky"
    assert after.value(name, consumer=picky) - before.value(name, consumer=picky) == kinds
    every_type = after.label_values(name, "message_type")
    assert len(every_type) <= MESSAGE_TYPE_LIMIT + 2  # the first 100, "other", "invalid"
    assert "other" in after.label_values(name, "message_type")
    assert after.value(name, consumer=picky, message_type="other") >= kinds - MESSAGE_TYPE_LIMIT


# A real worker process -------------------------------------------------------------------------

THUMBNAILS = "examples.thumbnails.app:application"
THUMBNAIL_CONSUMER = "examples.thumbnails.app.ThumbnailConsumer"


async def make(layer: Any, count: int, reply: str, **extra: Any) -> None:
    for n in range(count):
        message = {"type": "thumbnails.make", "image": f"p/{n}.jpg", "reply_channel": reply}
        await layer.send("thumbnails", {**message, **extra})


async def test_a_worker_process_serves_metrics_while_it_works(
    own_redis_server: RedisServer, redis_prefix: str
) -> None:
    env = {"ROOMCAST_LAYER_URL": f"{own_redis_server.url}?prefix={redis_prefix}"}
    args = ("--metrics-port", "0", THUMBNAILS, "thumbnails")
    with WorkerProcess(*args, env=env) as worker:
        await asyncio.to_thread(worker.wait_for, r"Serving metrics on http://127\.0\.0\.1:\d+/")
        url = re.search(r"Serving metrics on (\S+)", worker.stderr)
        assert url is not None
        await asyncio.to_thread(worker.wait_for, r"listening on 'thumbnails'")
        async with (
            client_layer(own_redis_server, redis_prefix) as layer,
            httpx.AsyncClient(timeout=WAIT) as http,
        ):

            async def scrape() -> Scrape:
                response = await http.get(url[1])
                assert response.status_code == 200
                parsed = Scrape.parse(response.text)
                check_rules(parsed)
                return parsed

            idle = await scrape()
            assert idle.value("roomcast_consumer_messages_total") == 0
            assert idle.value("roomcast_consumer_instances") == 0
            assert idle.value("roomcast_layer_delivered_total", backend="redis") == 0
            assert "process_cpu_seconds_total" in idle.names()

            reply = await layer.new_channel()
            await make(layer, 6, reply)
            for _ in range(6):
                await asyncio.wait_for(layer.receive(reply), WAIT)
            working = await scrape()
            one = {"consumer": THUMBNAIL_CONSUMER}
            assert working.value("roomcast_consumer_messages_total", **one) == 6
            assert working.value("roomcast_consumer_instances", **one) == 1
            assert working.value("roomcast_layer_delivered_total", backend="redis") == 6
            assert working.value("roomcast_layer_sent_total", backend="redis") == 6  # replies

            await layer.send("thumbnails", {"type": "thumbnails.make", "image": ""})  # raises
            await asyncio.to_thread(worker.wait_for, "a new instance takes the next message")
            failed = await scrape()
            errors = {**one, "message_type": "thumbnails.make"}
            assert failed.value("roomcast_consumer_errors_total", **errors) == 1
            assert failed.value("roomcast_consumer_instances", **one) == 0  # it ended
            await make(layer, 2, reply)
            for _ in range(2):
                await asyncio.wait_for(layer.receive(reply), WAIT)
            again = await scrape()
            assert again.value("roomcast_consumer_messages_total", **one) == 9
            assert again.value("roomcast_consumer_instances", **one) == 1

            assert await asyncio.to_thread(worker.terminate) == 0
            with pytest.raises(httpx.ConnectError):  # the port closed with the process
                await http.get(url[1])


def test_the_worker_metrics_port_when_taken_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = ["-m", "roomcast.consumers.worker", "--metrics-port", str(port), THUMBNAILS]
        result = subprocess.run(
            [sys.executable, *command, "thumbnails"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"roomcast: error: cannot serve metrics on 127.0.0.1:{port}: ")
    assert "Traceback" not in result.stderr
