"""The project's ASGI application, written as a ported Channels project writes it."""

import django
from django.core.asgi import get_asgi_application

django.setup()
django_app = get_asgi_application()

from roomcast.consumers.routing import ProtocolTypeRouter, URLRouter, path, re_path  # noqa: E402
from roomcast.consumers.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from .notes.consumers import NotesConsumer, NotesHttpConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": URLRouter([path("notes/", NotesHttpConsumer.as_asgi()), re_path(r"", django_app)]),
        "websocket": AllowedHostsOriginValidator(
            URLRouter([path("ws/notes/", NotesConsumer.as_asgi())])
        ),
    }
)
