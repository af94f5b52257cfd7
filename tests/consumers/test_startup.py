"""ProtocolTypeRouter's start-up checks: CHANNEL_LAYERS mistakes end start-up with one line.

In process, the router is driven through the lifespan protocol with layers configured by a
settings module (``ROOMCAST_SETTINGS``); across processes, a real gateway serving a project
with a typo in ``CHANNEL_LAYERS`` exits with one ``roomcast: error:`` line naming the key.
"""

from __future__ import annotations

import logging
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import roomcast.layers.settings as layer_settings
from roomcast.consumers.routing import ProtocolTypeRouter
from roomcast.consumers.testing import ApplicationCommunicator
from roomcast.layers.exceptions import LayerConnectionError
from roomcast.layers.memory import InMemoryChannelLayer
from roomcast.layers.settings import ENV_LAYER_URL, ENV_SETTINGS_MODULE, channel_layers

from tests.gateway.apps import GatewayProcess, free_port, one_error_line

LIFESPAN: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}


class UnreachableLayer(InMemoryChannelLayer):
    """A backend whose server is down: its check() fails as the Redis layer's does."""

    async def check(self) -> None:
        raise LayerConnectionError("cannot connect to redis://127.0.0.1:1/0: refused")


async def http_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("no request in these tests")


@pytest.fixture
def layers_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Configure CHANNEL_LAYERS through a settings module written to ``tmp_path``."""
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("DJANGO_SETTINGS_MODULE", ENV_LAYER_URL):
        monkeypatch.delenv(name, raising=False)
    django_conf = sys.modules.get("django.conf")
    if django_conf is not None and django_conf.settings.configured:
        monkeypatch.setattr(layer_settings, "_from_django", lambda: None)

    def configure(layers: dict[str, Any]) -> None:
        name = f"startup_settings_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(f"CHANNEL_LAYERS = {layers!r}\n")
        monkeypatch.setenv(ENV_SETTINGS_MODULE, name)
        channel_layers.reset()

    yield configure
    channel_layers.reset()


async def run_startup(application: Any) -> dict[str, Any]:
    communicator = ApplicationCommunicator(application, dict(LIFESPAN))
    await communicator.send_input({"type": "lifespan.startup"})
    answer = await communicator.receive_output(timeout=5)
    if answer["type"] == "lifespan.startup.complete":
        await communicator.send_input({"type": "lifespan.shutdown"})
        assert (await communicator.receive_output(timeout=5))["type"] == (
            "lifespan.shutdown.complete"
        )
    await communicator.wait(timeout=5)
    return answer


async def test_startup_builds_the_configured_layers(layers_settings: Any) -> None:
    memory = "roomcast.layers.memory.InMemoryChannelLayer"
    layers_settings({"default": {"BACKEND": memory}, "jobs": {"BACKEND": memory}})
    answer = await run_startup(ProtocolTypeRouter({"http": http_app}))
    assert answer == {"type": "lifespan.startup.complete"}
    assert isinstance(channel_layers.get("jobs"), InMemoryChannelLayer)


async def test_a_typo_in_config_fails_startup_naming_alias_and_key(layers_settings: Any) -> None:
    layers_settings(
        {
            "default": {
                "BACKEND": "roomcast.layers.memory.InMemoryChannelLayer",
                "CONFIG": {"capasity": 10},
            }
        }
    )
    answer = await run_startup(ProtocolTypeRouter({"http": http_app}))
    assert answer["type"] == "lifespan.startup.failed"
    assert answer["message"].startswith(
        "CHANNEL_LAYERS['default']['CONFIG']: unknown option 'capasity'"
    )
    assert "did you mean 'capacity'?" in answer["message"]


async def test_a_bad_backend_fails_startup_naming_it(layers_settings: Any) -> None:
    layers_settings({"chat": {"BACKEND": "myproject.nosuch.Layer"}})
    answer = await run_startup(ProtocolTypeRouter({"http": http_app}))
    assert answer["type"] == "lifespan.startup.failed"
    assert "CHANNEL_LAYERS['chat']['BACKEND']" in answer["message"]
    assert "myproject.nosuch.Layer" in answer["message"]


async def test_an_unreachable_server_is_one_warning_and_startup_goes_on(
    layers_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    layers_settings({"default": {"BACKEND": f"{__name__}.UnreachableLayer"}})
    with caplog.at_level(logging.WARNING, logger="roomcast.consumers.startup"):
        answer = await run_startup(ProtocolTypeRouter({"http": http_app}))
    assert answer == {"type": "lifespan.startup.complete"}
    [record] = [r for r in caplog.records if r.name == "roomcast.consumers.startup"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "channel layer 'default' cannot reach its server (cannot connect to "
        "redis://127.0.0.1:1/0: refused); serving, not ready until it answers"
    )
    assert record.exc_info is None


async def test_the_mappings_own_lifespan_runs_after_the_checks(layers_settings: Any) -> None:
    layers_settings({"default": {"BACKEND": "roomcast.layers.memory.InMemoryChannelLayer"}})
    seen: list[str] = []

    async def lifespan(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "lifespan.startup":
                scope["state"]["ready"] = True
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    answer = await run_startup(ProtocolTypeRouter({"http": http_app, "lifespan": lifespan}))
    assert answer == {"type": "lifespan.startup.complete"}
    assert seen == ["lifespan.startup", "lifespan.shutdown"]


async def test_a_failed_check_keeps_startup_from_the_mappings_lifespan(
    layers_settings: Any,
) -> None:
    layers_settings({"default": {"BACKEND": "nosuch.Layer"}})
    seen: list[str] = []

    async def lifespan(scope: Any, receive: Any, send: Any) -> None:
        seen.append((await receive())["type"])

    answer = await run_startup(ProtocolTypeRouter({"http": http_app, "lifespan": lifespan}))
    assert answer["type"] == "lifespan.startup.failed"
    assert seen == []


async def test_check_layers_false_skips_the_checks(layers_settings: Any) -> None:
    layers_settings({"default": {"BACKEND": "nosuch.Layer"}})
    answer = await run_startup(ProtocolTypeRouter({"http": http_app}, check_layers=False))
    assert answer == {"type": "lifespan.startup.complete"}


PROJECT_ASGI = """
from roomcast.consumers import AsyncWebsocketConsumer
from roomcast.consumers.routing import ProtocolTypeRouter, URLRouter, path


