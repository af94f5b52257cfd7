"""The chat example end to end: real gateway processes, real WebSocket clients.

On the in-memory layer one gateway serves the page and the rooms (the README's first command);
on the Redis layer two gateway processes share rooms through a real redis-server, as the
horizontally scaled deployment does.

Resuming (issue 13): rooms keep history, and a client that comes back with
``?since=<epoch>:<offset>`` gets what it missed, then the live room, with no gap and no
duplicate even while the room keeps talking during the replay; a position older than the
history, forged or from before a restart gets ``recovered: false`` and the current history;
a malformed one is closed with 1008.

A chat, not only a relay (issue 18): messages carry their sender's name and the server's time,
and say whether they are the receiver's own; a page that asks (``?presence=1``) gets who is in
the room, from every gateway; a first connection gets the room's last messages; an invalid
room or name is accepted and then closed with 4400 and a reason, with one line in the log.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.gateway.apps import GatewayProcess, free_port
from tests.redis_server import RedisServer

APP = "examples.chat.asgi:application"


def start_gateway(port: int, env: dict[str, str] | None = None) -> GatewayProcess:
    gateway = GatewayProcess(APP, "-p", str(port), env=env)
    gateway.wait_listening()
    return gateway


def join(
    port: int, room: str, since: str | None = None, **params: str
) -> websockets.asyncio.client.connect:
    """A client of ``room``; with ``since`` (a position, or "" for none yet) it resumes;
    ``params`` are more query parameters (``name``, ``client``, ``presence``)."""
    if since is not None:
        params["since"] = since
    query = "?" + "&".join(f"{key}={quote(value)}" for key, value in params.items())
    return websockets.connect(
        f"ws://127.0.0.1:{port}/ws/chat/{room}/{query if params else ''}",
        origin=f"http://127.0.0.1:{port}",
    )


async def say(client: ClientConnection, text: str) -> None:
    await client.send(json.dumps({"message": text}))


async def heard(client: ClientConnection) -> str:
    message: str = json.loads(await asyncio.wait_for(client.recv(), 5))["message"]
    return message


async def frame(client: ClientConnection) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await asyncio.wait_for(client.recv(), 10))
    return data


async def report(client: ClientConnection) -> dict[str, Any]:
    """The resume report, the first frame a resuming client gets."""
    data = await frame(client)
    assert data["type"] == "resume", data
    return data


async def hear_until(client: ClientConnection, last: str) -> list[dict[str, Any]]:
    """Every message frame up to and including the one saying ``last``."""
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1].get("message") != last:
        frames.append(await frame(client))
    return frames


def offsets(frames: list[dict[str, Any]]) -> list[int]:
    return [int(f["position"].rpartition(":")[2]) for f in frames]


@pytest.fixture
def memory_gateway() -> Iterator[int]:
    port = free_port()
    with start_gateway(port, env={"ROOMCAST_LAYER_URL": ""}):
        yield port


async def test_page_and_room_on_the_in_memory_layer(memory_gateway: int) -> None:
    port = memory_gateway
    async with httpx.AsyncClient() as http:
        page = await http.get(f"http://127.0.0.1:{port}/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "new WebSocket" in page.text
    async with join(port, "lobby") as alice, join(port, "lobby") as bob, join(port, "other") as eve:
        await say(alice, "hi bob")
        assert await heard(alice) == "hi bob"
        assert await heard(bob) == "hi bob"
        await say(bob, "hi alice")
        assert await heard(alice) == "hi alice"
        await say(eve, "elsewhere")
        assert await heard(eve) == "elsewhere"
        # Eve's room is not Alice's: the next thing Alice hears is Bob's, not Eve's.
        await say(bob, "still here")
        assert await heard(alice) == "still here"


async def test_a_bad_origin_is_refused_at_the_handshake(memory_gateway: int) -> None:
    port = memory_gateway
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/ws/chat/lobby/", origin="http://evil.example"
        ):
            pass
    assert refused.value.response.status_code == 403


async def closed_by_server(client: ClientConnection) -> tuple[int, str]:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(client.recv(), 5)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


@pytest.mark.parametrize(
    ("room", "params", "says"),
    [
        ("no%20spaces", {}, "invalid room name 'no spaces': use 1 to 50 letters"),
        ("a/b", {}, "invalid room name 'a/b'"),
        ("x" * 51, {}, "invalid room name"),
        ("lobby", {"name": "   "}, "invalid name: it is empty"),
        ("lobby", {"name": "n" * 41}, "invalid name: 41 characters, the limit is 40"),
        ("lobby", {"name": "bell\x07"}, "invalid name: it holds control characters"),
        ("lobby", {"client": "short"}, "invalid client id"),
    ],
)
async def test_an_invalid_room_or_name_is_closed_4400_with_a_reason_and_one_log_line(
    room: str, params: dict[str, str], says: str
) -> None:
    """Accepted, then closed: a browser sees the code and the reason (a refused handshake
    would show it nothing but 1006, and the page would retry forever)."""
    port = free_port()
    with start_gateway(port, env={"ROOMCAST_LAYER_URL": ""}) as gateway:
        async with join(port, room, **params) as client:
            code, reason = await closed_by_server(client)
        assert code == 4400
        assert reason.startswith(says), reason
        async with join(port, "lobby") as fine:  # the server is no worse for it
            await say(fine, "still fine")
            assert await heard(fine) == "still fine"
        logged = [line for line in gateway.stderr.splitlines() if "refused a chat" in line]
        assert len(logged) == 1, gateway.stderr
        assert says.split(":")[0] in logged[0]
        assert "closing with 4400" in logged[0]
        assert "Traceback" not in gateway.stderr


async def test_messages_carry_their_sender_time_and_whose_they_are(memory_gateway: int) -> None:
    port = memory_gateway
    tabs = {"client": "alice-browser-1"}
    async with (
        join(port, "named", name="Alice", **tabs) as alice,
        join(port, "named", name="Alice", **tabs) as alice_again,  # another tab, same browser
        join(port, "named", name="  Bob   the  Builder ") as bob,
    ):
        before = time.time() * 1000
        await say(alice, "hello")
        frames = [await frame(client) for client in (alice, alice_again, bob)]
        after = time.time() * 1000
        for received in frames:
            assert received["type"] == "message"
            assert (received["message"], received["name"]) == ("hello", "Alice")
            assert before - 1000 <= received["time"] <= after + 1000  # the server's clock, in ms
        assert [received["mine"] for received in frames] == [True, True, False]
        assert frames[0]["user"] == frames[2]["user"] != ""
        await say(bob, "hi")
        assert (await frame(bob))["name"] == "Bob the Builder"  # whitespace tidied
        assert (await frame(alice))["mine"] is False
        await heard(alice_again)


async def test_a_newcomer_gets_the_rooms_last_messages() -> None:
    port = free_port()
    with start_gateway(port, env={"ROOMCAST_LAYER_URL": "", "CHAT_RECENT": "5"}):
        async with join(port, "recent") as bob:
            for n in range(8):
                await say(bob, f"m{n}")
            assert [await heard(bob) for _ in range(8)][-1] == "m7"
            async with join(port, "recent", since="") as alice:
                first = await report(alice)
                assert (first["recovered"], first["replayed"]) == (True, 5)
                assert [await heard(alice) for _ in range(5)] == [f"m{n}" for n in range(3, 8)]
                await say(bob, "live")
                assert await heard(alice) == "live"


async def presence_frame(client: ClientConnection) -> dict[str, Any]:
    """The next presence frame (chat messages on the way are passed over)."""
    while True:
        data = await frame(client)
        if data["type"] != "message":
            assert data["type"].startswith("presence."), data
            return data


async def members_until(
    client: ClientConnection, members: dict[str, Any], done: Any
) -> dict[str, Any]:
    """Apply presence frames to ``members`` until ``done(members)``."""
    while not done(members):
        data = await presence_frame(client)
        if data["type"] == "presence.state":
            members = dict(data["members"])
        elif data["type"] == "presence.join":
            members.update(data["members"])
        else:
            for key in data["members"]:
                members.pop(key, None)
    return members


def names(members: dict[str, Any]) -> list[str]:
    return sorted(info["name"] for info in members.values())


async def test_presence_across_two_gateways(own_redis_server: RedisServer) -> None:
    env = {"ROOMCAST_LAYER_URL": f"{own_redis_server.url}?prefix=chat"}
    ports = free_port(), free_port()
    with start_gateway(ports[0], env), start_gateway(ports[1], env):
        async with join(ports[0], "who", name="Alice", presence="1") as alice:
            state = await presence_frame(alice)
            assert state["type"] == "presence.state"
            assert names(state["members"]) == ["Alice"]
            assert state["members"][state["you"]]["name"] == "Alice"
            async with join(ports[1], "who", name="Bob", presence="1") as bob:
                bobs = await members_until(bob, {}, lambda m: names(m) == ["Alice", "Bob"])
                alices = await members_until(
                    alice, state["members"], lambda m: names(m) == ["Alice", "Bob"]
                )
                assert set(alices) == set(bobs)  # the same keys, seen from either gateway
                async with join(ports[1], "who") as quiet:  # did not ask: no presence frames
                    await say(quiet, "hello")
                    assert (await frame(quiet))["message"] == "hello"
                    assert (await frame(bob))["type"] in ("message", "presence.join")
            await members_until(alice, alices, lambda m: names(m) == ["Alice"])


async def test_two_gateways_share_rooms_through_redis(own_redis_server: RedisServer) -> None:
    env = {"ROOMCAST_LAYER_URL": f"{own_redis_server.url}?prefix=chat"}
    ports = free_port(), free_port()
    with start_gateway(ports[0], env), start_gateway(ports[1], env):
        async with join(ports[0], "lobby") as alice, join(ports[1], "lobby") as bob:
            await say(alice, "from gateway one")
            assert await heard(alice) == "from gateway one"
            assert await heard(bob) == "from gateway one"
            for n in range(20):
                await say(bob, f"from gateway two #{n}")
            expected = [f"from gateway two #{n}" for n in range(20)]
            assert [await heard(alice) for _ in range(20)] == expected
            # Bob hears himself too (and reads it all, so his close handshake is prompt).
            assert [await heard(bob) for _ in range(20)] == expected


# Resuming (issue 13) ---------------------------------------------------------------------------


async def test_a_client_away_for_30_messages_resumes_with_all_then_live(
    memory_gateway: int,
) -> None:
    port = memory_gateway
    async with join(port, "resume") as bob:
        async with join(port, "resume", since="") as alice:
            first = await report(alice)
            assert (first["recovered"], first["replayed"]) == (True, 0)
            for n in range(3):
                await say(bob, f"m{n}")
            seen = await hear_until(alice, "m2")
        for n in range(3, 33):  # 30 messages while Alice is away
            await say(bob, f"m{n}")
        assert [await heard(bob) for _ in range(33)][-1] == "m32"  # all sent and kept

        async def keep_talking() -> None:  # the room goes on while Alice resumes
            for n in range(33, 63):
                await say(bob, f"m{n}")
                await asyncio.sleep(0.002)

        talking = asyncio.create_task(keep_talking())
        async with join(port, "resume", since=seen[-1]["position"]) as alice:
            resumed = await report(alice)
            assert resumed["recovered"] is True
            assert resumed["replayed"] >= 30
            frames = await hear_until(alice, "m62")
            await talking
        texts = [f["message"] for f in frames]
        assert texts == [f"m{n}" for n in range(3, 63)]  # no gap, no duplicate, in order
        assert offsets(frames) == list(range(offsets(seen)[-1] + 1, offsets(seen)[-1] + 61))


async def test_a_position_older_than_the_history_gets_the_current_history() -> None:
    port = free_port()
    with start_gateway(port, env={"ROOMCAST_LAYER_URL": "", "CHAT_HISTORY_SIZE": "20"}):
        async with join(port, "small", since="") as alice:
            old = (await report(alice))["position"]
        async with join(port, "small") as bob:
            for n in range(30):
                await say(bob, f"m{n}")
            assert [await heard(bob) for _ in range(30)][-1] == "m29"
            async with join(port, "small", since=old) as alice:
                resumed = await report(alice)
                assert (resumed["recovered"], resumed["replayed"]) == (False, 20)
                replayed = [await heard(alice) for _ in range(20)]
                assert replayed == [f"m{n}" for n in range(10, 30)]
                await say(bob, "live")
                assert await heard(alice) == "live"


@pytest.mark.parametrize(
    ("since", "says"),
    [("garbage", "'<epoch>:<offset>'"), ("e:-1", "decimal offset"), ("é:1", "epoch must be")],
)
async def test_a_malformed_position_is_closed_1008(
    memory_gateway: int, since: str, says: str
) -> None:
    async with join(memory_gateway, "lobby", since=since) as client:
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(client.recv(), 5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason.startswith("invalid position: ")
    assert says in closed.value.rcvd.reason


async def test_a_forged_position_gets_only_its_own_rooms_history(memory_gateway: int) -> None:
    port = memory_gateway
    async with join(port, "secret") as insider:
        await say(insider, "for insiders only")
        assert await heard(insider) == "for insiders only"
    async with join(port, "secret", since="") as probe:
        secret_epoch = (await report(probe))["position"].partition(":")[0]
    async with join(port, "public") as anyone:
        await say(anyone, "hello public")
        assert await heard(anyone) == "hello public"
    async with join(port, "public", since=f"{secret_epoch}:1") as forger:
        resumed = await report(forger)
        assert (resumed["recovered"], resumed["replayed"]) == (False, 1)
        assert await heard(forger) == "hello public"
        async with join(port, "public") as anyone:
            await say(anyone, "after")
            assert await heard(forger) == "after"


async def test_a_restart_on_the_in_memory_layer_is_told_not_recovered() -> None:
    """SIGTERM closes the rooms with 1012/1001; the new process has new epochs and only what
    was said since it started, which it replays with ``recovered: false``."""
    port = free_port()
    env = {"ROOMCAST_LAYER_URL": ""}
    with start_gateway(port, env) as gateway:
        async with join(port, "restart", since="") as alice:
            await report(alice)
            await say(alice, "before")
            position = (await frame(alice))["position"]
            gateway.signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(alice.recv(), 15)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code in (1001, 1012)
        assert gateway.wait(15) == 0
    with start_gateway(port, env):
        async with join(port, "restart") as bob:
            await say(bob, "after the restart")
            assert await heard(bob) == "after the restart"
            async with join(port, "restart", since=position) as alice:
                resumed = await report(alice)
                assert resumed["position"].partition(":")[0] != position.partition(":")[0]
                assert (resumed["recovered"], resumed["replayed"]) == (False, 1)
                assert await heard(alice) == "after the restart"


# Resuming on the Redis layer (issue 13): two gateway processes, one history in Redis ----------
#
# The example's rooms keep history on whatever layer ROOMCAST_LAYER_URL names.


def redis_env(server: RedisServer, **extra: str) -> dict[str, str]:
    return {
        "ROOMCAST_LAYER_URL": f"{server.url}?prefix=chat",
        "ROOMCAST_SETTINGS": "examples.chat.settings",
        **extra,
    }


@pytest.fixture
def redis_gateways(own_redis_server: RedisServer) -> Iterator[tuple[int, int]]:
    env = redis_env(own_redis_server)
    ports = free_port(), free_port()
    with start_gateway(ports[0], env), start_gateway(ports[1], env):
        yield ports


async def test_on_redis_a_client_away_for_30_messages_resumes_on_the_other_gateway(
    redis_gateways: tuple[int, int],
) -> None:
    """Alice leaves gateway A and comes back on gateway B while Bob (on A) keeps talking: the
    replay comes from Redis, the live messages cross between the processes, no gap, no
    duplicate."""
    a, b = redis_gateways
    async with join(a, "resume") as bob:
        async with join(a, "resume", since="") as alice:
            first = await report(alice)
            assert (first["recovered"], first["replayed"]) == (True, 0)
            for n in range(3):
                await say(bob, f"m{n}")
            seen = await hear_until(alice, "m2")
        for n in range(3, 33):  # 30 messages while Alice is away
            await say(bob, f"m{n}")
        assert [await heard(bob) for _ in range(33)][-1] == "m32"

        async def keep_talking() -> None:
            for n in range(33, 63):
                await say(bob, f"m{n}")
                await asyncio.sleep(0.002)

        talking = asyncio.create_task(keep_talking())
        async with join(b, "resume", since=seen[-1]["position"]) as alice:
            resumed = await report(alice)
            assert resumed["recovered"] is True
            assert resumed["replayed"] >= 30
            frames = await hear_until(alice, "m62")
            await talking
        texts = [f["message"] for f in frames]
        assert texts == [f"m{n}" for n in range(3, 63)]  # no gap, no duplicate, in order
        assert offsets(frames) == list(range(offsets(seen)[-1] + 1, offsets(seen)[-1] + 61))


async def test_on_redis_a_position_older_than_the_history_gets_the_current_history(
    own_redis_server: RedisServer,
) -> None:
    env = redis_env(own_redis_server, CHAT_HISTORY_SIZE="20")
    a, b = free_port(), free_port()
    with start_gateway(a, env), start_gateway(b, env):
        async with join(a, "small", since="") as alice:
            old = (await report(alice))["position"]
        async with join(b, "small") as bob:
            for n in range(30):
                await say(bob, f"m{n}")
            assert [await heard(bob) for _ in range(30)][-1] == "m29"
            async with join(a, "small", since=old) as alice:
                resumed = await report(alice)
                assert (resumed["recovered"], resumed["replayed"]) == (False, 20)
                replayed = [await heard(alice) for _ in range(20)]
                assert replayed == [f"m{n}" for n in range(10, 30)]
                await say(bob, "live")
                assert await heard(alice) == "live"


async def test_on_redis_a_gateway_restart_loses_nothing_for_a_resuming_client(
    own_redis_server: RedisServer,
) -> None:
    """SIGTERM closes Alice's socket (1012/1001); Bob, on the other gateway, keeps talking; a
    new process on the same port resumes Alice from Redis: every message, once, recovered."""
    env = redis_env(own_redis_server)
    a, b = free_port(), free_port()
    with start_gateway(b, env), start_gateway(a, env) as gateway:
        async with join(b, "restart") as bob:
            async with join(a, "restart", since="") as alice:
                await report(alice)
                await say(bob, "before")
                position = (await frame(alice))["position"]
                gateway.signal(signal.SIGTERM)
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(alice.recv(), 15)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code in (1001, 1012)
            assert gateway.wait(15) == 0
            for n in range(10):  # said while gateway A is down
                await say(bob, f"while down #{n}")
            with start_gateway(a, env):
                async with join(a, "restart", since=position) as alice:
                    resumed = await report(alice)
                    assert resumed["position"].partition(":")[0] == position.partition(":")[0]
                    assert (resumed["recovered"], resumed["replayed"]) == (True, 10)
                    frames = [await frame(alice) for _ in range(10)]
                    assert [f["message"] for f in frames] == [f"while down #{n}" for n in range(10)]
                    await say(bob, "after")
                    assert await heard(alice) == "after"


async def test_on_redis_a_redis_restart_is_told_not_recovered(
    own_redis_server: RedisServer,
) -> None:
    """Redis restarted without persistence: the history is gone, a resume says so and gets
    only what was said since, once."""
    env = redis_env(own_redis_server)
    a, b = free_port(), free_port()
    with start_gateway(a, env), start_gateway(b, env):
        async with join(a, "lost", since="") as alice:
            await report(alice)
            async with join(b, "lost") as bob:
                await say(bob, "before")
                position = (await frame(alice))["position"]
        await asyncio.to_thread(own_redis_server.restart)
        async with join(b, "lost") as bob:
            await say(bob, "after the restart")
            assert await heard(bob) == "after the restart"
            async with join(a, "lost", since=position) as alice:
                resumed = await report(alice)
                assert resumed["position"].partition(":")[0] != position.partition(":")[0]
                assert (resumed["recovered"], resumed["replayed"]) == (False, 1)
                assert await heard(alice) == "after the restart"
                await say(bob, "live")
                assert await heard(alice) == "live"


@pytest.mark.parametrize(
    ("since", "says"),
    [("garbage", "'<epoch>:<offset>'"), ("e:01", "decimal offset"), ("x" * 70 + ":1", "epoch")],
)
async def test_on_redis_a_malformed_position_is_closed_1008(
    redis_gateways: tuple[int, int], since: str, says: str
) -> None:
    async with join(redis_gateways[0], "lobby", since=since) as client:
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(client.recv(), 5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason.startswith("invalid position: ")
    assert says in closed.value.rcvd.reason


async def test_on_redis_a_forged_position_gets_only_its_own_rooms_history(
    redis_gateways: tuple[int, int],
) -> None:
    """Another room's epoch, or an offset ahead of this room's: recovered false, and only this
    room's own messages, from either gateway."""
    a, b = redis_gateways
    async with join(a, "secret") as insider:
        await say(insider, "for insiders only")
        assert await heard(insider) == "for insiders only"
    async with join(b, "secret", since="") as probe:
        secret_epoch = (await report(probe))["position"].partition(":")[0]
    async with join(a, "public") as anyone:
        await say(anyone, "hello public")
        assert await heard(anyone) == "hello public"
    async with join(b, "public", since="") as probe:
        public = (await report(probe))["position"]
    public_epoch, _, public_offset = public.partition(":")
    for forged in (f"{secret_epoch}:1", f"{public_epoch}:{int(public_offset) + 5}"):
        async with join(b, "public", since=forged) as forger:
            resumed = await report(forger)
            assert (resumed["recovered"], resumed["replayed"]) == (False, 1)
            assert await heard(forger) == "hello public"
