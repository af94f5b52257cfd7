"""roomcast consumers: Channels-style consumers, routing, middleware and test communicators.

Every public module of Channels 4.3 has its counterpart here under Channels' name, so a port is
the rename ``channels.X`` → ``roomcast.consumers.X`` (``generic.websocket``, ``generic.http``,
``consumer``, ``routing``, ``layers``, ``auth``, ``sessions``, ``middleware``,
``security.websocket``, ``db``, ``exceptions``, ``testing``, ``worker``, ``apps``); the table and
the deliberate differences are in docs/porting.md. This package also exports the names used
most, for ``from roomcast.consumers import AsyncWebsocketConsumer``.

The test communicators live in :mod:`roomcast.consumers.testing` (as Channels keeps them in
``channels.testing``), so importing this package does not load test machinery.
"""

if __name__ != "roomcast.consumers":  # the source folder, imported by its folder name
    raise ImportError(
        f"{__name__!r} is roomcast's source folder consumers/: import roomcast.consumers "
        "(pip install -e . maps it there)"
    )


# Consumers and their exceptions (base, websocket, http, exceptions) ------------------------
from .base import AsyncConsumer, SyncConsumer, get_handler_name
from .exceptions import (
    AcceptConnection,
    DenyConnection,
    InvalidChannelLayerError,
    RequestAborted,
    RequestTimeout,
    StopConsumer,
    UndecodableFrame,
)
from .http import AsyncHttpConsumer
from .websocket import (
    AsyncJsonWebsocketConsumer,
    AsyncWebsocketConsumer,
    JsonWebsocketConsumer,
    WebsocketConsumer,
)

# isort: split
# Routing, middleware, origin checks, auth (routing, middleware, security, sessions, auth,
# tokens) ----------------------------------------------------------------------------------
from .auth import AuthMiddleware, AuthMiddlewareStack
from .middleware import BaseMiddleware
from .routing import (
    ChannelNameRouter,
    ProtocolTypeRouter,
    RouteNotFound,
    URLRouter,
    path,
    re_path,
    register_converter,
)
from .security import AllowedHostsOriginValidator, OriginValidator, WebsocketDenier
from .sessions import CookieMiddleware, SessionMiddleware, SessionMiddlewareStack
from .tokens import TokenAuthMiddleware, get_token

# isort: split
# Channels' ``channels.DEFAULT_CHANNEL_LAYER`` ---------------------------------------------
from roomcast.layers.settings import DEFAULT_CHANNEL_LAYER

__all__ = [
    # consumers (base, websocket, http, exceptions)
    "DEFAULT_CHANNEL_LAYER",
    "AcceptConnection",
    "AsyncConsumer",
    "AsyncHttpConsumer",
    "AsyncJsonWebsocketConsumer",
    "AsyncWebsocketConsumer",
    "DenyConnection",
    "InvalidChannelLayerError",
    "JsonWebsocketConsumer",
    "RequestAborted",
    "RequestTimeout",
    "StopConsumer",
    "SyncConsumer",
    "UndecodableFrame",
    "WebsocketConsumer",
    "get_handler_name",
]

__all__ += [
    # routing, middleware, security, auth
    "AllowedHostsOriginValidator",
    "AuthMiddleware",
    "AuthMiddlewareStack",
    "BaseMiddleware",
    "ChannelNameRouter",
    "CookieMiddleware",
    "OriginValidator",
    "ProtocolTypeRouter",
    "RouteNotFound",
    "SessionMiddleware",
    "SessionMiddlewareStack",
    "TokenAuthMiddleware",
    "URLRouter",
    "WebsocketDenier",
    "get_token",
    "path",
    "re_path",
    "register_converter",
]
