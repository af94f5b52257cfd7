"""Routers: ProtocolTypeRouter, URLRouter with path()/re_path(), ChannelNameRouter; no Django.

Driven with asgiref's ApplicationCommunicator, plus real sockets through the gateway for what a
client sees when no route matches.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgiref.testing import ApplicationCommunicator
from roomcast.consumers.middleware import BaseMiddleware, Message, Receive, Scope, Send
from roomcast.consumers.routing import (
    ChannelNameRouter,
    ProtocolTypeRouter,
    RouteNotFound,
    URLRouter,
    path,
    re_path,
    register_converter,
)
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.gateway.ws_support import gateway_server

ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    """An endpoint that remembers the scopes it got; accepts WebSockets, answers HTTP 200."""

    def __init__(self, name: str = "app") -> None:
        self.name = name
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(dict(scope))
        if scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": self.name.encode()})

    @property
    def scope(self) -> dict[str, Any]:
        assert len(self.scopes) == 1, self.scopes
        return self.scopes[0]


def ws_scope(path_: str, **extra: Any) -> dict[str, Any]:
    return {"type": "websocket", "path": path_, "headers": [], "query_string": b"", **extra}


def http_scope(path_: str, **extra: Any) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path_, "headers": [], **extra}


async def ws_connect(app: Any, scope: dict[str, Any]) -> Message:
    """Send websocket.connect; the app's answer (the app must then finish cleanly)."""
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "websocket.connect"})
    answer = await communicator.receive_output(1)
    await communicator.wait(1)
    return answer


async def http_get(app: Any, scope: dict[str, Any]) -> tuple[int, bytes]:
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(1)
    body = await communicator.receive_output(1)
    await communicator.wait(1)
    return start["status"], body["body"]


async def never_receive() -> Message:
    raise AssertionError("the router must not receive")


async def never_send(message: Message) -> None:
    raise AssertionError(f"the router must not send {message}")


# -- ProtocolTypeRouter -------------------------------------------------------------------


async def test_protocol_type_router_dispatches_on_scope_type() -> None:
    ws, http = Recorder("ws"), Recorder("http")
    router = ProtocolTypeRouter({"websocket": ws, "http": http})
    assert (await ws_connect(router, ws_scope("/x/")))["type"] == "websocket.accept"
    assert await http_get(router, http_scope("/x/")) == (200, b"http")
    assert ws.scope["type"] == "websocket"
    assert http.scope["type"] == "http"


async def test_protocol_type_router_unknown_type_names_it() -> None:
    router = ProtocolTypeRouter({"http": Recorder()})
    with pytest.raises(ValueError, match=r"scope type 'websocket'.*'http'"):
        await router(ws_scope("/"), never_receive, never_send)


def test_routers_refuse_a_consumer_class_with_a_hint() -> None:
    class ChatConsumer:
        pass

    with pytest.raises(TypeError, match=r"ChatConsumer\.as_asgi\(\)"):
        ProtocolTypeRouter({"websocket": ChatConsumer})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"ChatConsumer\.as_asgi\(\)"):
        path("ws/", ChatConsumer)  # type: ignore[arg-type]


# -- path() converters --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "request_path", "kwargs"),
    [
        ("ws/chat/<str:room>/", "/ws/chat/lobby/", {"room": "lobby"}),
        ("ws/chat/<room>/", "/ws/chat/café au lait/", {"room": "café au lait"}),
        ("ws/room/<int:room_id>/", "/ws/room/42/", {"room_id": 42}),
        ("ws/s/<slug:slug>/", "/ws/s/a-b_C9/", {"slug": "a-b_C9"}),
        (
            "ws/u/<uuid:id>/",
            "/ws/u/12345678-1234-5678-1234-567812345678/",
            {"id": uuid.UUID("12345678-1234-5678-1234-567812345678")},
        ),
        ("files/<path:rest>", "/files/a/b/c.txt", {"rest": "a/b/c.txt"}),
        ("ws/<str:a>/<int:b>/", "/ws/x/7/", {"a": "x", "b": 7}),
        ("/ws/lead/", "/ws/lead/", {}),  # a leading slash in the route is ignored
    ],
)
async def test_path_converters(route: str, request_path: str, kwargs: dict[str, Any]) -> None:
    app = Recorder()
    answer = await ws_connect(URLRouter([path(route, app)]), ws_scope(request_path))
    assert answer == {"type": "websocket.accept"}
    assert app.scope["url_route"] == {"args": (), "kwargs": kwargs}
    assert {type(v) for v in app.scope["url_route"]["kwargs"].values()} == {
        type(v) for v in kwargs.values()
    }
    assert app.scope["path_remaining"] == ""