class Echo(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data)


application = ProtocolTypeRouter({"websocket": URLRouter([path("ws/", Echo.as_asgi())])})
"""


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        (
            {
                "default": {
                    "BACKEND": "roomcast.layers.redis.RedisChannelLayer",
                    "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"], "capasity": 5},
                }
            },
            "roomcast: error: application startup failed: CHANNEL_LAYERS['default']['CONFIG']: "
            "unknown option 'capasity'",
        ),
        (
            {"default": {"BACKEND": "roomcast.layers.nosuch.Layer"}},
            "roomcast: error: application startup failed: CHANNEL_LAYERS['default']['BACKEND']",
        ),
    ],
    ids=["typo", "bad-backend"],
)
def test_the_gateway_exits_with_one_line_for_a_bad_channel_layers(
    tmp_path: Path, layers: dict[str, Any], expected: str
) -> None:
    (tmp_path / "project_settings.py").write_text(f"CHANNEL_LAYERS = {layers!r}\n")
    (tmp_path / "project_asgi.py").write_text(textwrap.dedent(PROJECT_ASGI))
    env = {ENV_SETTINGS_MODULE: "project_settings", "PYTHONPATH": str(tmp_path)}
    args = ("project_asgi:application", "-p", str(free_port()))
    with GatewayProcess(*args, env=env, cwd=tmp_path) as gateway:
        status, stderr = gateway.finish()
    assert status == 3
    assert one_error_line(stderr).startswith(expected)
