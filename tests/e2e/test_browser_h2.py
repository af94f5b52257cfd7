"""A real browser on the chat over HTTPS and HTTP/2: the page by ALPN h2, the WebSocket by RFC 8441.

Debian's headless Chromium, driven by Playwright as in ``test_browser.py`` (same flags, same
skip-or-fail policy), loads the chat page from one gateway serving HTTPS with a throwaway
self-signed certificate. Two tabs join a room and talk. The test proves from both ends that it
all rode HTTP/2:

* the browser's navigation timing reports ``nextHopProtocol == "h2"`` for the page;
* the server saw every WebSocket as an ``http_version == "2"`` scope, that is an extended
  CONNECT stream (the gateway's HTTP/1.1 Upgrade path gives ``"1.1"``), and on the very TCP
  connection that carried the page (the client address and port of the scopes match).

The gateway's access log has no WebSocket lines, so the app is the chat wrapped in a recorder of
its scopes (``tests/e2e/h2_chat_app.py``). Chromium needs no feature flag for this: it sends a
WebSocket over an HTTP/2 connection it already has to the origin when that connection's
SETTINGS carry ENABLE_CONNECT_PROTOCOL=1 (on by default since Chrome 91). Screenshots of the
tabs go to ``tests/artifacts/``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.e2e.deploy_support import ARTIFACTS
from tests.e2e.h2_chat_app import SCOPE_LOG_ENV
from tests.e2e.test_browser import WAIT_MS, chromium_context, console_error, playwright_api
from tests.gateway.apps import GatewayProcess, free_port
from tests.tls_support import self_signed_certificate

APP = "tests.e2e.h2_chat_app:application"


@contextlib.contextmanager
def https_gateway(directory: Path, scope_log: Path) -> Iterator[tuple[GatewayProcess, int]]:
    """One gateway serving the recorded chat over HTTPS (HTTP/2 by ALPN) on a free port."""
    certfile, keyfile = self_signed_certificate(directory)
    port = free_port()
    arguments = ["-b", "127.0.0.1", "-p", str(port), "--access-log", "-"]
    arguments += ["--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile), APP]
    # The chat's default layer is the in-memory one: both tabs are on this one process.
    environment = {SCOPE_LOG_ENV: str(scope_log), "ROOMCAST_LAYER_URL": ""}
    with GatewayProcess(*arguments, env=environment) as process:
        process.wait_listening()
        yield process, port


def recorded_scopes(scope_log: Path) -> list[dict[str, Any]]:
    if not scope_log.exists():
        return []
    return [json.loads(line) for line in scope_log.read_text().splitlines() if line]


def test_two_tabs_chat_over_http2(tmp_path: Path) -> None:
    expect = playwright_api().expect
    room = f"h2-{secrets.token_hex(3)}"
    scope_log = tmp_path / "scopes.jsonl"
    errors: list[str] = []
    with (
        https_gateway(tmp_path, scope_log) as (gateway, port),
        chromium_context(tmp_path / "profile", trust_any_certificate=True) as browser,
    ):
        tabs = {}
        for name in ("a", "b"):
            tab = browser.new_page()
            tab.on("pageerror", lambda exc, name=name: errors.append(f"{name}: {exc}"))
            tab.on("console", lambda msg, name=name: console_error(errors, name, msg))
            response = tab.goto(f"https://127.0.0.1:{port}/", timeout=WAIT_MS)
            assert response is not None
            assert response.status == 200
            navigation = "performance.getEntriesByType('navigation')[0].nextHopProtocol"
            assert tab.evaluate(navigation) == "h2", f"tab {name}: the page came without h2"
            expect(tab.locator("#state")).to_have_text("connected", timeout=WAIT_MS)
            tab.fill("#room", room)
            tab.click("#join")
            expect(tab.locator("#log")).to_contain_text(f"joined {room}", timeout=WAIT_MS)
            expect(tab.locator("#state")).to_have_text("connected", timeout=WAIT_MS)
            tabs[name] = tab

        def say(name: str, text: str) -> None:
            tabs[name].fill("#message", text)
            tabs[name].press("#message", "Enter")
            for tab in tabs.values():  # every tab, the speaker's included, shows it
                expect(tab.locator("#log li", has_text=text)).to_have_count(1, timeout=WAIT_MS)

        say("a", "hello over HTTP/2 from tab A")
        say("b", "and back over HTTP/2 from tab B")

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for name, tab in tabs.items():
            tab.screenshot(path=str(ARTIFACTS / f"browser-h2-tab-{name}.png"))
            assert tab.locator("#message").input_value() == "", "the message box was cleared"
        access_log = gateway.stdout
        scopes = recorded_scopes(scope_log)

    assert errors == []
    # The server's side of the page: HTTP/2 in the access log and in the scopes.
    assert access_log.count('"GET / HTTP/2" 200') == 2, access_log
    pages = [s for s in scopes if s["type"] == "http" and s["path"] == "/"]
    assert len(pages) == 2, scopes
    assert all(s["http_version"] == "2" and s["scheme"] == "https" for s in pages), scopes
    # Each tab's WebSocket to the lobby, then to the room: every one an RFC 8441 stream.
    sockets = [s for s in scopes if s["type"] == "websocket"]
    assert [s["path"] for s in sockets].count(f"/ws/chat/{room}/") == 2, scopes
    assert all(s["http_version"] == "2" and s["scheme"] == "wss" for s in sockets), scopes
    # ... multiplexed onto a connection that also carried the page, not one of their own.
    page_connections = {tuple(s["client"]) for s in pages}
    assert {tuple(s["client"]) for s in sockets} <= page_connections, scopes