@pytest.mark.parametrize(
    ("route", "request_path"),
    [
        ("ws/room/<int:room_id>/", "/ws/room/4x2/"),
        ("ws/room/<int:room_id>/", "/ws/room/-1/"),
        ("ws/s/<slug:slug>/", "/ws/s/a.b/"),
        ("ws/u/<uuid:id>/", "/ws/u/12345678-1234-5678-1234-56781234567G/"),
        ("ws/u/<uuid:id>/", "/ws/u/12345678-1234-5678-1234-56781234567/"),
        ("ws/chat/<str:room>/", "/ws/chat/a/b/"),  # str stops at a slash
        ("ws/chat/<str:room>/", "/ws/chat/lobby/extra"),  # endpoints match the whole path
        ("ws/chat/<str:room>/", "/ws/chat/lobby"),
    ],
)
async def test_path_converters_refuse(route: str, request_path: str) -> None:
    app = Recorder()
    answer = await ws_connect(URLRouter([path(route, app)]), ws_scope(request_path))
    assert answer == {"type": "websocket.close"}
    assert app.scopes == []


def test_path_rejects_bad_routes() -> None:
    app = Recorder()
    with pytest.raises(ValueError, match="unknown converter 'float'"):
        path("x/<float:f>/", app)
    with pytest.raises(ValueError, match="not a valid Python identifier"):
        path("x/<int:1st>/", app)
    with pytest.raises(ValueError, match="whitespace"):
        path("x/<int: n>/", app)
    with pytest.raises(ValueError, match="twice"):
        path("x/<a>/<a>/", app)


async def test_register_converter() -> None:
    class HexConverter:
        regex = "[0-9a-f]+"

        def to_python(self, value: str) -> int:
            return int(value, 16)

    name = f"hex{uuid.uuid4().hex[:8]}"  # the registry is global: a fresh name per run
    register_converter(HexConverter, name)
    with pytest.raises(ValueError, match="already registered"):
        register_converter(HexConverter, name)
    with pytest.raises(ValueError, match="already registered"):
        register_converter(HexConverter, "int")
    app = Recorder()
    await ws_connect(URLRouter([path(f"c/<{name}:n>/", app)]), ws_scope("/c/ff/"))
    assert app.scope["url_route"]["kwargs"] == {"n": 255}


async def test_converter_value_error_means_no_match_and_the_next_route_is_tried() -> None:
    class EvenConverter:
        regex = "[0-9]+"

        def to_python(self, value: str) -> int:
            if int(value) % 2:
                raise ValueError("odd")
            return int(value)

    name = f"even{uuid.uuid4().hex[:8]}"
    register_converter(EvenConverter(), name)
    even, other = Recorder("even"), Recorder("other")
    router = URLRouter([path(f"n/<{name}:n>/", even), path("n/<int:n>/", other)])
    await ws_connect(router, ws_scope("/n/4/"))
    await ws_connect(router, ws_scope("/n/5/"))
    assert [s["url_route"]["kwargs"] for s in even.scopes] == [{"n": 4}]
    assert [s["url_route"]["kwargs"] for s in other.scopes] == [{"n": 5}]


