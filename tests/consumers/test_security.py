"""OriginValidator, AllowedHostsOriginValidator and WebsocketDenier.

The pattern table is also run through Channels' own OriginValidator (in a subprocess, which
imports Django without configuring it) so that every difference from Channels is deliberate and
listed here. Django settings are configured only in subprocesses: run as
``python -m tests.consumers.test_security django``.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from asgiref.testing import ApplicationCommunicator
from roomcast.consumers.middleware import Message, Receive, Scope, Send
from roomcast.consumers.security import (
    AllowedHostsOriginValidator,
    OriginValidator,
    WebsocketDenier,
)
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from tests.gateway.ws_support import gateway_server

ROOT = Path(__file__).resolve().parents[2]


class Inner:
    """Accepts WebSockets, answers HTTP 200, counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


def headers_for(origin: str | list[str] | None) -> list[tuple[bytes, bytes]]:
    if origin is None:
        return [(b"host", b"example.com")]
    origins = [origin] if isinstance(origin, str) else origin
    return [(b"host", b"example.com")] + [(b"origin", o.encode("latin-1")) for o in origins]


async def ws_answer(app: Any, origin: str | list[str] | None) -> Message:
    scope = {"type": "websocket", "path": "/ws/", "headers": headers_for(origin)}
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "websocket.connect"})
    answer = await communicator.receive_output(1)
    await communicator.wait(1)
    return answer


async def allowed(patterns: list[str], origin: str | list[str] | None, **kw: Any) -> bool:
    inner = Inner()
    answer = await ws_answer(OriginValidator(inner, patterns, **kw), origin)
    assert answer["type"] in ("websocket.accept", "websocket.close")
    assert inner.calls == (answer["type"] == "websocket.accept")
    return bool(answer["type"] == "websocket.accept")


# (allowed origins, Origin header, allowed?)
CASES: list[tuple[list[str], str, bool]] = [
    (["*"], "http://anything.test", True),
    (["*"], "null", True),
    (["http://example.com"], "http://example.com", True),
    (["http://example.com"], "http://example.com:80", True),
    (["http://example.com"], "http://example.com:8080", False),
    (["http://example.com"], "https://example.com", False),
    (["http://example.com"], "ws://example.com", False),
    (["http://example.com"], "http://EXAMPLE.com", True),
    (["http://EXAMPLE.com"], "http://example.com", True),
    (["http://example.com"], "http://sub.example.com", False),
    (["http://example.com"], "http://example.com.evil.test", False),
    (["http://example.com/"], "http://example.com", True),
    (["https://example.com"], "https://example.com:443", True),
    (["https://example.com:8443"], "https://example.com:8443", True),
    (["https://example.com:8443"], "https://example.com", False),
    (["wss://example.com"], "wss://example.com:443", True),
    (["example.com"], "http://example.com", True),
    (["example.com"], "https://example.com:8443", True),
    (["example.com"], "http://sub.example.com", False),
    (["EXAMPLE.COM"], "http://example.com", True),
    ([".example.com"], "http://example.com", True),
    ([".example.com"], "https://chat.example.com", True),
    ([".example.com"], "http://a.b.example.com:9000", True),
    ([".example.com"], "http://badexample.com", False),
    ([".example.com"], "http://example.com.evil.test", False),
    (["http://.example.com"], "http://chat.example.com", True),
    (["http://.example.com"], "http://chat.example.com:81", False),
    (["http://.example.com"], "https://chat.example.com", False),
    (["[::1]"], "http://[::1]:8000", True),
    (["localhost", "127.0.0.1"], "http://127.0.0.1:8000", True),
    (["localhost"], "http://localhost:3000", True),
    (["localhost"], "null", False),
    (["localhost"], "localhost", False),  # not an origin: no scheme, no host
    (["*.example.com"], "http://chat.example.com", False),  # not a pattern; "." is
    (["foo://example.com"], "foo://example.com", True),  # unknown scheme, no default port
    (["http://example.com", "https://other.test"], "https://other.test", True),
    ([], "http://example.com", False),
    # a scheme-less pattern with a port: Channels never matches these (see CHANNELS_DIFFERS)
    (["localhost:8000"], "http://localhost:8000", True),
    (["localhost:8000"], "http://localhost:8001", False),
    (["example.com:443"], "https://example.com", True),
]
CHANNELS_DIFFERS = {
    ("localhost:8000", "http://localhost:8000"),
    ("example.com:443", "https://example.com"),
}


