"""The Django chat example end to end: a real Django project served by real gateway processes.

``examples/django_chat`` is migrated into a temporary SQLite database and given a user with
``manage.py createsuperuser`` (as its README says), then served by ``python -m roomcast.gateway
mysite.asgi:application``. A client logs in over HTTP (CSRF cookie and token, then the
credentials) and opens the room's WebSocket with the session cookie: the messages it sends are
signed with its username, which proves the Django session reached ``scope["user"]`` through
``AuthMiddlewareStack``; a client without a session is ``anonymous``.

Django is configured only in the subprocesses: other tests rely on it being unconfigured in
the pytest process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin

from tests.gateway.apps import ROOT, GatewayProcess, free_port
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)

PROJECT = ROOT / "examples" / "django_chat"
APP = "mysite.asgi:application"
USERNAME = "alice"
PASSWORD = "correct-horse-battery-staple"


def project_env(db_path: Path, layer_url: str = "") -> dict[str, str]:
    """The environment of the example's processes: the project on the path, a deployment's
    settings (DEBUG off, a secret key, explicit hosts), the database in ``db_path``."""
    python_path = os.pathsep.join(p for p in (str(PROJECT), os.environ.get("PYTHONPATH")) if p)
    return {
        "PYTHONPATH": python_path,
        "DJANGO_SETTINGS_MODULE": "mysite.settings",
        "DJANGO_DB_PATH": str(db_path),
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "test-only-secret-key-for-the-django-chat-example",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "ROOMCAST_LAYER_URL": layer_url,
        "ROOMCAST_SETTINGS": "",
    }


def manage(env: dict[str, str], *args: str) -> None:
    """``python examples/django_chat/manage.py ARGS`` from the repository root."""
    done = subprocess.run(
        [sys.executable, str(PROJECT / "manage.py"), *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database with one user, made with the commands of the example's README."""
    path = tmp_path_factory.mktemp("django_chat") / "db.sqlite3"
    env = project_env(path)
    manage(env, "migrate", "--noinput")
    manage(
        {**env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
        "createsuperuser",
        "--noinput",
        "--username",
        USERNAME,
        "--email",
        f"{USERNAME}@example.com",
    )
    return path


def start_gateway(port: int, env: dict[str, str]) -> GatewayProcess:
    gateway = GatewayProcess(APP, "-p", str(port), env=env)
    gateway.wait_listening()
    return gateway


@pytest.fixture(scope="module")
def base_url(db_path: Path) -> Iterator[str]:
    """One gateway serving the example on the in-memory layer."""
    port = free_port()
    with start_gateway(port, project_env(db_path)):
        yield f"http://127.0.0.1:{port}"


async def log_in(http: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    """What a browser does: the login form (CSRF cookie and token), then the credentials."""
    form = await http.get("/accounts/login/")
    assert form.status_code == 200
    assert "csrftoken" in http.cookies
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert found, form.text
    origin = str(http.base_url).rstrip("/")
    return await http.post(
        "/accounts/login/",
        data={
            "csrfmiddlewaretoken": found[1],
            "username": username,
            "password": password,
            "next": "/chat/lobby/",
        },
        headers={"Origin": origin, "Referer": f"{origin}/accounts/login/"},
    )


async def session_cookie(base: str) -> str:
    """A logged-in session of ``USERNAME``: the ``sessionid`` cookie's value."""
    async with httpx.AsyncClient(base_url=base) as http:
        response = await log_in(http, USERNAME, PASSWORD)
        assert response.status_code == 302, response.text
        assert response.headers["location"] == "/chat/lobby/"
        session: str = http.cookies["sessionid"]
    return session


def ws_url(base: str) -> str:
    return "ws://" + base.removeprefix("http://")


def join(base: str, room: str, session: str | None = None, origin: str | None = None) -> connect:
    """The room's WebSocket as the room page opens it: same Origin, the browser's cookies."""
    headers = {"Cookie": f"sessionid={session}"} if session else None
    return connect(
        f"{ws_url(base)}/ws/chat/{room}/",
        origin=Origin(origin or base),
        additional_headers=headers,
    )


async def say(client: ClientConnection, text: str) -> None:
    await client.send(json.dumps({"message": text}))


async def heard(client: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(client.recv(), 5))
    return message


async def test_logged_in_user_signs_messages_anonymous_does_not(base_url: str) -> None:
    session = await session_cookie(base_url)
    async with (
        join(base_url, "lobby", session) as alice,
        join(base_url, "lobby") as stranger,
        join(base_url, "kitchen", session) as elsewhere,
    ):
        await say(alice, "hello from alice")
        expected = {"username": USERNAME, "message": "hello from alice"}
        assert await heard(alice) == expected
        assert await heard(stranger) == expected
        await say(stranger, "hi, who am I?")
        expected = {"username": "anonymous", "message": "hi, who am I?"}
        assert await heard(alice) == expected
        assert await heard(stranger) == expected
        # The same session in another room: it hears that room only, signed the same.
        await say(elsewhere, "kitchen talk")
        assert await heard(elsewhere) == {"username": USERNAME, "message": "kitchen talk"}
        await say(alice, "lobby again")
        assert (await heard(alice))["message"] == "lobby again"
        assert (await heard(stranger))["message"] == "lobby again"
        # What the client sends beyond {"message": str} is not trusted: no forged username.
        await stranger.send(json.dumps({"message": "forged", "username": USERNAME}))
        await stranger.send("not json")
        await say(stranger, "   ")
        assert await heard(alice) == {"username": "anonymous", "message": "forged"}
        await say(stranger, "still connected")
        assert (await heard(alice))["message"] == "still connected"


async def test_a_bad_session_or_password_is_anonymous(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http:
        response = await log_in(http, USERNAME, "wrong password")
        assert response.status_code == 200  # the form again, with its error
        assert "didn't match" in response.text
        assert "sessionid" not in http.cookies
    async with join(base_url, "lobby", session="not-a-session") as forged:
        await say(forged, "who?")
        assert await heard(forged) == {"username": "anonymous", "message": "who?"}


async def test_room_page_renders_for_the_session(base_url: str) -> None:
    session = await session_cookie(base_url)
    async with httpx.AsyncClient(base_url=base_url) as http:
        anonymous = await http.get("/chat/lobby/")
        http.cookies.set("sessionid", session)
        signed_in = await http.get("/chat/lobby/")
        index = await http.get("/chat/")
        bad_room = await http.get("/chat/no%20spaces/")
    assert anonymous.status_code == 200
    assert "text/html" in anonymous.headers["content-type"]
    assert '<script id="room-name" type="application/json">"lobby"</script>' in anonymous.text
    assert "new WebSocket" in anonymous.text
    assert "/ws/chat/" in anonymous.text
    assert "Log in" in anonymous.text
    assert f"Signed in as <strong>{USERNAME}</strong>" in signed_in.text
    assert index.status_code == 200
    assert "What chat room would you like to enter?" in index.text
    assert bad_room.status_code == 404


async def test_foreign_origin_and_bad_room_are_refused(base_url: str) -> None:
    session = await session_cookie(base_url)
    # A page on another site cannot use the visitor's session cookie (cross-site hijacking).
    with pytest.raises(websockets.InvalidStatus) as foreign:
        async with join(base_url, "lobby", session, origin="http://evil.example"):
            pass
    assert foreign.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus) as bad_room:
        async with join(base_url, "no%20spaces", session):
            pass
    assert bad_room.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus) as no_route:
        async with connect(f"{ws_url(base_url)}/ws/nowhere/", origin=Origin(base_url)):
            pass
    assert no_route.value.response.status_code == 403


async def test_two_gateways_share_rooms_and_sessions_through_redis(
    db_path: Path, own_redis_server: RedisServer
) -> None:
    env = project_env(db_path, layer_url=f"{own_redis_server.url}?prefix=djangochat")
    ports = free_port(), free_port()
    one, two = (f"http://127.0.0.1:{port}" for port in ports)
    with start_gateway(ports[0], env), start_gateway(ports[1], env):
        session = await session_cookie(one)  # logged in through gateway one ...
        async with join(two, "lobby", session) as alice, join(one, "lobby") as stranger:
            await say(alice, "via gateway two")  # ... known to gateway two: same database
            expected = {"username": USERNAME, "message": "via gateway two"}
            assert await heard(alice) == expected
            assert await heard(stranger) == expected
            await say(stranger, "via gateway one")
            assert await heard(alice) == {"username": "anonymous", "message": "via gateway one"}
