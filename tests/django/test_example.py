"""examples/django_chat the way its README runs it: ``manage.py migrate``, then
``manage.py runserver`` (roomcast's, from ``"roomcast"`` in its INSTALLED_APPS), in DEBUG.

The database is a temporary one (``DJANGO_DB_PATH``); Django is configured only in the
subprocesses.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Origin

from tests.django.support import ManageProcess, free_port, manage, project_env

pytestmark = pytest.mark.timeout(120)

PROJECT = Path(__file__).resolve().parents[2] / "examples" / "django_chat"


async def test_the_example_under_runserver(tmp_path: Path) -> None:
    env = project_env(DJANGO_DEBUG="1", DJANGO_DB_PATH=str(tmp_path / "db.sqlite3"))
    migrated = manage(PROJECT, "migrate", "--noinput", env=env)
    assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    with ManageProcess(PROJECT, "runserver", "--noreload", f"127.0.0.1:{port}", env=env) as server:
        url = server.wait_started()
        assert "Starting roomcast ASGI server for mysite.asgi.application" in server.stdout
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            room = await http.get("/chat/lobby/")
            css = await http.get("/static/admin/css/base.css")  # staticfiles, in DEBUG
        assert room.status_code == 200
        assert "lobby" in room.text
        assert css.status_code == 200
        assert css.headers["content-type"].startswith("text/css")

        origin = Origin(url.rstrip("/"))  # the page's origin, as a browser sends it
        ws_url = f"ws://127.0.0.1:{port}/ws/chat/lobby/"
        async with (
            connect(ws_url, origin=origin, open_timeout=10) as one,
            connect(ws_url, origin=origin, open_timeout=10) as two,
        ):
            await one.send(json.dumps({"message": "hello, lobby"}))
            heard = json.loads(await asyncio.wait_for(two.recv(), 10))
        assert heard == {"message": "hello, lobby", "username": "anonymous"}
        assert "Traceback" not in server.stderr