@pytest.mark.parametrize(("patterns", "origin", "expected"), CASES)
async def test_origin_patterns(patterns: list[str], origin: str, expected: bool) -> None:
    assert await allowed(patterns, origin) is expected


def test_patterns_agree_with_channels_except_where_listed() -> None:
    """Channels' own OriginValidator, on the same table (Django imported, not configured)."""
    code = (
        "import json, sys\n"
        "from urllib.parse import urlparse\n"
        "from channels.security.websocket import OriginValidator\n"
        "out = []\n"
        "for patterns, origin in json.load(sys.stdin):\n"
        "    out.append(OriginValidator(None, patterns).valid_origin(urlparse(origin)))\n"
        "print(json.dumps(out))\n"
    )
    table = [[patterns, origin] for patterns, origin, _ in CASES]
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(table),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(result.stdout)
    differs = {
        (patterns[0], origin)
        for (patterns, origin, ours), channels in zip(CASES, theirs, strict=True)
        if ours != channels
    }
    assert differs == CHANNELS_DIFFERS


async def test_missing_origin_is_allowed_only_with_star() -> None:
    assert await allowed(["*"], None) is True
    assert await allowed(["http://example.com", "*"], None) is True
    assert await allowed(["http://example.com"], None) is False
    assert await allowed([".example.com"], None) is False
    assert await allowed([], None) is False


async def test_allow_missing_overrides_the_rule_for_missing_origins_only() -> None:
    assert await allowed(["http://example.com"], None, allow_missing=True) is True
    assert await allowed(["*"], None, allow_missing=False) is False
    assert await allowed(["http://example.com"], "http://evil.test", allow_missing=True) is False


async def test_several_origin_headers_match_only_star() -> None:
    two = ["http://example.com", "http://example.com"]
    assert await allowed(["http://example.com"], two) is False
    assert await allowed(["*"], two) is True


@pytest.mark.parametrize("origin", ["http://example.com:abc", "http://example.com:99999", ""])
async def test_unparsable_origins_are_refused_not_crashed(origin: str) -> None:
    assert await allowed(["example.com", "http://example.com"], origin) is False


def test_bad_patterns_fail_at_construction() -> None:
    with pytest.raises(ValueError, match=re.escape("'http://example.com:abc'")):
        OriginValidator(Inner(), ["http://example.com:abc"])
    with pytest.raises(ValueError, match="'http://'"):
        OriginValidator(Inner(), ["http://"])
    with pytest.raises(TypeError, match="list"):
        OriginValidator(Inner(), "http://example.com")


async def test_empty_patterns_match_nothing() -> None:
    # "".split(",") from an unset environment variable must not break start-up
    assert await allowed([""], "http://example.com") is False
    assert await allowed(["", "example.com"], "http://example.com") is True


async def test_websocket_refusal_is_a_close_before_accept_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = Inner()
    app = OriginValidator(inner, ["https://chat.example.com"])
    with caplog.at_level(logging.WARNING, logger="roomcast.consumers.security"):
        answer = await ws_answer(app, "https://evil.test")
    assert answer == {"type": "websocket.close"}
    assert inner.calls == 0
    assert "Origin 'https://evil.test' not allowed for WebSocket '/ws/'" in caplog.text


async def test_http_refusal_is_403() -> None:
    inner = Inner()
    app = OriginValidator(inner, ["https://chat.example.com"])
    for origin, status in [("https://evil.test", 403), ("https://chat.example.com", 200)]:
        scope = {"type": "http", "path": "/api/", "headers": headers_for(origin)}
        communicator = ApplicationCommunicator(app, scope)
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(1)
        body = await communicator.receive_output(1)
        await communicator.wait(1)
        assert start["status"] == status
        assert body["body"] == (b"403 Forbidden\n" if status == 403 else b"ok")
    assert inner.calls == 1


async def test_other_scope_types_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def no_receive() -> Message:
        raise AssertionError

    async def no_send(message: Message) -> None:
        raise AssertionError

    validator = OriginValidator(app, ["http://example.com"])
    await validator({"type": "lifespan"}, no_receive, no_send)
    await validator({"type": "channel", "channel": "x"}, no_receive, no_send)
    assert seen == ["lifespan", "channel"]


