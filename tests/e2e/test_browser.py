"""A real browser on the scaled chat (issue 6): two tabs on two gateways share a room.

And resuming (issue 13): a page whose socket drops gets what was said meanwhile, once each; a
page whose gateway is restarted mid-conversation (SIGTERM, close 1012/1001) loses no message,
which needs a layer whose history outlives the gateway process: Redis.

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
import json
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.e2e.deploy_support import (
    ARTIFACTS,
    NginxProcess,
    find_tool,
    gateway_arguments,
    gateway_environment,
    gateways,
    require,
)
from tests.gateway.apps import GatewayProcess, free_port
from tests.history_support import skip_unless_history
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


# Resuming (issue 13) ---------------------------------------------------------------------------


def open_tab(
    browser: Any, port: int, room: str, errors: list[str], name: str, *, own_clock: bool = False
) -> Any:
    """A tab on the chat at ``port``, moved to ``room`` and connected. With ``own_clock`` the
    page's timers run only when the test says (Playwright's clock): its reconnect waits."""
    expect = playwright_api().expect
    tab = browser.new_page()
    tab.on("pageerror", lambda exc: errors.append(f"{name}: {exc}"))
    tab.on("console", lambda msg: console_error(errors, name, msg))
    if own_clock:
        tab.clock.install()
    tab.goto(f"http://127.0.0.1:{port}/", timeout=WAIT_MS)
    expect(tab.locator("#state")).to_have_text("connected", timeout=WAIT_MS)
    tab.fill("#room", room)
    tab.click("#join")
    expect(tab.locator("#log")).to_contain_text(f"joined {room}", timeout=WAIT_MS)
    expect(tab.locator("#state")).to_have_text("connected", timeout=WAIT_MS)
    return tab


def talker(port: int, room: str) -> ClientConnection:
    """A plain WebSocket client in ``room``: someone else in the conversation."""
    return connect(f"ws://127.0.0.1:{port}/ws/chat/{room}/", origin=f"http://127.0.0.1:{port}")


def say(client: ClientConnection, text: str) -> None:
    client.send(json.dumps({"message": text}))


def shown(tab: Any, text: str) -> Any:
    """The page's log lines that read exactly ``text``."""
    return tab.locator("#log li").get_by_text(text, exact=True)


def messages_on(tab: Any) -> list[str]:
    """The chat messages the page shows, in order (its own system lines left out)."""
    texts: list[str] = tab.locator("#log li:not(.system)").all_inner_texts()
    return texts


def test_the_page_resumes_after_its_socket_drops(tmp_path: Path) -> None:
    """In-memory layer, one gateway: the page's socket is dropped, the room goes on, the page
    reconnects with its last position and shows every message once, in order."""
    expect = playwright_api().expect
    room = f"resume-{secrets.token_hex(3)}"
    errors: list[str] = []
    port = free_port()
    app = "examples.chat.asgi:application"
    with (
        GatewayProcess(app, "-p", str(port), env={"ROOMCAST_LAYER_URL": ""}) as gateway,
        chromium_context(tmp_path / "profile") as browser,
    ):
        gateway.wait_listening()
        tab = open_tab(browser, port, room, errors, "tab", own_clock=True)
        with talker(port, room) as other:
            say(other, "before the drop")
            expect(shown(tab, "before the drop")).to_have_count(1, timeout=WAIT_MS)
            tab.evaluate("socket.close()")  # the page schedules its reconnect
            expect(tab.locator("#state")).to_have_text("disconnected", timeout=WAIT_MS)
            away = [f"said while away #{n}" for n in range(10)]
            for text in away:
                say(other, text)
            tab.clock.run_for(11_000)  # past the longest backoff: the page reconnects now
            expect(tab.locator("#log")).to_contain_text("10 missed messages", timeout=WAIT_MS)
            expect(tab.locator("#state")).to_have_text("connected", timeout=WAIT_MS)
            say(other, "live again")
            expect(shown(tab, "live again")).to_have_count(1, timeout=WAIT_MS)
        assert messages_on(tab) == ["before the drop", *away, "live again"]
        assert "some messages may be missing" not in tab.locator("#log").inner_text()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(ARTIFACTS / "browser-resume.png"))
    assert errors == []


def test_a_gateway_restart_mid_conversation_loses_nothing_on_the_page(
    own_redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis layer, two gateways: the page is on gateway A, someone on gateway B keeps talking
    while A is restarted (SIGTERM, then a new process on the same port). Afterwards the page
    shows every message once, in order, and never says that some may be missing."""
    skip_unless_history("redis")
    expect = playwright_api().expect
    room = f"restart-{secrets.token_hex(3)}"
    errors: list[str] = []
    # As compose runs them, with the rooms' history on the Redis layer (see that module).
    environment = {
        **gateway_environment(own_redis_server.url),
        "ROOMCAST_SETTINGS": "examples.chat.settings",
    }
    port_a, port_b = free_port(), free_port()
    said: list[str] = []
    with (
        contextlib.ExitStack() as stack,
        chromium_context(tmp_path / "profile") as browser,
    ):
        gateway_b = stack.enter_context(GatewayProcess(*gateway_arguments(port_b), env=environment))
        gateway_a = stack.enter_context(GatewayProcess(*gateway_arguments(port_a), env=environment))
        gateway_b.wait_listening()
        gateway_a.wait_listening()
        tab = open_tab(browser, port_a, room, errors, "tab")
        with talker(port_b, room) as other:
            stop = threading.Event()

            def conversation() -> None:
                n = 0
                while not stop.is_set() or n < 40:
                    said.append(f"message #{n}")
                    say(other, said[-1])
                    n += 1
                    time.sleep(0.05)

            talking = threading.Thread(target=conversation)
            talking.start()
            try:
                expect(shown(tab, "message #5")).to_have_count(1, timeout=WAIT_MS)
                gateway_a.signal(signal.SIGTERM)  # closes the page's socket with 1012/1001
                assert gateway_a.wait(15) == 0
                expect(tab.locator("#state")).to_have_text("disconnected", timeout=WAIT_MS)
                gateway_a = stack.enter_context(
                    GatewayProcess(*gateway_arguments(port_a), env=environment)
                )
                gateway_a.wait_listening()
                expect(tab.locator("#state")).to_have_text("connected", timeout=WAIT_MS * 2)
            finally:
                stop.set()
                talking.join(30)
            expect(shown(tab, said[-1])).to_have_count(1, timeout=WAIT_MS)
        assert messages_on(tab) == said
        assert "some messages may be missing" not in tab.locator("#log").inner_text()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(ARTIFACTS / "browser-restart.png"))
    # Chromium logs each reconnect attempt that finds gateway A's port closed (between the old
    # process's exit and the new one's listen): expected here, and nothing else is.
    refused = f"WebSocket connection to 'ws://127.0.0.1:{port_a}/ws/chat/{room}/"
    assert [e for e in errors if not (refused in e and "ERR_CONNECTION_REFUSED" in e)] == []
