"""A small Django project written by the tests: the Channels tutorial's shape on roomcast.

``write_project(root)`` lays it out in ``root`` (``manage.py`` at the top). What it serves:

* ``/``: a view answering ``hello, version 1`` (the autoreloader test edits it);
* ``/static/chat/hello.txt``: a static file of the ``chat`` app (staticfiles);
* ``ws://.../ws/chat/``: a chat consumer; everyone connected is in one group of the layer;
* the ``thumbnails`` channel: a worker consumer that appends ``<pid> <id>`` to the file named
  by ``THUMBNAILS_LOG`` and, until two processes have written there, waits: the first two
  messages are then handled by two different workers, whatever the scheduling.

Settings come from the environment: ``TEST_DEBUG`` (``1``/``0``) and ``ROOMCAST_LAYER_URL``
(``memory://`` by default). ``mysite.settings_*`` modules are variants some tests pick with
``--settings``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

STATIC_TEXT = "a static file of the chat app\n"
VIEW_V1 = "hello, version 1"
VIEW_V2 = "hello, version 2"

VIEWS = """
from django.http import HttpRequest, HttpResponse


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse("{text}")


def scheme(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.scheme)
"""

FILES = {
    "manage.py": """
        import os
        import sys

        if __name__ == "__main__":
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
            from django.core.management import execute_from_command_line

            execute_from_command_line(sys.argv)
    """,
    "mysite/__init__.py": "",
    "mysite/settings.py": """
        import os

        from roomcast.layers.settings import layer_config_from_url

        SECRET_KEY = "test-only-secret-key"
        DEBUG = os.environ.get("TEST_DEBUG", "1") == "1"
        ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
        INSTALLED_APPS = ["roomcast", "django.contrib.staticfiles", "chat"]
        ROOT_URLCONF = "mysite.urls"
        ASGI_APPLICATION = "mysite.asgi.application"
        CHANNEL_LAYERS = layer_config_from_url(os.environ.get("ROOMCAST_LAYER_URL") or "memory://")
        DATABASES = {}
        STATIC_URL = "static/"
        USE_TZ = True
    """,
    "mysite/settings_no_application.py": """
        from mysite.settings import *  # noqa: F403

        del ASGI_APPLICATION  # noqa: F821
    """,
    "mysite/settings_missing_module.py": """
        from mysite.settings import *  # noqa: F403

        ASGI_APPLICATION = "mysite.nosuch.application"
    """,
    "mysite/settings_missing_attribute.py": """
        from mysite.settings import *  # noqa: F403

        ASGI_APPLICATION = "mysite.asgi.applicaton"
    """,
    "mysite/settings_not_dotted.py": """
        from mysite.settings import *  # noqa: F403

        ASGI_APPLICATION = "application"
    """,
    "mysite/settings_not_callable.py": """
        from mysite.settings import *  # noqa: F403

        ASGI_APPLICATION = "mysite.settings.SECRET_KEY"
    """,
    "mysite/settings_staticfiles_first.py": """
        from mysite.settings import *  # noqa: F403

        INSTALLED_APPS = ["django.contrib.staticfiles", "roomcast", "chat"]
    """,
    "mysite/urls.py": """
        from django.urls import path

        from chat import views

        urlpatterns = [path("", views.hello), path("scheme/", views.scheme)]
    """,
    "mysite/asgi.py": """
        import os

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

        from django.core.asgi import get_asgi_application

        django_application = get_asgi_application()

        from chat.consumers import ChatConsumer
        from chat.workers import ThumbnailConsumer
        from roomcast.consumers.routing import (
            ChannelNameRouter,
            ProtocolTypeRouter,
            URLRouter,
            path,
        )

        application = ProtocolTypeRouter(
            {
                "http": django_application,
                "websocket": URLRouter([path("ws/chat/", ChatConsumer.as_asgi())]),
                "channel": ChannelNameRouter({"thumbnails": ThumbnailConsumer.as_asgi()}),
            }
        )
    """,
    "chat/__init__.py": "",
    "chat/views.py": VIEWS.format(text=VIEW_V1),
    "chat/consumers.py": """
        from roomcast.consumers import AsyncWebsocketConsumer


        class ChatConsumer(AsyncWebsocketConsumer):
            async def connect(self):
                await self.channel_layer.group_add("chat", self.channel_name)
                await self.accept()

            async def disconnect(self, code):
                await self.channel_layer.group_discard("chat", self.channel_name)

            async def receive(self, text_data=None, bytes_data=None):
                await self.channel_layer.group_send(
                    "chat", {"type": "chat.message", "text": text_data}
                )

            async def chat_message(self, event):
                await self.send(text_data=event["text"])
    """,
    "chat/workers.py": """
        import asyncio
        import os

        from roomcast.consumers import AsyncConsumer

        RENDEZVOUS = 30.0  # seconds a handler waits for a second worker to handle a message


        def pids(path):
            with open(path, encoding="utf-8") as log:
                return {line.split()[0] for line in log if line.strip()}


        class ThumbnailConsumer(AsyncConsumer):
            async def thumbnails_make(self, event):
                path = os.environ["THUMBNAILS_LOG"]
                with open(path, "a", encoding="utf-8") as log:
                    log.write(f"{os.getpid()} {event['id']}\\n")
                loop = asyncio.get_running_loop()
                deadline = loop.time() + RENDEZVOUS
                while len(pids(path)) < 2 and loop.time() < deadline:
                    await asyncio.sleep(0.05)
    """,
    "chat/static/chat/hello.txt": STATIC_TEXT,
}


def write_project(root: Path) -> Path:
    """Write the project into ``root``; returns ``root``."""
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def set_view_text(root: Path, text: str) -> None:
    """Rewrite the view to answer ``text`` (what a developer's edit does)."""
    (root / "chat" / "views.py").write_text(VIEWS.format(text=text).lstrip())
