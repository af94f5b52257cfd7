"""The ASGI application (``ASGI_APPLICATION``): ``python manage.py runserver`` serves it in
development, ``roomcast serve mysite.asgi:application`` in production.

HTTP goes to Django (pages, login, admin); WebSockets to the chat consumers, behind an origin
check (``ALLOWED_HOSTS``) and the Django session's user in ``scope["user"]``. This is the
Channels tutorial's ``asgi.py`` with roomcast's imports. The static files are not served
here: runserver adds them in DEBUG, as Django's runserver does.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

# Django is set up (apps loaded) before the imports below, which may use models: the
# Channels tutorial's order.
django_asgi_app = get_asgi_application()

from chat.routing import websocket_urlpatterns  # noqa: E402
from roomcast.consumers.auth import AuthMiddlewareStack  # noqa: E402
from roomcast.consumers.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from roomcast.consumers.security import AllowedHostsOriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