async def test_subclass_hook_valid_origin() -> None:
    class OnlyTest(OriginValidator):
        def valid_origin(self, parsed_origin: Any) -> bool:
            return parsed_origin is not None and parsed_origin.hostname == "test.test"

    assert await ws_answer(OnlyTest(Inner(), []), "http://test.test") == {
        "type": "websocket.accept"
    }
    validator = OriginValidator(Inner(), ["http://example.com"])
    assert validator.application is validator.inner
    assert validator.get_origin_port(urlparse("https://x.test")) == 443
    assert validator.get_origin_port(urlparse("gopher://x.test")) is None


async def test_websocket_denier() -> None:
    assert await ws_answer(WebsocketDenier.as_asgi(), "http://example.com") == {
        "type": "websocket.close"
    }


# -- AllowedHostsOriginValidator -------------------------------------------------------------


async def test_allowed_hosts_without_django_takes_the_hosts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    inner = Inner()
    app = AllowedHostsOriginValidator(inner, allowed_hosts=["chat.example.com", ".example.org"])
    assert (await ws_answer(app, "https://chat.example.com"))["type"] == "websocket.accept"
    assert (await ws_answer(app, "http://a.example.org:8000"))["type"] == "websocket.accept"
    assert (await ws_answer(app, "https://evil.test"))["type"] == "websocket.close"
    assert (await ws_answer(app, None))["type"] == "websocket.close"
    assert isinstance(app, OriginValidator)


def test_allowed_hosts_without_django_or_hosts_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    with pytest.raises(ValueError, match=r"not configured.*allowed_hosts="):
        AllowedHostsOriginValidator(Inner())


def _django_scenario() -> dict[str, Any]:
    """Run in a subprocess: AllowedHostsOriginValidator on configured Django settings."""
    import asyncio

    from django.conf import settings
    from django.test import override_settings

    settings.configure(DEBUG=False, ALLOWED_HOSTS=["chat.example.com", ".example.org"])

    async def check(app: Any, origins: list[str | None]) -> list[bool]:
        return [(await ws_answer(app, o))["type"] == "websocket.accept" for o in origins]

    origins: list[str | None] = [
        "https://chat.example.com",
        "http://a.example.org",
        "http://localhost:8000",
        "http://127.0.0.1:8000",
        "http://[::1]:8000",
        "https://evil.test",
        None,
    ]
    results: dict[str, Any] = {}
    results["allowed_hosts"] = asyncio.run(check(AllowedHostsOriginValidator(Inner()), origins))
    with override_settings(DEBUG=True, ALLOWED_HOSTS=[]):
        results["debug_empty"] = asyncio.run(check(AllowedHostsOriginValidator(Inner()), origins))
    with override_settings(DEBUG=False, ALLOWED_HOSTS=[]):
        results["empty"] = asyncio.run(check(AllowedHostsOriginValidator(Inner()), origins))
    with override_settings(ALLOWED_HOSTS=["*"]):
        results["star"] = asyncio.run(check(AllowedHostsOriginValidator(Inner()), origins))
    explicit = AllowedHostsOriginValidator(Inner(), allowed_hosts=["localhost"])
    results["explicit_wins"] = asyncio.run(check(explicit, origins))
    return results


def test_allowed_hosts_with_django_settings() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.consumers.test_security", "django"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    #               chat   org    localhost 127    ::1    evil   missing
    assert results == {
        "allowed_hosts": [True, True, False, False, False, False, False],
        "debug_empty": [False, False, True, True, True, False, False],
        "empty": [False, False, False, False, False, False, False],
        "star": [True, True, True, True, True, True, True],
        "explicit_wins": [False, False, True, False, False, False, False],
    }


def test_django_stays_unconfigured_in_this_process() -> None:
    django_conf = sys.modules.get("django.conf")
    assert django_conf is None or not django_conf.settings.configured


# -- through the gateway ---------------------------------------------------------------------


async def test_through_the_gateway_a_bad_origin_gets_403() -> None:
    inner = Inner()
    app = OriginValidator(inner, ["http://chat.example.com"])
    async with gateway_server(app) as served:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                served.url("/ws/"), origin=Origin("http://evil.test"), open_timeout=5
            ):
                pass
        assert refused.value.response.status_code == 403
        async with connect(
            served.url("/ws/"), origin=Origin("http://chat.example.com"), open_timeout=5
        ) as ws:
            assert ws.response is not None
            assert ws.response.status_code == 101
    assert inner.calls == 1


if __name__ == "__main__" and sys.argv[1:] == ["django"]:
    print(json.dumps(_django_scenario()))