async def test_route_kwargs_are_added_to_url_route() -> None:
    app = Recorder()
    router = URLRouter([path("ws/<str:room>/", app, kwargs={"mode": "chat"}, name="room")])
    await ws_connect(router, ws_scope("/ws/lobby/"))
    assert app.scope["url_route"]["kwargs"] == {"room": "lobby", "mode": "chat"}
    assert router.routes[0].name == "room"


async def test_first_matching_route_wins() -> None:
    first, second = Recorder("first"), Recorder("second")
    router = URLRouter([path("ws/<str:x>/", first), path("ws/<int:x>/", second)])
    await ws_connect(router, ws_scope("/ws/1/"))
    assert len(first.scopes) == 1
    assert second.scopes == []


# -- re_path() -----------------------------------------------------------------------------


async def test_re_path_named_groups_are_kwargs() -> None:
    app = Recorder()
    router = URLRouter([re_path(r"^ws/chat/(?P<room>\w+)/$", app)])
    await ws_connect(router, ws_scope("/ws/chat/lobby/"))
    assert app.scope["url_route"] == {"args": (), "kwargs": {"room": "lobby"}}


async def test_re_path_unnamed_groups_are_args() -> None:
    app = Recorder()
    router = URLRouter([re_path(r"^ws/(\w+)/(\d+)/$", app)])
    await ws_connect(router, ws_scope("/ws/lobby/7/"))
    assert app.scope["url_route"] == {"args": ("lobby", "7"), "kwargs": {}}


async def test_re_path_named_groups_hide_unnamed_ones_and_unmatched_are_dropped() -> None:
    app = Recorder()
    router = URLRouter([re_path(r"^ws/(\w+)/(?P<room>\w+)/(?:(?P<page>\d+)/)?$", app)])
    await ws_connect(router, ws_scope("/ws/x/lobby/"))
    await ws_connect(router, ws_scope("/ws/x/lobby/3/"))
    assert [s["url_route"] for s in app.scopes] == [
        {"args": (), "kwargs": {"room": "lobby"}},
        {"args": (), "kwargs": {"room": "lobby", "page": "3"}},
    ]


async def test_re_path_with_dollar_must_match_the_whole_path() -> None:
    app = Recorder()
    router = URLRouter([re_path(r"^ws/chat/$", app)])
    assert (await ws_connect(router, ws_scope("/ws/chat/x"))) == {"type": "websocket.close"}
    assert (await ws_connect(router, ws_scope("/ws/chat/"))) == {"type": "websocket.accept"}


# -- nesting ---------------------------------------------------------------------------------


async def test_nested_routers_consume_the_prefix_and_merge_kwargs() -> None:
    app = Recorder()
    router = URLRouter(
        [
            path(
                "org/<slug:org>/",
                URLRouter([path("room/<int:room>/", URLRouter([path("live/", app)]))]),
            ),
        ]
    )
    await ws_connect(router, ws_scope("/org/acme/room/5/live/"))
    assert app.scope["url_route"] == {"args": (), "kwargs": {"org": "acme", "room": 5}}
    assert app.scope["path_remaining"] == ""
    assert app.scope["path"] == "/org/acme/room/5/live/"


