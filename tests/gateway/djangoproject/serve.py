"""Serve the tiny Django project with the gateway's HTTP/1.1 connection; print the port.

Run as ``python -m tests.gateway.djangoproject.serve`` from the repository root. Django is
configured here, in its own process, so the pytest process stays unconfigured.
"""

from __future__ import annotations

import asyncio
from typing import Any

import django
from django.conf import settings


def application() -> Any:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="gateway-test-only",
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF="tests.gateway.djangoproject.urls",
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        USE_TZ=True,
        # A failing view shows its traceback on stderr, which the test shows when it fails.
        LOGGING={
            "version": 1,
            "handlers": {"stderr": {"class": "logging.StreamHandler"}},
            "loggers": {"django": {"handlers": ["stderr"], "level": "WARNING"}},
        },
    )
    django.setup(set_prefix=False)
    from django.core.asgi import get_asgi_application

    return get_asgi_application()


async def main() -> None:
    from roomcast.gateway.config import Config
    from roomcast.gateway.connections.http1 import HTTP1Connection
    from roomcast.gateway.state import ServerState

    app = application()
    config = Config(app=app)
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HTTP1Connection(config, app, state), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
