"""The HTTP consumer (consumers/http.py): responses, long-poll and streams driven by the layer.

Communicator tests on the in-memory layer, and the same consumers through the gateway on a real
socket with httpx (streaming).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from roomcast.consumers import AsyncHttpConsumer
from roomcast.consumers.testing import ApplicationCommunicator, HttpCommunicator
from roomcast.layers import InMemoryChannelLayer
from roomcast.layers.settings import channel_layers

from tests.gateway.ws_support import gateway_server, wait_for_condition

WAIT = 5.0


class SpyLayer(InMemoryChannelLayer):
    """The in-memory layer, recording group membership."""

    def __init__(self) -> None:
        super().__init__()
        self.joined: dict[str, set[str]] = {}

    async def group_add(self, group: str, channel: str) -> None:
        self.joined.setdefault(group, set()).add(channel)
        await super().group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        self.joined.get(group, set()).discard(channel)
        await super().group_discard(group, channel)

    def members(self, group: str) -> set[str]:
        return set(self.joined.get(group, set()))


@pytest.fixture
def layer() -> Iterator[SpyLayer]:
    layer = SpyLayer()
    channel_layers.set("default", layer)
    yield layer
    channel_layers.reset()


def http_scope(method: str = "GET", path: str = "/") -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [],
    }


# Consumers under test -----------------------------------------------------------------------


class Hello(AsyncHttpConsumer):
    """A plain request/response endpoint."""

    events: list[str] = []

    async def handle(self, body: bytes) -> None:
        if body == b"boom":
            raise RuntimeError("boom")
        text = f"{self.scope['method']} {self.scope['path']} {body.decode()}".encode()
        await self.send_response(
            201, text, headers={"Content-Type": "text/plain", b"x-extra": "yes"}
        )

    async def disconnect(self) -> None:
        self.events.append("disconnect")


class LongPoll(AsyncHttpConsumer):
    """Sends nothing in handle(); the first ``news.item`` of its group is the response."""

    groups = ["news"]
    events: list[str] = []

    async def handle(self, body: bytes) -> None:
        self.events.append("handled")

    async def news_item(self, event: dict[str, Any]) -> None:
        await self.send_response(
            200, event["text"].encode(), headers=[(b"content-type", b"text/plain")]
        )

    async def disconnect(self) -> None:
        self.events.append("disconnect")


class Stream(AsyncHttpConsumer):
    """Opens a streamed response in handle(); each ``tick`` adds a part, the last ends it."""

    groups = ["ticks"]

    async def handle(self, body: bytes) -> None:
        await self.send_headers(headers=[("content-type", "text/plain")])
        await self.send_body(b"open\n", more_body=True)

    async def tick(self, event: dict[str, Any]) -> None:
        await self.send_body(f"{event['text']}\n".encode(), more_body=not event.get("last"))


class Direct(AsyncHttpConsumer):
    """A long-poll answered through its own channel: publishes its channel name first."""

    waiting: list[str] = []

    async def handle(self, body: bytes) -> None:
        self.waiting.append(self.channel_name)

    async def job_done(self, event: dict[str, Any]) -> None:
        await self.send_response(200, f"job {event['id']} done".encode())


# Plain responses ----------------------------------------------------------------------------


async def test_response_through_the_communicator(layer: SpyLayer) -> None:
    events: list[str] = []
    communicator = HttpCommunicator(Hello.as_asgi(events=events), "post", "/hi?x=1", b"there")
    response = await communicator.get_response()
    assert response["status"] == 201
    assert response["body"] == b"POST /hi there"
    assert response["headers"] == [(b"Content-Type", b"text/plain"), (b"x-extra", b"yes")]
    await communicator.wait()
    assert events == ["disconnect"]


async def test_body_in_several_parts(layer: SpyLayer) -> None:
    communicator = ApplicationCommunicator(Hello.as_asgi(events=[]), http_scope("PUT", "/p"))
    await communicator.send_input({"type": "http.request", "body": b"one ", "more_body": True})
    await communicator.send_input({"type": "http.request", "body": b"two", "more_body": False})
    assert (await communicator.receive_output())["status"] == 201
    assert (await communicator.receive_output())["body"] == b"PUT /p one two"
    await communicator.wait()


class Misuse(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        if body == b"body first":
            await self.send_body(b"x")
        elif body == b"not bytes":
            await self.send_headers()
            await self.send_body("text")  # type: ignore[arg-type]
        elif body == b"headers twice":
            await self.send_headers()
            await self.send_headers()
        elif body == b"after the end":
            await self.send_headers()
            await self.send_body(b"done", more_body=False)
            await self.send_body(b"more")


@pytest.mark.parametrize(
    ("body", "error", "match"),
    [
        (b"body first", RuntimeError, "send_headers\\(\\) must come before"),
        (b"not bytes", TypeError, "must be bytes, not str"),
        (b"headers twice", RuntimeError, "already started"),
        (b"after the end", RuntimeError, "already complete"),
    ],
)
async def test_misuse_is_refused_at_once(
    layer: SpyLayer, body: bytes, error: type[Exception], match: str
) -> None:
    communicator = HttpCommunicator(Misuse.as_asgi(), "POST", "/", body)

    async def run() -> None:
        await communicator.get_response()
        await communicator.wait()  # "after the end": the response went out whole first

    with pytest.raises(error, match=match):
        await run()


async def test_handle_must_be_provided(layer: SpyLayer) -> None:
    communicator = HttpCommunicator(AsyncHttpConsumer.as_asgi(), "GET", "/")
    with pytest.raises(NotImplementedError, match="handle"):
        await communicator.get_response()


async def test_a_raising_handler_is_logged_and_disconnect_runs(
    layer: SpyLayer, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[str] = []
    communicator = HttpCommunicator(Hello.as_asgi(events=events), "POST", "/", b"boom")
    with pytest.raises(RuntimeError, match="boom"):
        await communicator.get_response()
    assert events == ["disconnect"]
    assert "test_http_consumer.Hello raised RuntimeError: boom" in caplog.text


# Long-poll and streams ----------------------------------------------------------------------


async def test_long_poll_answered_by_a_group_message(layer: SpyLayer) -> None:
    events: list[str] = []
    communicator = HttpCommunicator(LongPoll.as_asgi(events=events), "GET", "/poll")
    await communicator.send_input({"type": "http.request", "body": b""})
    assert await communicator.receive_nothing()
    assert events == ["handled"]  # handle() returned, the consumer lives on
    assert len(layer.members("news")) == 1
    await layer.group_send("news", {"type": "news.item", "text": "extra!"})
    response = await communicator.get_response()
    assert (response["status"], response["body"]) == (200, b"extra!")
    await communicator.wait()
    assert events == ["handled", "disconnect"]
    assert layer.members("news") == set()


async def test_long_poll_answered_through_its_channel(layer: SpyLayer) -> None:
    waiting: list[str] = []
    communicator = HttpCommunicator(Direct.as_asgi(waiting=waiting), "GET", "/job")
    await communicator.send_input({"type": "http.request", "body": b""})
    assert await communicator.receive_nothing()
    await layer.send(waiting[0], {"type": "job.done", "id": 7})
    assert (await communicator.get_response())["body"] == b"job 7 done"
    await communicator.wait()


async def test_stream_driven_by_group_messages(layer: SpyLayer) -> None:
    communicator = HttpCommunicator(Stream.as_asgi(), "GET", "/ticks")
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output()
    assert (start["type"], start["status"]) == ("http.response.start", 200)
    assert await communicator.receive_output() == {
        "type": "http.response.body",
        "body": b"open\n",
        "more_body": True,
    }
    for n in range(3):
        await layer.group_send("ticks", {"type": "tick", "text": f"t{n}"})
        part = await communicator.receive_output()
        assert (part["body"], part["more_body"]) == (f"t{n}\n".encode(), True)
    await layer.group_send("ticks", {"type": "tick", "text": "end", "last": True})
    assert (await communicator.receive_output())["more_body"] is False
    await communicator.wait()
    assert layer.members("ticks") == set()


async def test_client_going_away_ends_an_open_response(layer: SpyLayer) -> None:
    events: list[str] = []
    communicator = HttpCommunicator(LongPoll.as_asgi(events=events), "GET", "/poll")
    await communicator.send_input({"type": "http.request", "body": b""})
    assert await communicator.receive_nothing()
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait()
    assert events == ["handled", "disconnect"]
    assert layer.members("news") == set()


# Through the gateway -------------------------------------------------------------------------


def client(port: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=WAIT)


async def test_response_through_the_gateway(layer: SpyLayer) -> None:
    async with gateway_server(Hello.as_asgi(events=[])) as served, client(served.port) as http:
        response = await http.post("/hello", content=b"world")
        assert response.status_code == 201
        assert response.text == "POST /hello world"
        assert response.headers["content-type"] == "text/plain"


async def test_long_poll_through_the_gateway(layer: SpyLayer) -> None:
    events: list[str] = []
    app = LongPoll.as_asgi(events=events)
    async with gateway_server(app) as served, client(served.port) as http:
        request = asyncio.create_task(http.get("/poll"))
        await wait_for_condition(lambda: events == ["handled"])
        assert not request.done()
        await layer.group_send("news", {"type": "news.item", "text": "it happened"})
        response = await asyncio.wait_for(request, WAIT)
        assert (response.status_code, response.text) == (200, "it happened")
        await wait_for_condition(lambda: events == ["handled", "disconnect"])
        assert layer.members("news") == set()


async def test_stream_through_the_gateway(layer: SpyLayer) -> None:
    async with (
        gateway_server(Stream.as_asgi()) as served,
        client(served.port) as http,
        http.stream("GET", "/ticks") as response,
    ):
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        parts = response.aiter_bytes()
        received = b""

        async def read_until(text: bytes) -> None:
            nonlocal received
            while not received.endswith(text):
                received += await asyncio.wait_for(anext(parts), WAIT)

        await read_until(b"open\n")
        for n in range(3):
            await layer.group_send("ticks", {"type": "tick", "text": f"t{n}"})
            await read_until(f"t{n}\n".encode())
        await layer.group_send("ticks", {"type": "tick", "text": "end", "last": True})
        await read_until(b"end\n")
        with contextlib.suppress(StopAsyncIteration):
            received += await asyncio.wait_for(anext(parts), WAIT)  # the end of the body
        assert received == b"open\nt0\nt1\nt2\nend\n"
    await wait_for_condition(lambda: layer.members("ticks") == set())


async def test_client_leaving_a_long_poll_through_the_gateway(layer: SpyLayer) -> None:
    events: list[str] = []
    async with gateway_server(LongPoll.as_asgi(events=events)) as served:
        async with client(served.port) as http:
            request = asyncio.create_task(http.get("/poll"))
            await wait_for_condition(lambda: events == ["handled"])
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
        await wait_for_condition(lambda: events == ["handled", "disconnect"])
        assert layer.members("news") == set()


async def test_a_raising_handler_through_the_gateway_is_500(
    layer: SpyLayer, caplog: pytest.LogCaptureFixture
) -> None:
    async with gateway_server(Hello.as_asgi(events=[])) as served, client(served.port) as http:
        with caplog.at_level(logging.ERROR):
            response = await http.post("/", content=b"boom")
        assert response.status_code == 500
        assert "boom" not in response.text
        assert "Hello raised RuntimeError: boom" in caplog.text
        assert (await http.post("/", content=b"again")).status_code == 201  # the server lives on