async def test_nested_re_path_args_are_concatenated_and_path_remaining_is_set() -> None:
    seen: list[dict[str, Any]] = []

    async def inner_probe(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(dict(scope))
        await Recorder()(scope, receive, send)

    inner = URLRouter([re_path(r"^(\d+)/", inner_probe)])
    router = URLRouter([re_path(r"^a/(\w)/", inner)])
    await ws_connect(router, ws_scope("/a/x/9/tail"))
    assert seen[0]["url_route"] == {"args": ("x", "9"), "kwargs": {}}
    assert seen[0]["path_remaining"] == "tail"


async def test_inner_kwargs_override_outer_ones() -> None:
    app = Recorder()
    router = URLRouter([path("<str:x>/", URLRouter([path("<int:x>/", app)]))])
    await ws_connect(router, ws_scope("/a/1/"))
    assert app.scope["url_route"]["kwargs"] == {"x": 1}


async def test_nested_router_without_a_match_lets_the_outer_router_go_on() -> None:
    admin, fallback = Recorder("admin"), Recorder("fallback")
    router = URLRouter(
        [
            path("ws/", URLRouter([path("admin/", admin)])),
            path("ws/<str:room>/", fallback),
        ]
    )
    await ws_connect(router, ws_scope("/ws/admin/"))
    await ws_connect(router, ws_scope("/ws/lobby/"))
    assert len(admin.scopes) == 1
    assert [s["url_route"]["kwargs"] for s in fallback.scopes] == [{"room": "lobby"}]
    # the fallback saw the outer router's scope, not the failed inner attempt's
    assert fallback.scope["path_remaining"] == ""


async def test_nested_router_without_any_match_closes() -> None:
    router = URLRouter([path("ws/", URLRouter([path("admin/", Recorder())]))])
    assert (await ws_connect(router, ws_scope("/ws/other/"))) == {"type": "websocket.close"}
    assert await http_get(router, http_scope("/ws/other/")) == (404, b"404 Not Found\n")


async def test_inner_router_alone_raises_route_not_found() -> None:
    inner = URLRouter([path("a/", Recorder())])
    with pytest.raises(RouteNotFound, match="'b/'"):
        await inner(ws_scope("/x/b/", path_remaining="b/"), never_receive, never_send)


async def test_middleware_around_a_nested_router_is_matched_as_a_prefix() -> None:
    class Tag(BaseMiddleware):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
            return await self.inner(dict(scope, tag="tagged"), receive, send)

    app = Recorder()
    router = URLRouter([path("api/<str:v>/", Tag(URLRouter([path("chat/", app)])))])
    await ws_connect(router, ws_scope("/api/v2/chat/"))
    assert app.scope["tag"] == "tagged"
    assert app.scope["url_route"]["kwargs"] == {"v": "v2"}


async def test_router_does_not_change_the_callers_scope() -> None:
    app = Recorder()
    scope = ws_scope("/ws/a/")
    await ws_connect(URLRouter([path("ws/<str:r>/", app)]), scope)
    assert "url_route" not in scope
    assert "path_remaining" not in scope


# -- root_path ------------------------------------------------------------------------------


async def test_root_path_is_removed_before_matching() -> None:
    app = Recorder()
    router = URLRouter([path("ws/chat/<str:room>/", app)])
    scope = ws_scope("/prefix/ws/chat/lobby/", root_path="/prefix")
    assert (await ws_connect(router, scope)) == {"type": "websocket.accept"}
    assert app.scope["url_route"]["kwargs"] == {"room": "lobby"}
    # a root path with a trailing slash is the same root path
    scope = ws_scope("/prefix/ws/chat/hall/", root_path="/prefix/")
    assert (await ws_connect(router, scope)) == {"type": "websocket.accept"}


@pytest.mark.parametrize("request_path", ["/ws/chat/lobby/", "/prefixed/ws/chat/lobby/"])
async def test_path_outside_root_path_is_not_routed(request_path: str) -> None:
    app = Recorder()
    router = URLRouter([path("ws/chat/<str:room>/", app), path("<path:any>", app)])
    scope = ws_scope(request_path, root_path="/prefix")
    assert (await ws_connect(router, scope)) == {"type": "websocket.close"}
    assert app.scopes == []


# -- no route -------------------------------------------------------------------------------


async def test_no_route_closes_a_websocket_before_accept_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = URLRouter([path("ws/chat/<str:room>/", Recorder())])
    with caplog.at_level(logging.WARNING, logger="roomcast.consumers.routing"):
        answer = await ws_connect(router, ws_scope("/ws/nowhere/"))
    assert answer == {"type": "websocket.close"}
    [record] = [r for r in caplog.records if r.name == "roomcast.consumers.routing"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "No route found for WebSocket path '/ws/nowhere/': closing the connection"
    )


async def test_no_route_websocket_that_disconnects_first_is_left_alone() -> None:
    router = URLRouter([path("a/", Recorder())])
    communicator = ApplicationCommunicator(router, ws_scope("/b/"))
    await communicator.send_input({"type": "websocket.disconnect", "code": 1006})
    await communicator.wait(1)
    assert await communicator.receive_nothing()


async def test_no_route_answers_http_404(caplog: pytest.LogCaptureFixture) -> None:
    router = URLRouter([path("ws/chat/<str:room>/", Recorder())])
    with caplog.at_level(logging.INFO, logger="roomcast.consumers.routing"):
        communicator = ApplicationCommunicator(router, http_scope("/nowhere"))
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(1)
        body = await communicator.receive_output(1)
        await communicator.wait(1)
    assert start["status"] == 404
    assert (b"content-type", b"text/plain; charset=utf-8") in start["headers"]
    assert body == {"type": "http.response.body", "body": b"404 Not Found\n"}
    assert "No route found for HTTP path '/nowhere': 404" in caplog.text


async def test_no_route_for_another_scope_type_raises() -> None:
    router = URLRouter([path("a/", Recorder())])
    scope = {"type": "custom", "path": "/b/"}
    with pytest.raises(ValueError, match="No route found for path '/b/'"):
        await router(scope, never_receive, never_send)


async def test_scope_without_a_path_raises() -> None:
    with pytest.raises(ValueError, match="No 'path' key"):
        await URLRouter([])({"type": "websocket"}, never_receive, never_send)


def test_include_and_junk_entries_are_refused() -> None:
    class Include:
        callback = None
        url_patterns: list[Any] = []

    with pytest.raises(ValueError, match=r"include\(\) is not supported"):
        URLRouter([Include()])
    with pytest.raises(TypeError, match="path"):
        URLRouter(["ws/"])


# -- ChannelNameRouter -----------------------------------------------------------------------


async def test_channel_name_router() -> None:
    thumbs = Recorder("thumbs")
    router = ChannelNameRouter({"thumbnails": thumbs})
    scope = {"type": "channel", "channel": "thumbnails"}
    await router(scope, never_receive, never_send)
    assert thumbs.scope == scope
    with pytest.raises(ValueError, match=r"channel name 'emails'.*'thumbnails'"):
        await router({"type": "channel", "channel": "emails"}, never_receive, never_send)
    with pytest.raises(ValueError, match="without a 'channel' key"):
        await router({"type": "channel"}, never_receive, never_send)


async def test_protocol_type_router_with_channel_name_router() -> None:
    worker = Recorder("worker")
    app = ProtocolTypeRouter({"channel": ChannelNameRouter({"jobs": worker})})
    await app({"type": "channel", "channel": "jobs"}, never_receive, never_send)
    assert worker.scope["channel"] == "jobs"


# -- real sockets through the gateway ------------------------------------------------------


async def test_through_the_gateway_no_route_is_403_for_websocket_and_404_for_http() -> None:
    chat = Recorder("chat")
    router = URLRouter([path("ws/chat/<str:room>/", chat), path("page/", chat)])
    app = ProtocolTypeRouter({"websocket": router, "http": router})
    async with gateway_server(app) as served:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(served.url("/ws/nowhere/"), open_timeout=5):
                pass
        assert refused.value.response.status_code == 403
        async with connect(served.url("/ws/chat/lobby/"), open_timeout=5) as ws:
            assert ws.response is not None
            assert ws.response.status_code == 101
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
            missing = await client.get("/nowhere")
            found = await client.get("/page/")
    assert (missing.status_code, missing.text) == (404, "404 Not Found\n")
    assert (found.status_code, found.text) == (200, "chat")
    assert [s["url_route"]["kwargs"] for s in chat.scopes] == [{"room": "lobby"}, {}]


# -- the whole stack, with real consumers and the test communicator --------------------------


async def test_tutorial_stack_with_consumers_and_communicator() -> None:
    from roomcast.consumers.auth import TokenAuthMiddleware, get_token
    from roomcast.consumers.security import AllowedHostsOriginValidator
    from roomcast.consumers.testing import WebsocketCommunicator
    from roomcast.consumers.websocket import AsyncJsonWebsocketConsumer

    class Person:
        is_authenticated = True

        def __init__(self, name: str) -> None:
            self.name = name

    async def authenticate(scope: Scope) -> Person | None:
        token = get_token(scope)
        return Person("alice") if token == "secret" else None

    class Room(AsyncJsonWebsocketConsumer):
        async def connect(self) -> None:
            await self.accept()

        async def receive_json(self, content: Any, **kwargs: Any) -> None:
            await self.send_json(
                {
                    "room": self.scope["url_route"]["kwargs"]["room"],
                    "user": self.scope["user"].name,
                    "said": content,
                }
            )

    application = ProtocolTypeRouter(
        {
            "websocket": AllowedHostsOriginValidator(
                TokenAuthMiddleware(
                    URLRouter([path("ws/chat/<str:room>/", Room.as_asgi())]),
                    authenticate=authenticate,
                    required=True,
                ),
                allowed_hosts=["chat.example.com"],
            )
        }
    )
    good_origin = [(b"origin", b"https://chat.example.com")]

    communicator = WebsocketCommunicator(
        application, "/ws/chat/lobby/?token=secret", headers=good_origin
    )
    assert await communicator.connect() == (True, None)
    await communicator.send_json_to({"text": "hi"})
    assert await communicator.receive_json_from() == {
        "room": "lobby",
        "user": "alice",
        "said": {"text": "hi"},
    }
    await communicator.disconnect()

    refusals = [
        ("/ws/chat/lobby/?token=secret", [(b"origin", b"https://evil.test")]),  # origin
        ("/ws/chat/lobby/?token=wrong", good_origin),  # token
        ("/ws/elsewhere/?token=secret", good_origin),  # route
    ]
    for path_, headers in refusals:
        communicator = WebsocketCommunicator(application, path_, headers=headers)
        connected, code = await communicator.connect()
        assert (connected, code) == (False, 1000), path_
        await communicator.wait(1)


# -- Django's own path() and re_path() entries, in a subprocess ----------------------------


def _django_scenario() -> list[Any]:
    """Run in a subprocess: URLRouter fed with django.urls.path()/re_path() entries."""
    import asyncio

    from django.conf import settings
    from django.urls import path as django_path
    from django.urls import re_path as django_re_path

    settings.configure()
    app = Recorder()
    router = URLRouter(
        [
            django_path("ws/<int:n>/", app),
            django_path("nest/<slug:s>/", URLRouter([django_re_path(r"^(?P<x>\w+)/$", app)])),
            django_re_path(r"^args/(\d+)/$", app, {"extra": True}),
        ]
    )

    async def main() -> list[Any]:
        answers = [
            (await ws_connect(router, ws_scope(p)))["type"]
            for p in ["/ws/5/", "/nest/a-b/c/", "/args/9/", "/ws/x/", "/nest/a-b/c/d/"]
        ]
        routes = [[list(s["url_route"]["args"]), s["url_route"]["kwargs"]] for s in app.scopes]
        return [answers, routes]

    return asyncio.run(main())


def test_django_path_and_re_path_entries_are_accepted() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.consumers.test_routing", "django"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    answers, routes = json.loads(result.stdout)
    accept, close = "websocket.accept", "websocket.close"
    assert answers == [accept, accept, accept, close, close]
    assert routes == [
        [[], {"n": 5}],
        [[], {"s": "a-b", "x": "c"}],
        [["9"], {"extra": True}],
    ]


# -- no Django, no Channels --------------------------------------------------------------------


def test_routing_middleware_security_and_auth_import_neither_django_nor_channels() -> None:
    code = (
        "import sys\n"
        "import roomcast.consumers, roomcast.consumers.routing, roomcast.consumers.middleware\n"
        "import roomcast.consumers.security, roomcast.consumers.auth\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'channels')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


if __name__ == "__main__" and sys.argv[1:] == ["django"]:
    print(json.dumps(_django_scenario()))
