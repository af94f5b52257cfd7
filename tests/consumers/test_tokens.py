"""Tokens that expire (consumers/tokens.py): told, refreshed, refused; on a clock the test turns.

``ManualClock`` is the middleware's ``clock`` and ``sleep``: nothing here waits for real time
to pass, the test moves the clock. The consumers run through the WebsocketCommunicator, and
once through the in-process gateway with a real ``websockets`` client, so the 4001 close code is
seen on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from roomcast.consumers import (
    AsyncHttpConsumer,
    AsyncJsonWebsocketConsumer,
    JsonWebsocketConsumer,
)
from roomcast.consumers.testing import HttpCommunicator, WebsocketCommunicator
from roomcast.consumers.tokens import (
    REFRESH_TOKEN_KEY,
    TOKEN_EXPIRED_CODE,
    AnonymousUser,
    TokenAuthMiddleware,
    TokenExpiry,
    get_token,
    split_result,
)
from roomcast.layers import InMemoryChannelLayer
from roomcast.layers.settings import channel_layers
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.gateway.ws_support import gateway_server, wait_for_condition

WAIT = 5.0
START = 1_800_000_000.0  # the manual clock's first reading, a Unix time


class ManualClock:
    """``time()`` reads ``now``; ``sleep(delay)`` returns once ``advance`` has passed it."""

    def __init__(self, now: float = START) -> None:
        self.now = now
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        entry = (self.now + delay, asyncio.get_running_loop().create_future())
        self._sleepers.append(entry)
        try:
            await entry[1]
        finally:
            self._sleepers.remove(entry)

    def deadlines(self) -> list[float]:
        return sorted(deadline for deadline, future in self._sleepers if not future.done())

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, future in self._sleepers:
            if deadline <= self.now and not future.done():
                future.set_result(None)


class User:
    def __init__(self, pk: int, name: str) -> None:
        self.pk = pk
        self.name = name
        self.is_authenticated = True


class Tokens:
    """A token service: token -> (user pk, expires_at); ``authenticate`` reads it like an app."""

    def __init__(self) -> None:
        self.issued: dict[str, tuple[int, float | None]] = {}
        self.seen: list[dict[str, Any]] = []

    def issue(self, token: str, pk: int, expires_at: float | None) -> str:
        self.issued[token] = (pk, expires_at)
        return token

    async def authenticate(self, scope: dict[str, Any]) -> Any:
        self.seen.append(dict(scope))
        token = get_token(scope)
        if token not in self.issued:
            return None
        pk, expires_at = self.issued[token]
        return User(pk, f"user{pk}"), expires_at  # a fresh object each time, as from a DB


class Room(AsyncJsonWebsocketConsumer):
    """Speaks the refresh shape tokens.py suggests; echoes anything else with the user's name."""

    expired_events: ClassVar[list[dict[str, Any]]] = []

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "token.refresh":
            if await self.refresh_token(str(content.get("token"))):
                expiry = self.scope["token_expiry"]
                await self.send_json({"type": "token.refreshed", "expires_at": expiry.expires_at})
            else:
                await self.send_json({"type": "token.refused"})
            return
        await self.send_json({"echo": content, "user": getattr(self.scope["user"], "name", None)})


class Patient(Room):
    """Tells the client its token expired and stays open for a refresh."""

    async def token_expired(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "token.expired", "expires_at": message["expires_at"]})


class SyncRoom(JsonWebsocketConsumer):
    def receive_json(self, content: Any, **kwargs: Any) -> None:
        accepted = self.refresh_token(content["token"])
        self.send_json({"refreshed": accepted, "expires_at": self.scope["token_expiry"].expires_at})


