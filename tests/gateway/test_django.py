"""A Django project's ``get_asgi_application()`` served by the gateway, asked with httpx.

Django is configured in a subprocess (``djangoproject/serve.py``): other tests rely on Django
being unconfigured in the pytest process.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def django_url() -> AsyncIterator[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.gateway.djangoproject.serve",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,  # the port; stderr stays pytest's, shown on failure
    )
    try:
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
        except TimeoutError:
            line = b""
        if not line.strip().isdigit():
            pytest.fail(f"the Django server did not start (it printed {line!r})")
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_django_view_answers(django_url: str) -> None:
    async with httpx.AsyncClient(base_url=django_url) as client:
        response = await client.get("/echo/caf%C3%A9/", params={"a": ["1", "2"], "b": "x y"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "path": "/echo/café/",
        "name": "café",
        "method": "GET",
        "GET": {"a": ["1", "2"], "b": ["x y"]},
        "POST": {},
        "script_name": "",
        "host": django_url.removeprefix("http://"),
    }


async def test_django_form_post(django_url: str) -> None:
    async with httpx.AsyncClient(base_url=django_url) as client:
        response = await client.post(
            "/echo/form/", data={"name": "Zoë", "tags": ["a", "b"]}, params={"next": "/home"}
        )
    assert response.status_code == 200
    data = response.json()
    assert data["method"] == "POST"
    assert data["POST"] == {"name": ["Zoë"], "tags": ["a", "b"]}
    assert data["GET"] == {"next": ["/home"]}


async def test_django_404_and_keep_alive(django_url: str) -> None:
    async with httpx.AsyncClient(base_url=django_url) as client:
        missing = await client.get("/nowhere/")
        again = await client.get("/echo/again/")  # the connection is still good after a 404
    assert missing.status_code == 404
    assert again.status_code == 200
    assert again.json()["path"] == "/echo/again/"


async def test_django_disallowed_host_is_400(django_url: str) -> None:
    async with httpx.AsyncClient(base_url=django_url) as client:
        response = await client.get("/echo/x/", headers={"Host": "evil.example"})
    assert response.status_code == 400


def test_django_stays_unconfigured_in_this_process() -> None:
    from django.conf import settings

    assert not settings.configured
