"""roomcast installs as ``roomcast.*`` only: a user project's own ``consumers.py``, ``layers/``
package and ``gateway`` app sit beside it without a clash, and the source folders cannot be
imported a second way from the repository root."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.gateway.apps import GatewayProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("gateway", "layers", "consumers")

USER_PROJECT = {
    # The Channels tutorial's file name, at the top of the project.
    "consumers.py": """
        from layers.greeting import greet
        from roomcast.consumers import AsyncWebsocketConsumer


        class EchoConsumer(AsyncWebsocketConsumer):
            async def connect(self):
                await self.channel_layer.group_add("room", self.channel_name)
                await self.accept()

            async def receive(self, text_data=None, bytes_data=None):
                await self.channel_layer.group_send(
                    "room", {"type": "chat.message", "text": greet(text_data)}
                )

            async def chat_message(self, event):
                await self.send(text_data=event["text"])
    """,
    # A package of the user's own called layers.
    "layers/__init__.py": "",
    "layers/greeting.py": """
        def greet(name):
            return f"hello, {name} (from the project's own layers package)"
    """,
    # A Django app called gateway.
    "gateway/__init__.py": "",
    "gateway/views.py": """
        from django.http import HttpResponse


        def hello(request):
            return HttpResponse("the project's own gateway app")
    """,
    "gateway/urls.py": """
        from django.urls import path

        from . import views

        urlpatterns = [path("", views.hello)]
    """,
    "mysite/__init__.py": "",
    "mysite/settings.py": """
        SECRET_KEY = "test"
        DEBUG = False
        ALLOWED_HOSTS = ["*"]
        INSTALLED_APPS = ["django.contrib.contenttypes", "gateway"]
        ROOT_URLCONF = "mysite.urls"
        DATABASES = {}
        CHANNEL_LAYERS = {
            "default": {"BACKEND": "roomcast.layers.memory.InMemoryChannelLayer"}
        }
    """,
    "mysite/urls.py": """
        from django.urls import include, path

        urlpatterns = [path("gateway/", include("gateway.urls"))]
    """,
    "mysite/asgi.py": """
        import os

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

        from django.core.asgi import get_asgi_application

        django_application = get_asgi_application()

        import consumers
        from roomcast.consumers.routing import ProtocolTypeRouter, URLRouter, path

        application = ProtocolTypeRouter(
            {
                "http": django_application,
                "websocket": URLRouter([path("ws/echo/", consumers.EchoConsumer.as_asgi())]),
            }
        )
    """,
}


def write_project(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


def test_a_project_with_its_own_consumers_layers_and_gateway_is_served(tmp_path: Path) -> None:
    write_project(tmp_path, USER_PROJECT)
    port = free_port()
    with GatewayProcess("mysite.asgi:application", "-p", str(port), cwd=tmp_path) as gateway:
        gateway.wait_listening()
        response = httpx.get(f"http://127.0.0.1:{port}/gateway/", timeout=5)
        assert response.status_code == 200, gateway.stderr
        assert response.text == "the project's own gateway app"
        with connect(f"ws://127.0.0.1:{port}/ws/echo/", open_timeout=5) as websocket:
            websocket.send("ada")
            assert websocket.recv(timeout=5) == (
                "hello, ada (from the project's own layers package)"
            )
        assert "Traceback" not in gateway.stderr


def test_roomcast_commands_run_from_a_project_with_a_gateway_package(tmp_path: Path) -> None:
    write_project(tmp_path, USER_PROJECT)
    for command in (
        [sys.executable, "-m", "roomcast.gateway", "--help"],
        [sys.executable, "-m", "roomcast", "serve", "--help"],
        [sys.executable, "-m", "roomcast", "worker", "--help"],
        [sys.executable, "-m", "roomcast.consumers.worker", "--help"],
    ):
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout
    # ... while the project's own package keeps its name.
    result = subprocess.run(
        [sys.executable, "-c", "import gateway, layers, consumers; print(gateway.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.strip() == str(tmp_path / "gateway" / "__init__.py"), result.stderr


def test_roomcast_lists_its_subcommands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roomcast", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout
    assert "worker" in result.stdout


@pytest.mark.parametrize("part", PARTS)
def test_a_source_folder_is_not_importable_under_its_folder_name(part: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {part}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"ImportError: '{part}' is roomcast's source folder {part}/: import roomcast.{part} "
        "(pip install -e . maps it there)"
    )


def test_no_module_is_loaded_twice_under_two_names() -> None:
    code = textwrap.dedent(
        """
        import json, os, pkgutil, importlib, sys
        import roomcast
        for part in ("gateway", "layers", "consumers"):
            package = importlib.import_module(f"roomcast.{part}")
            for info in pkgutil.walk_packages(package.__path__, f"roomcast.{part}."):
                if info.name.endswith("__main__"):
                    continue
                try:
                    importlib.import_module(info.name)
                except ImportError as exc:
                    # an optional dependency (e.g. matplotlib for --plot) may be missing
                    if exc.name and exc.name.split(".")[0] == "roomcast":
                        raise
        files = {}
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None)
            if path and path.startswith(sys.argv[1]):
                files.setdefault(os.path.realpath(path), []).append(name)
        print(json.dumps({
            "twice": {p: n for p, n in files.items() if len(n) > 1},
            "top": sorted(n for n in sys.modules if n in ("gateway", "layers", "consumers")),
            "count": len([n for n in sys.modules if n.startswith("roomcast.")]),
        }))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["twice"] == {}
    assert report["top"] == []
    assert report["count"] > 50


def test_the_wheel_installs_roomcast_only(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("roomcast-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(
            archive.read(n).decode() for n in names if n.endswith("entry_points.txt")
        )
    tops = {name.split("/")[0] for name in names}
    assert tops == {"roomcast", next(t for t in tops if t.endswith(".dist-info"))}
    # Every source file of every part is in the wheel, under roomcast/.
    tracked = subprocess.run(
        ["git", "ls-files", "roomcast", *PARTS], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    expected = {
        name if name.startswith("roomcast/") else f"roomcast/{name}"
        for name in tracked
        if name.endswith((".py", "py.typed"))
    }
    assert expected, "git ls-files found the sources"
    assert expected <= set(names), sorted(expected - set(names))
    assert "roomcast = roomcast.cli:main" in entry_points
    assert "layer-bench = roomcast.layers.bench.cli:main" in entry_points
    assert "gateway =" not in entry_points