class Page(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        user = self.scope["user"]
        await self.send_response(200, str(getattr(user, "name", user)).encode())


@pytest.fixture(autouse=True)
def layer() -> Iterator[InMemoryChannelLayer]:
    layer = InMemoryChannelLayer()
    channel_layers.set("default", layer)
    yield layer
    channel_layers.reset()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def tokens() -> Tokens:
    return Tokens()


def app_for(consumer: type[Any], tokens: Tokens, clock: ManualClock, **options: Any) -> Any:
    return TokenAuthMiddleware(
        consumer.as_asgi(),
        authenticate=tokens.authenticate,
        clock=clock.time,
        sleep=clock.sleep,
        **options,
    )


async def open_room(
    consumer: type[Any], tokens: Tokens, clock: ManualClock, token: str
) -> WebsocketCommunicator:
    client = WebsocketCommunicator(app_for(consumer, tokens, clock), f"/ws/?token={token}")
    connected, _ = await client.connect(WAIT)
    assert connected
    return client


async def armed(clock: ManualClock, deadline: float) -> None:
    """Wait until the expiry timer sleeps toward ``deadline`` (so it has not fired)."""
    await wait_for_condition(lambda: deadline in clock.deadlines(), WAIT)


# Expiry ----------------------------------------------------------------------------------------


async def test_the_connection_closes_with_4001_when_the_token_expires(
    tokens: Tokens, clock: ManualClock
) -> None:
    tokens.issue("t1", 1, START + 60)
    client = await open_room(Room, tokens, clock, "t1")
    await armed(clock, START + 30)  # the timer re-reads the clock at least every 30 s
    clock.advance(30)
    await armed(clock, START + 60)
    clock.advance(29.5)
    await armed(clock, START + 60)
    await client.send_json_to("still here")
    assert await client.receive_json_from(WAIT) == {"echo": "still here", "user": "user1"}
    clock.advance(0.5)
    closing = await client.receive_output(WAIT)
    assert closing == {"type": "websocket.close", "code": 4001, "reason": "token expired"}
    assert TOKEN_EXPIRED_CODE == 4001
    await client.disconnect(4001)


async def test_a_refresh_extends_the_connection(tokens: Tokens, clock: ManualClock) -> None:
    tokens.issue("t1", 1, START + 20)
    tokens.issue("t2", 1, START + 80)
    client = await open_room(Room, tokens, clock, "t1")
    await armed(clock, START + 20)
    clock.advance(15)
    await client.send_json_to({"type": "token.refresh", "token": "t2"})
    assert await client.receive_json_from(WAIT) == {
        "type": "token.refreshed",
        "expires_at": START + 80,
    }
    assert tokens.seen[-1][REFRESH_TOKEN_KEY] == "t2"
    await armed(clock, START + 45)  # re-armed toward the new expiry (30 s steps)
    clock.advance(10)  # past the old expiry
    await armed(clock, START + 45)
    clock.advance(30)
    await armed(clock, START + 80)
    await client.send_json_to("hello")
    assert (await client.receive_json_from(WAIT))["echo"] == "hello"
    clock.advance(35)
    assert (await client.receive_output(WAIT))["code"] == 4001
    await client.disconnect(4001)


@pytest.mark.parametrize(
    ("issued", "why"),
    [
        ({}, "an unknown token"),
        ({"t2": (2, START + 600)}, "another user's token"),
        ({"t2": (1, START - 1)}, "an expired token"),
    ],
)
async def test_a_refused_refresh_leaves_the_old_expiry(
    tokens: Tokens, clock: ManualClock, issued: dict[str, tuple[int, float]], why: str
) -> None:
    tokens.issue("t1", 1, START + 20)
    tokens.issued.update(issued)
    client = await open_room(Room, tokens, clock, "t1")
    await client.send_json_to({"type": "token.refresh", "token": "t2"})
    assert await client.receive_json_from(WAIT) == {"type": "token.refused"}, why
    await armed(clock, START + 20)
    clock.advance(20)
    assert (await client.receive_output(WAIT))["code"] == 4001
    await client.disconnect(4001)


async def test_a_consumer_may_answer_expiry_itself_and_be_told_again_after_a_refresh(
    tokens: Tokens, clock: ManualClock
) -> None:
    tokens.issue("t1", 1, START + 10)
    tokens.issue("t2", 1, START + 40)
    client = await open_room(Patient, tokens, clock, "t1")
    await armed(clock, START + 10)
    clock.advance(12)
    assert await client.receive_json_from(WAIT) == {
        "type": "token.expired",
        "expires_at": START + 10,
    }
    clock.advance(100)  # told once per expiry: nothing more until a refresh
    await client.send_json_to({"type": "token.refresh", "token": "t2"})
    # t2 expires at START + 40, but the clock reads START + 112: refused, still open
    assert await client.receive_json_from(WAIT) == {"type": "token.refused"}
    tokens.issue("t3", 1, clock.now + 5)
    await client.send_json_to({"type": "token.refresh", "token": "t3"})
    assert (await client.receive_json_from(WAIT))["type"] == "token.refreshed"
    await armed(clock, clock.now + 5)
    clock.advance(5)
    assert (await client.receive_json_from(WAIT))["expires_at"] == START + 117
    await client.disconnect(1000)


async def test_sync_consumers_are_told_and_refresh_too(tokens: Tokens, clock: ManualClock) -> None:
    tokens.issue("t1", 1, START + 10)
    tokens.issue("t2", 1, START + 25)
    client = await open_room(SyncRoom, tokens, clock, "t1")
    await client.send_json_to({"token": "t2"})
    assert await client.receive_json_from(WAIT) == {"refreshed": True, "expires_at": START + 25}
    await client.send_json_to({"token": "nope"})
    assert await client.receive_json_from(WAIT) == {"refreshed": False, "expires_at": START + 25}
    await armed(clock, START + 25)
    clock.advance(25)
    closing = await client.receive_output(WAIT)
    assert (closing["code"], closing["reason"]) == (4001, "token expired")
    await client.disconnect(4001)


# At connection time ------------------------------------------------------------------------


async def test_a_token_expired_at_connect_is_refused_for_websocket_and_http(
    tokens: Tokens, clock: ManualClock
) -> None:
    tokens.issue("old", 1, START)  # expires the moment we connect
    client = WebsocketCommunicator(app_for(Room, tokens, clock), "/ws/?token=old")
    assert await client.connect(WAIT) == (True, None)  # accepted only to say why it closes
    assert await client.receive_output(WAIT) == {
        "type": "websocket.close",
        "code": 4001,
        "reason": "token expired",
    }
    await client.send_input({"type": "websocket.disconnect", "code": 4001})
    await client.wait(WAIT)

    for options in ({}, {"required": True}):
        http = HttpCommunicator(app_for(Page, tokens, clock, **options), "GET", "/?token=old")
        response = await http.get_response(WAIT)
        assert response["status"] == 401
        headers = dict(response["headers"])
        assert headers[b"www-authenticate"].startswith(b'Bearer error="invalid_token"')
        assert response["body"] == b"401 Unauthorized: the token expired\n"


async def test_http_with_a_live_token_and_plain_users_are_unaffected(clock: ManualClock) -> None:
    users = {"plain": User(7, "plain"), "later": (User(8, "later"), START + 5)}

    async def authenticate(scope: dict[str, Any]) -> Any:
        return users.get(get_token(scope) or "")

    def app(consumer: type[Any]) -> Any:
        return TokenAuthMiddleware(
            consumer.as_asgi(), authenticate=authenticate, clock=clock.time, sleep=clock.sleep
        )

    page = await HttpCommunicator(app(Page), "GET", "/?token=later").get_response(WAIT)
    assert (page["status"], page["body"]) == (200, b"later")
    anonymous = await HttpCommunicator(app(Page), "GET", "/").get_response(WAIT)
    assert (anonymous["status"], anonymous["body"]) == (200, b"AnonymousUser")

    client = WebsocketCommunicator(app(Room), "/ws/?token=plain")
    assert (await client.connect(WAIT))[0]
    clock.advance(10**9)
    assert clock.deadlines() == []  # no timer for a token without expiry
    await client.send_json_to("hi")
    assert await client.receive_json_from(WAIT) == {"echo": "hi", "user": "plain"}
    await client.send_json_to({"type": "token.refresh", "token": "later"})
    with pytest.raises(RuntimeError, match="no expiring token"):
        await client.receive_output(WAIT)


# What authenticate may return ----------------------------------------------------------------


def test_what_authenticate_returns_is_read_with_clear_errors() -> None:
    user = User(1, "a")
    assert split_result(user) == (user, None)
    assert split_result(None) == (None, None)
    assert split_result((user, 5)) == (user, 5.0)
    assert split_result((user, None)) == (user, None)
    assert split_result((None, "ignored")) == (None, None)
    moment = datetime(2030, 1, 1, tzinfo=UTC)
    assert split_result((user, moment)) == (user, moment.timestamp())
    with pytest.raises(ValueError, match="naive datetime"):
        split_result((user, datetime(2030, 1, 1)))  # naive: refused
    for bad in ("soon", True, float("nan"), timedelta(seconds=5)):
        with pytest.raises(TypeError, match="expected a Unix time"):
            split_result((user, bad))
    with pytest.raises(TypeError, match="tuple of 3 items"):
        split_result((user, 1, 2))


async def test_a_datetime_expiry_works_like_a_timestamp(tokens: Tokens, clock: ManualClock) -> None:
    async def authenticate(scope: dict[str, Any]) -> Any:
        return User(1, "dt"), datetime.fromtimestamp(START + 10, UTC)

    app = TokenAuthMiddleware(
        Room.as_asgi(), authenticate=authenticate, clock=clock.time, sleep=clock.sleep
    )
    client = WebsocketCommunicator(app, "/ws/")
    assert (await client.connect(WAIT))[0]
    await armed(clock, START + 10)
    clock.advance(10)
    assert (await client.receive_output(WAIT))["code"] == 4001
    await client.disconnect(4001)


def test_the_expiry_reports_what_is_left(clock: ManualClock) -> None:
    middleware = TokenAuthMiddleware(lambda *a: None, clock=clock.time)  # type: ignore[arg-type, return-value]
    expiry = TokenExpiry(middleware, {"type": "websocket"}, AnonymousUser(), START + 3)
    assert (expiry.remaining, expiry.expired) == (3.0, False)
    clock.advance(5)
    assert (expiry.remaining, expiry.expired) == (0.0, True)
    assert TokenExpiry(middleware, {}, None, None).remaining is None


# On the wire ----------------------------------------------------------------------------------


async def test_a_real_client_sees_4001_and_can_refresh_first(
    tokens: Tokens, clock: ManualClock
) -> None:
    tokens.issue("t1", 1, START + 10)
    tokens.issue("t2", 1, START + 20)
    async with (
        gateway_server(app_for(Room, tokens, clock)) as served,
        ws_connect(served.url("/ws/?token=t1")) as ws,
    ):
        await ws.send('{"type": "token.refresh", "token": "t2"}')
        assert '"token.refreshed"' in await asyncio.wait_for(ws.recv(), WAIT)
        await armed(clock, START + 20)
        clock.advance(20)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), WAIT)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "token expired")
