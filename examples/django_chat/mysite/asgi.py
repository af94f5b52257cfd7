"""The ASGI application: ``gateway mysite.asgi:application`` (from this directory).

HTTP goes to Django (pages, login, admin); WebSockets to the chat consumers, behind an origin
check (``ALLOWED_HOSTS``) and the Django session's user in ``scope["user"]``. This is the
Channels tutorial's ``asgi.py`` with roomcast's imports.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

# Django is set up (apps loaded) before the imports below, which may use models: the
# Channels tutorial's order.
django_asgi_app = get_asgi_application()

from chat.routing import websocket_urlpatterns  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from roomcast.consumers.auth import AuthMiddlewareStack  # noqa: E402
from roomcast.consumers.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from roomcast.consumers.security import AllowedHostsOriginValidator  # noqa: E402

if settings.DEBUG:
    # The admin's CSS and JS, as runserver serves them in DEBUG (behind a proxy in production:
    # collectstatic). Django's handler streams the files without blocking the event loop.
    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
