"""A real browser on the scaled chat (issue 6): two tabs on two gateways share a room.

Debian's headless Chromium (``/usr/bin/chromium``), driven by Playwright for Python through
``executable_path``: Playwright's own browser download is never used. The gateways run as the
deployment runs them (the image's command, compose's environment, a real redis-server); with
nginx installed a third tab comes through the load balancer, as a user of
``docker compose up`` would. Screenshots of the tabs go to ``tests/artifacts/`` (git-ignored),
which CI keeps. Skipped without Chromium or Playwright, except under CI, where ``make test``
installs both and their absence fails the test.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.e2e.deploy_support import ARTIFACTS, NginxProcess, find_tool, gateways, require
from tests.redis_server import RedisServer

CHROMIUM = find_tool("chromium", "/usr/bin/chromium")
NGINX = find_tool("nginx", "/usr/sbin/nginx")
# As the machine notes prescribe for a closed network: no sandbox (root), no GPU, no QUIC, and
# none of the background connections Chromium would try to make to Google's hosts.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 10_000


def playwright_api() -> Any:
    """Playwright's sync API (skip, or fail under CI, without it)."""
    try:
        from playwright import sync_api
    except ImportError:
        require("playwright", None, "pip install playwright: the dev extra has it")
        raise
    return sync_api


@contextlib.contextmanager
def chromium_context(profile: Path, trust_any_certificate: bool = False) -> Iterator[Any]:
    """A fresh Chromium profile (``--user-data-dir``) driven by Playwright; with
    ``trust_any_certificate``, it accepts a test's self-signed certificate."""
    chromium = require("chromium", CHROMIUM, "apt-get install chromium")
    sync_api = playwright_api()
    tls = ["--ignore-certificate-errors"] if trust_any_certificate else []
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium,
            headless=True,
            args=[*CHROMIUM_FLAGS, *tls],
            ignore_https_errors=trust_any_certificate,
            viewport={"width": 720, "height": 560},
            timeout=30_000,
        )
        try:
            yield context
        finally:
            context.close()


def console_error(errors: list[str], tab: str, message: Any) -> None:
    """Record the page's console errors but the favicon's 404 (the example serves none)."""
    if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
        errors.append(f"{tab}: {message.text} ({message.location.get('url')})")


def test_two_tabs_on_two_gateways_share_a_room(
    own_redis_server: RedisServer, tmp_path: Path
) -> None:
    expect = playwright_api().expect
    room = f"browser-{secrets.token_hex(3)}"
    errors: list[str] = []
    with (
        gateways(2, own_redis_server.url) as [(_, port_a), (_, port_b)],
        contextlib.ExitStack() as stack,
        chromium_context(tmp_path / "profile") as browser,
    ):
        entries = {"a": port_a, "b": port_b}
        if NGINX:
            nginx = stack.enter_context(NginxProcess(NGINX, [port_a, port_b]))
            entries["lb"] = nginx.port
        tabs = {}
        for name, port in entries.items():
            tab = browser.new_page()
            tab.on("pageerror", lambda exc, name=name: errors.append(f"{name}: {exc}"))
            tab.on("console", lambda msg, name=name: console_error(errors, name, msg))
            tab.goto(f"http://127.0.0.1:{port}/", timeout=WAIT_MS)
            # The page joins "lobby" by itself; move it to the test's room, as a person would.
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

        say("a", "hello from tab A on the first gateway")
        say("b", "hello back from tab B on the second gateway")
        if "lb" in tabs:
            say("lb", "and hello from a tab behind nginx")

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for name, tab in tabs.items():
            tab.screenshot(path=str(ARTIFACTS / f"browser-tab-{name}.png"))
            assert tab.locator("#message").input_value() == "", "the message box was cleared"
    assert errors == []
