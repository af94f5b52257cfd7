"""Cookies, Django sessions and users, and the token hook without Django.

The Django parts run in a subprocess (``python -m tests.consumers.test_auth django``) that
configures settings on a temporary SQLite database, migrates, logs users in with Django's test
client and drives ``AuthMiddlewareStack`` with asgiref's ApplicationCommunicator; it prints JSON
that the tests here assert. Django is never configured in the pytest process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from roomcast.consumers.auth import (
    AnonymousUser,
    AuthMiddleware,
    CookieMiddleware,
    SessionMiddleware,
    TokenAuthMiddleware,
    get_token,
    parse_cookie,
)
from roomcast.consumers.middleware import Message, Receive, Scope, Send

ROOT = Path(__file__).resolve().parents[2]

Action = Callable[[Scope], Awaitable[None]]


class Inner:
    """Records the scopes it gets; accepts WebSockets and answers HTTP 200 after ``action``."""

    def __init__(self, action: Action | None = None) -> None:
        self.action = action
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        if scope["type"] == "websocket":
            await receive()
            if self.action is not None:
                await self.action(scope)
            await send({"type": "websocket.accept"})
        elif scope["type"] == "http":
            await receive()
            if self.action is not None:
                await self.action(scope)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    @property
    def scope(self) -> Scope:
        assert len(self.scopes) == 1, self.scopes
        return self.scopes[0]


def scope_for(
    kind: str = "websocket",
    headers: list[tuple[bytes, bytes]] | None = None,
    query_string: bytes = b"",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": kind,
        "path": "/ws/",
        "headers": headers or [],
        "query_string": query_string,
        **extra,
    }


async def run(app: Any, scope: dict[str, Any]) -> list[Message]:
    """Drive one connection: connect (or request), collect what the app sends."""
    communicator = ApplicationCommunicator(app, scope)
    if scope["type"] == "websocket":
        await communicator.send_input({"type": "websocket.connect"})
        out = [await communicator.receive_output(1)]
    else:
        await communicator.send_input({"type": "http.request", "body": b""})
        out = [await communicator.receive_output(1), await communicator.receive_output(1)]
    await communicator.wait(1)
    return out


# -- cookies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("a=1; b=2", {"a": "1", "b": "2"}),
        ("  a = 1 ;b=two words ", {"a": "1", "b": "two words"}),
        ("a=1; a=2", {"a": "2"}),
        ("token=abc==; x=", {"token": "abc==", "x": ""}),
        ('q="quoted \\"value\\""', {"q": 'quoted "value"'}),
        ('o="\\303\\251"', {"o": "\xc3\xa9"}),
        ("nameless", {"": "nameless"}),
        (";;", {}),
        ("", {}),
    ],
)
def test_parse_cookie(header: str, expected: dict[str, str]) -> None:
    assert parse_cookie(header) == expected


async def test_cookie_middleware_puts_cookies_in_the_scope() -> None:
    inner = Inner()
    scope = scope_for(headers=[(b"cookie", b"sessionid=abc; theme=dark")])
    await run(CookieMiddleware(inner), scope)
    assert inner.scope["cookies"] == {"sessionid": "abc", "theme": "dark"}
    assert "cookies" not in scope  # the caller's scope is untouched


async def test_cookie_middleware_joins_several_cookie_headers_and_defaults_to_empty() -> None:
    inner = Inner()
    await run(
        CookieMiddleware(inner), scope_for(headers=[(b"cookie", b"a=1"), (b"Cookie", b"b=2")])
    )
    await run(CookieMiddleware(inner), scope_for())
    assert [s["cookies"] for s in inner.scopes] == [{"a": "1", "b": "2"}, {}]


async def test_cookie_middleware_needs_headers() -> None:
    async def no_receive() -> Message:
        raise AssertionError

    async def no_send(message: Message) -> None:
        raise AssertionError

    with pytest.raises(ValueError, match="headers"):
        await CookieMiddleware(Inner())({"type": "lifespan"}, no_receive, no_send)


def test_set_cookie_and_delete_cookie() -> None:
    message: dict[str, Any] = {"type": "http.response.start", "status": 200}
    CookieMiddleware.set_cookie(
        message, "sessionid", "k1", max_age=60, secure=True, httponly=True, samesite="Strict"
    )
    CookieMiddleware.delete_cookie(message, "old", domain="example.com")
    [(name1, first), (name2, second)] = message["headers"]
    assert name1 == name2 == b"set-cookie"
    assert first.startswith(b"sessionid=k1; ")
    for part in (b"Max-Age=60", b"Path=/", b"Secure", b"HttpOnly", b"SameSite=Strict"):
        assert part in first
    assert b"expires=" in first
    assert second.startswith(b"old=")
    for part in (b"Max-Age=0", b"Domain=example.com", b"Thu, 01 Jan 1970 00:00:00 GMT"):
        assert part in second
    in_a_minute = datetime.now(UTC) + timedelta(seconds=59.5)
    CookieMiddleware.set_cookie(message, "soon", "v", expires=in_a_minute)
    assert b"Max-Age=60" in message["headers"][2][1]
    with pytest.raises(ValueError, match="samesite"):
        CookieMiddleware.set_cookie(message, "x", samesite="sometimes")


async def test_session_and_auth_middleware_say_what_is_missing() -> None:
    async def no_receive() -> Message:
        raise AssertionError

    async def no_send(message: Message) -> None:
        raise AssertionError

    with pytest.raises(ValueError, match="CookieMiddleware"):
        await SessionMiddleware(Inner())(scope_for(), no_receive, no_send)
    with pytest.raises(ValueError, match="SessionMiddleware must be above it"):
        await AuthMiddleware(Inner())(scope_for(cookies={}), no_receive, no_send)


# -- get_token -------------------------------------------------------------------------------


def test_get_token_from_the_authorization_header() -> None:
    scope = scope_for(headers=[(b"Authorization", b"Bearer  abc.def ")])
    assert get_token(scope) == "abc.def"
    assert get_token(scope_for(headers=[(b"authorization", b"bearer xyz")])) == "xyz"
    assert get_token(scope_for(headers=[(b"authorization", b"Basic dXNlcg==")])) is None
    assert get_token(scope_for(headers=[(b"authorization", b"Bearer ")])) is None
    raw = scope_for(headers=[(b"x-api-key", b"k-123")])
    assert get_token(raw, header="X-API-Key", scheme=None) == "k-123"


def test_get_token_from_a_cookie_and_the_query_string() -> None:
    assert get_token(scope_for(headers=[(b"cookie", b"auth=c1")]), cookie="auth") == "c1"
    assert get_token(scope_for(cookies={"auth": "c2"}), cookie="auth") == "c2"
    assert get_token(scope_for(headers=[(b"cookie", b"auth=c1")])) is None  # cookie not asked
    assert get_token(scope_for(query_string=b"room=1&token=a%2Bb%3D")) == "a+b="
    assert get_token(scope_for(query_string=b"token=&token=t2")) == "t2"
    assert get_token(scope_for(query_string=b"access=q"), query_param="access") == "q"
    assert get_token(scope_for(query_string=b"token=q"), query_param=None) is None
    assert get_token(scope_for()) is None


def test_get_token_order_is_header_cookie_query() -> None:
    scope = scope_for(
        headers=[(b"authorization", b"Bearer h"), (b"cookie", b"auth=c")],
        query_string=b"token=q",
    )
    assert get_token(scope, cookie="auth") == "h"
    assert get_token(scope, header=None, cookie="auth") == "c"
    assert get_token(scope, header=None) == "q"


# -- TokenAuthMiddleware ---------------------------------------------------------------------


class User:
    is_authenticated = True

    def __init__(self, name: str) -> None:
        self.name = name


USERS = {"t-alice": User("alice")}


async def authenticate(scope: Scope) -> User | None:
    token = get_token(scope)
    return USERS.get(token) if token else None


async def test_token_auth_puts_the_user_in_the_scope() -> None:
    inner = Inner()
    app = TokenAuthMiddleware(inner, authenticate=authenticate)
    out = await run(app, scope_for(query_string=b"token=t-alice"))
    assert out == [{"type": "websocket.accept"}]
    assert inner.scope["user"] is USERS["t-alice"]


@pytest.mark.parametrize("query", [b"", b"token=wrong"])
async def test_token_auth_anonymous_without_a_valid_token(query: bytes) -> None:
    inner = Inner()
    await run(TokenAuthMiddleware(inner, authenticate=authenticate), scope_for(query_string=query))
    user = inner.scope["user"]
    assert isinstance(user, AnonymousUser)
    assert user.is_authenticated is False
    assert user.is_anonymous is True
    assert user == AnonymousUser()
    assert str(user) == "AnonymousUser"


async def test_token_auth_required_refuses_websocket_and_http() -> None:
    inner = Inner()
    app = TokenAuthMiddleware(inner, authenticate=authenticate, required=True)
    assert await run(app, scope_for(query_string=b"token=wrong")) == [{"type": "websocket.close"}]
    start, body = await run(app, scope_for("http"))
    assert start["status"] == 403
    assert body["body"] == b"403 Forbidden\n"
    assert inner.scopes == []
    await run(app, scope_for(headers=[(b"authorization", b"Bearer t-alice")]))
    assert inner.scope["user"].name == "alice"


async def test_token_auth_subclass_and_custom_anonymous() -> None:
    class HeaderAuth(TokenAuthMiddleware):
        async def authenticate(self, scope: Scope) -> Any:
            token = get_token(scope, header="x-token", scheme=None, query_param=None)
            return User(token) if token else None

    inner = Inner()
    app = HeaderAuth(inner, anonymous=lambda: "nobody")
    await run(app, scope_for(headers=[(b"x-token", b"bob")]))
    await run(app, scope_for(query_string=b"token=t-alice"))
    assert [getattr(s["user"], "name", s["user"]) for s in inner.scopes] == ["bob", "nobody"]


async def test_token_auth_keeps_an_already_authenticated_user() -> None:
    calls: list[Scope] = []

    async def counting(scope: Scope) -> Any:
        calls.append(scope)
        return None

    inner = Inner()
    outer_user = User("from-session")
    app = TokenAuthMiddleware(inner, authenticate=counting)
    await run(app, scope_for(user=outer_user))
    await run(app, scope_for(user=AnonymousUser()))
    assert inner.scopes[0]["user"] is outer_user
    assert isinstance(inner.scopes[1]["user"], AnonymousUser)
    assert len(calls) == 1


async def test_token_auth_errors_propagate_and_missing_authenticate_is_explained() -> None:
    async def broken(scope: Scope) -> Any:
        raise RuntimeError("token service down")

    with pytest.raises(RuntimeError, match="token service down"):
        await run(TokenAuthMiddleware(Inner(), authenticate=broken), scope_for())
    with pytest.raises(NotImplementedError, match="authenticate="):
        await run(TokenAuthMiddleware(Inner()), scope_for())


async def test_token_auth_passes_other_scope_types_through() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    async def never(scope: Scope) -> Any:
        raise AssertionError("not for lifespan")

    async def no_receive() -> Message:
        raise AssertionError

    async def no_send(message: Message) -> None:
        raise AssertionError

    await TokenAuthMiddleware(app, authenticate=never)({"type": "lifespan"}, no_receive, no_send)
    assert seen == [{"type": "lifespan"}]


# -- with Django, in a subprocess -----------------------------------------------------------


def _django_scenario(tmp: str) -> dict[str, Any]:
    """Configure Django (its database in ``tmp``), log users in, drive AuthMiddlewareStack;
    results as a JSON-able dict."""
    import asyncio

    import django
    from asgiref.sync import sync_to_async
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="test-secret-key-for-roomcast-auth-tests-0123456789",
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": f"{tmp}/db"}},
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        USE_TZ=True,
    )
    django.setup()

    from django.contrib.auth.models import User as DjangoUser
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command
    from django.http import parse_cookie as django_parse_cookie
    from django.test import Client
    from roomcast.consumers.auth import AuthMiddlewareStack, SessionMiddlewareStack, login, logout
    from roomcast.consumers.db import database_sync_to_async

    call_command("migrate", verbosity=0, interactive=False)
    alice = DjangoUser.objects.create_user("alice", password="pw")
    bob = DjangoUser.objects.create_user("bob", password="pw")

    def session_cookie_for(user: Any) -> str:
        client = Client()
        client.force_login(user)
        return str(client.cookies[settings.SESSION_COOKIE_NAME].value)

    alice_key = session_cookie_for(alice)
    http_key = session_cookie_for(alice)
    bob_key = session_cookie_for(bob)
    bob.set_password("changed")  # invalidates bob's sessions (session auth hash)
    bob.save()

    def describe(user: Any) -> dict[str, Any]:
        return {
            "class": user.__class__.__name__,
            "holder": type(user).__name__,
            "authenticated": bool(user.is_authenticated),
            "username": user.username,
        }

    def cookie(key: str) -> list[tuple[bytes, bytes]]:
        return [(b"cookie", f"{settings.SESSION_COOKIE_NAME}={key}; other=1".encode())]

    async def connect_as(headers: list[tuple[bytes, bytes]], action: Action | None = None) -> Any:
        inner = Inner(action)
        out = await run(AuthMiddlewareStack(inner), scope_for(headers=headers))
        assert out == [{"type": "websocket.accept"}], out
        return inner.scope

    async def scenarios() -> dict[str, Any]:
        results: dict[str, Any] = {}
        scope = await connect_as(cookie(alice_key))
        results["logged_in"] = describe(scope["user"])
        results["logged_in_is_user"] = isinstance(scope["user"], DjangoUser)
        results["session_key"] = scope["session"].session_key == alice_key
        results["cookies"] = scope["cookies"]["other"]
        results["anonymous"] = describe((await connect_as([]))["user"])
        results["bogus_cookie"] = describe((await connect_as(cookie("nope")))["user"])
        results["password_changed"] = describe((await connect_as(cookie(bob_key)))["user"])

        # login() on a WebSocket, then save the session, then come back with its cookie
        async def do_login(scope: Scope) -> None:
            await login(scope, alice)
            await database_sync_to_async(scope["session"].save)()

        scope = await connect_as([], do_login)
        results["after_login"] = describe(scope["user"])
        new_key = scope["session"].session_key
        results["login_session"] = describe((await connect_as(cookie(new_key)))["user"])

        # logout() flushes the session: its cookie no longer logs in
        async def do_logout(scope: Scope) -> None:
            await logout(scope)

        scope = await connect_as(cookie(new_key), do_logout)
        results["after_logout"] = describe(scope["user"])
        results["logout_session"] = describe((await connect_as(cookie(new_key)))["user"])

        # HTTP: a modified session is saved and its cookie set on the response
        async def remember(scope: Scope) -> None:
            await sync_to_async(scope["session"].__setitem__)("n", 7)

        inner = Inner(remember)
        start, _ = await run(SessionMiddlewareStack(inner), scope_for("http"))
        [set_cookie] = [v.decode() for k, v in start["headers"] if k == b"set-cookie"]
        results["http_set_cookie"] = set_cookie
        saved_key = inner.scope["session"].session_key
        load = database_sync_to_async(lambda: SessionStore(saved_key).load())
        results["http_saved"] = await load()

        # HTTP: an unmodified session sets no cookie
        start, _ = await run(SessionMiddlewareStack(Inner()), scope_for("http"))
        results["http_untouched_headers"] = start["headers"]

        # HTTP: logging out over HTTP deletes the cookie
        inner = Inner(do_logout)
        start, _ = await run(AuthMiddlewareStack(inner), scope_for("http", cookie(http_key)))
        results["http_logout_cookie"] = [
            v.decode() for k, v in start["headers"] if k == b"set-cookie"
        ]
        return results

    results = asyncio.run(scenarios())
    results["parse_cookie_matches_django"] = all(
        parse_cookie(header) == django_parse_cookie(header)
        for header in [
            "a=1; b=2",
            " a = 1 ;b=two words ",
            "a=1; a=2",
            'q="quoted \\"v\\""',
            'o="\\303\\251"',
            "nameless; =x",
            ";;",
            "",
            "k=v=w; $Version=1",
        ]
    )
    return results


@pytest.fixture(scope="module")
def django_results() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "tests.consumers.test_auth", "django"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    results: dict[str, Any] = json.loads(result.stdout)
    return results


ANONYMOUS = {
    "class": "AnonymousUser",
    "holder": "UserLazyObject",
    "authenticated": False,
    "username": "",
}


def test_django_logged_in_session_reaches_scope_user(django_results: dict[str, Any]) -> None:
    assert django_results["logged_in"] == {
        "class": "User",
        "holder": "UserLazyObject",
        "authenticated": True,
        "username": "alice",
    }
    assert django_results["logged_in_is_user"] is True
    assert django_results["session_key"] is True
    assert django_results["cookies"] == "1"


@pytest.mark.parametrize("case", ["anonymous", "bogus_cookie", "password_changed"])
def test_django_anonymous_otherwise(django_results: dict[str, Any], case: str) -> None:
    assert django_results[case] == ANONYMOUS


def test_django_login_and_logout_helpers(django_results: dict[str, Any]) -> None:
    alice = {"class": "User", "authenticated": True, "username": "alice"}
    assert django_results["after_login"] == {**alice, "holder": "User"}
    assert django_results["login_session"] == {**alice, "holder": "UserLazyObject"}
    assert django_results["after_logout"] == {**ANONYMOUS, "holder": "AnonymousUser"}
    assert django_results["logout_session"] == ANONYMOUS


def test_django_http_session_is_saved_with_its_cookie(django_results: dict[str, Any]) -> None:
    set_cookie = django_results["http_set_cookie"]
    assert set_cookie.startswith("sessionid=")
    for part in ("Max-Age=1209600", "HttpOnly", "Path=/", "SameSite=Lax", "expires="):
        assert part in set_cookie
    assert django_results["http_saved"] == {"n": 7}
    assert django_results["http_untouched_headers"] == []
    [deleted] = django_results["http_logout_cookie"]
    assert deleted.startswith('sessionid=""; ')
    assert "Max-Age=0" in deleted


def test_parse_cookie_matches_django(django_results: dict[str, Any]) -> None:
    assert django_results["parse_cookie_matches_django"] is True


def test_django_stays_unconfigured_in_this_process() -> None:
    django_conf = sys.modules.get("django.conf")
    assert django_conf is None or not django_conf.settings.configured


if __name__ == "__main__" and sys.argv[1:] == ["django"]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="roomcast-auth-") as tmp:
        print(json.dumps(_django_scenario(tmp)))
