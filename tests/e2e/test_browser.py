"""A real browser on the scaled chat (issue 6): two tabs on two gateways share a room.

And resuming (issue 13): a page whose socket drops gets what was said meanwhile, once each; a
page whose gateway is restarted mid-conversation (SIGTERM, close 1012/1001) loses no message,
which needs a layer whose history outlives the gateway process: Redis.

And a real chat (issue 18): two people in two browsers (two profiles) on two gateways choose
their names, see each other online and talk; a gateway is restarted mid-conversation and both
pages come back to the same room with everyone listed (that neither page misses a message is
asserted only once Redis keeps history, through the same switch); an invalid room is
explained and not retried; a name is asked once and kept. Screenshots at desktop and phone
widths go to ``tests/artifacts/chat-*.png``.

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
import re
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
from tests.history_support import REDIS_HISTORY_BUILT, skip_unless_history
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
    with chromium_contexts([profile], trust_any_certificate) as [context]:
        yield context


@contextlib.contextmanager
def chromium_contexts(
    profiles: list[Path], trust_any_certificate: bool = False
) -> Iterator[list[Any]]:
    """One Chromium per profile, all driven by one Playwright: separate browsers, as two
    people have (their own storage, their own cookies)."""
    chromium = require("chromium", CHROMIUM, "apt-get install chromium")
    sync_api = playwright_api()
    tls = ["--ignore-certificate-errors"] if trust_any_certificate else []
    with sync_api.sync_playwright() as playwright, contextlib.ExitStack() as stack:
        contexts = []
        for profile in profiles:
            context = playwright.chromium.launch_persistent_context(
                str(profile),
                executable_path=chromium,
                headless=True,
                args=[*CHROMIUM_FLAGS, *tls],
                ignore_https_errors=trust_any_certificate,
                viewport={"width": 720, "height": 560},
                timeout=30_000,
            )
            stack.callback(context.close)
            contexts.append(context)
        yield contexts


def console_error(errors: list[str], tab: str, message: Any) -> None:
    """Record the page's console errors but the favicon's 404 (the example serves none)."""
    if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
        errors.append(f"{tab}: {message.text} ({message.location.get('url')})")


def unexpected(errors: list[str]) -> list[str]:
    """``errors`` but the browser's own report of a reconnect attempt that found the restarted
    gateway not listening yet (expected while it restarts; the page simply retries)."""
    return [error for error in errors if "net::ERR_CONNECTION_REFUSED" not in error]


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
                expect(shown(tab, text)).to_have_count(1, timeout=WAIT_MS)

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
    """The page's chat messages that read exactly ``text``."""
    return tab.locator("#log li.msg .text").get_by_text(text, exact=True)


def messages_on(tab: Any) -> list[str]:
    """The chat messages the page shows, in order (its own system lines left out)."""
    texts: list[str] = tab.locator("#log li.msg .text").all_inner_texts()
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
            expect(tab.locator("#state")).to_contain_text("reconnecting in", timeout=WAIT_MS)
            away = [f"said while away #{n}" for n in range(10)]
            for text in away:
                say(other, text)
            for _ in range(1 + len(away)):  # all in the history once the talker hears them
                other.recv(timeout=WAIT_MS / 1000)
            tab.clock.run_for(11_000)  # past the longest backoff: the page reconnects now
            expect(tab.locator("#log")).to_contain_text(
                "reconnected — 10 missed messages", timeout=WAIT_MS
            )
            expect(tab.locator("#state")).to_have_text("connected", timeout=WAIT_MS)
            say(other, "live again")
            expect(shown(tab, "live again")).to_have_count(1, timeout=WAIT_MS)
        assert messages_on(tab) == ["before the drop", *away, "live again"]
        assert tab.locator("#log .system", has_text=f"joined {room}").count() == 1
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
                expect(tab.locator("#state")).to_contain_text("reconnecting", timeout=WAIT_MS)
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
    assert unexpected(errors) == []


# A real chat (issue 18) ------------------------------------------------------------------------

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def open_chat(
    browser: Any, port: int, room: str, name: str, errors: list[str], *, viewport: Any = DESKTOP
) -> Any:
    """A first visit to ``room`` (through the URL's #room), the name chosen as a person
    would: typed into the welcome box and Enter."""
    expect = playwright_api().expect
    tab = browser.new_page()
    tab.set_viewport_size(viewport)
    tab.on("pageerror", lambda exc: errors.append(f"{name}: {exc}"))
    tab.on("console", lambda msg: console_error(errors, name, msg))
    tab.goto(f"http://127.0.0.1:{port}/#{room}", timeout=WAIT_MS)
    expect(tab.locator("#welcome")).to_be_visible(timeout=WAIT_MS)
    expect(tab.locator("#log")).to_contain_text(f"joined {room}", timeout=WAIT_MS)
    tab.fill("#name", name)
    tab.press("#name", "Enter")
    expect(tab.locator("#welcome")).to_be_hidden(timeout=WAIT_MS)
    expect(tab.locator("#me")).to_have_text(name)
    expect(tab.locator("#log")).to_contain_text(f"you are now {name}", timeout=WAIT_MS)
    expect(tab.locator("#state")).to_have_text("connected", timeout=WAIT_MS)
    return tab


def online(tab: Any, names: list[str]) -> None:
    """The page lists exactly ``names`` as online (in its order: you first, then by name)."""
    expect = playwright_api().expect
    expect(tab.locator("#members .who")).to_have_text(names, timeout=WAIT_MS * 2)
    expect(tab.locator("#online")).to_have_text(str(len(names)))


def type_message(tab: Any, text: str) -> None:
    tab.fill("#message", text)
    tab.press("#message", "Enter")


def screenshots(tab: Any, name: str) -> None:
    """``tests/artifacts/chat-<name>-desktop.png`` and ``-phone.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        tab.set_viewport_size(viewport)
        tab.locator("#log li").last.scroll_into_view_if_needed()
        tab.screenshot(path=str(ARTIFACTS / f"chat-{name}-{width}.png"))


def test_two_people_on_two_gateways_names_presence_and_a_restart(
    own_redis_server: RedisServer, tmp_path: Path
) -> None:
    """Alice (a desktop browser) on gateway A, Bob (a phone-sized one) on gateway B, and
    Carol, a plain client on B who keeps talking while A restarts."""
    expect = playwright_api().expect
    room = f"chat-{secrets.token_hex(3)}"
    errors: list[str] = []
    environment = gateway_environment(own_redis_server.url)
    port_a = free_port()
    with (
        gateways(1, own_redis_server.url) as [(_, port_b)],
        contextlib.ExitStack() as stack,
        chromium_contexts([tmp_path / "alice", tmp_path / "bob"]) as [alice_browser, bob_browser],
    ):
        gateway_a = stack.enter_context(GatewayProcess(*gateway_arguments(port_a), env=environment))
        gateway_a.wait_listening()
        alice = open_chat(alice_browser, port_a, room, "Alice", errors)
        bob = open_chat(bob_browser, port_b, room, "Bob", errors, viewport=PHONE)
        online(alice, ["Alice", "Bob"])
        online(bob, ["Bob", "Alice"])
        expect(alice.locator("#members li", has_text="Alice")).to_contain_text("you")

        said: list[str] = []

        def talk(tab: Any, text: str) -> None:
            type_message(tab, text)
            said.append(text)
            for page in (alice, bob):
                expect(shown(page, text)).to_have_count(1, timeout=WAIT_MS)

        talk(alice, "Hi Bob! Are you on the other gateway?")
        talk(bob, "I am. Names, times and who is online, on both sides.")
        # Own messages are styled apart; the other's carry the sender's name and a time.
        assert alice.locator("#log li.msg").nth(0).get_attribute("class") == "msg mine"
        first_on_bob = bob.locator("#log li.msg").nth(0)
        assert "mine" not in (first_on_bob.get_attribute("class") or "")
        expect(first_on_bob.locator(".name")).to_have_text("Alice")
        expect(first_on_bob.locator("time")).to_have_text(re.compile(r"\d{1,2}:\d\d"))

        with talker(port_b, room) as carol:
            online(alice, ["Alice", "anonymous", "Bob"])
            stop = threading.Event()

            def conversation() -> None:
                n = 0
                while not stop.is_set() or n < 30:
                    said.append(f"Carol says #{n}")
                    say(carol, said[-1])
                    n += 1
                    time.sleep(0.05)

            talking = threading.Thread(target=conversation)
            talking.start()
            try:
                expect(shown(alice, "Carol says #3")).to_have_count(1, timeout=WAIT_MS)
                gateway_a.signal(signal.SIGTERM)  # Alice's gateway restarts (close 1012/1001)
                assert gateway_a.wait(15) == 0
                expect(alice.locator("#state")).to_contain_text("reconnecting", timeout=WAIT_MS)
                online(bob, ["Bob", "anonymous"])  # Bob sees Alice go
                gateway_a = stack.enter_context(
                    GatewayProcess(*gateway_arguments(port_a), env=environment)
                )
                gateway_a.wait_listening()
                expect(alice.locator("#state")).to_have_text("connected", timeout=WAIT_MS * 2)
            finally:
                stop.set()
                talking.join(30)
            for page in (alice, bob):
                expect(shown(page, said[-1])).to_have_count(1, timeout=WAIT_MS)
            online(bob, ["Bob", "Alice", "anonymous"])  # and come back
            online(alice, ["Alice", "anonymous", "Bob"])
        online(alice, ["Alice", "Bob"])  # Carol left
        talk(alice, "Back after the restart.")
        talk(bob, "Welcome back.")

        # Bob's gateway never stopped: his page has every message, once, in order.
        assert messages_on(bob) == said
        # Alice's page needs the history of the restarted gateway's rooms, kept in Redis.
        if REDIS_HISTORY_BUILT:
            assert messages_on(alice) == said
            assert "some messages may be missing" not in alice.locator("#log").inner_text()
        assert alice.locator("#log .system", has_text=f"joined {room}").count() == 1
        screenshots(alice, "alice")
        screenshots(bob, "bob")
    assert unexpected(errors) == []


def test_an_invalid_room_is_explained_and_not_retried(tmp_path: Path) -> None:
    expect = playwright_api().expect
    errors: list[str] = []
    port = free_port()
    with (
        GatewayProcess(
            "examples.chat.asgi:application", "-p", str(port), env={"ROOMCAST_LAYER_URL": ""}
        ) as gateway,
        chromium_context(tmp_path / "profile") as browser,
    ):
        gateway.wait_listening()
        tab = browser.new_page()
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.on("console", lambda msg: console_error(errors, "tab", msg))
        opened: list[str] = []
        tab.on("websocket", lambda ws: opened.append(ws.url))
        tab.clock.install()
        tab.goto(f"http://127.0.0.1:{port}/", timeout=WAIT_MS)
        expect(tab.locator("#state")).to_have_text("connected", timeout=WAIT_MS)
        tab.fill("#room", "no spaces please")
        tab.press("#room", "Enter")  # Enter in the room box joins
        expect(tab.locator("#state")).to_have_text(
            "refused: invalid room name 'no spaces please': use 1 to 50 letters, digits, "
            "'.', '_' or '-'",
            timeout=WAIT_MS,
        )
        expect(tab.locator("#log .system.bad")).to_contain_text("Choose another room")
        expect(tab.locator("#room")).to_have_attribute("aria-invalid", "true")
        tab.clock.run_for(120_000)  # two minutes of page time: no retry
        assert len(opened) == 2, opened  # the lobby, then the refused room, once
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(ARTIFACTS / "chat-refused.png"))
        tab.fill("#room", "fine")
        tab.click("#join")
        expect(tab.locator("#state")).to_have_text("connected", timeout=WAIT_MS)
        expect(tab.locator("#room")).not_to_have_attribute("aria-invalid", "true")
        refusals = [line for line in gateway.stderr.splitlines() if "refused a chat" in line]
        assert len(refusals) == 1, gateway.stderr
    assert errors == []


def test_a_name_is_asked_once_and_kept(tmp_path: Path) -> None:
    expect = playwright_api().expect
    errors: list[str] = []
    port = free_port()
    with (
        GatewayProcess(
            "examples.chat.asgi:application", "-p", str(port), env={"ROOMCAST_LAYER_URL": ""}
        ) as gateway,
        chromium_context(tmp_path / "profile") as browser,
    ):
        gateway.wait_listening()
        tab = open_chat(browser, port, "lobby", "Dana", errors)
        online(tab, ["Dana"])
        type_message(tab, "first words")
        expect(shown(tab, "first words")).to_have_count(1, timeout=WAIT_MS)
        tab.reload()
        expect(tab.locator("#state")).to_have_text("connected", timeout=WAIT_MS)
        expect(tab.locator("#welcome")).to_be_hidden()
        expect(tab.locator("#me")).to_have_text("Dana")
        online(tab, ["Dana"])
        expect(shown(tab, "first words")).to_have_count(1, timeout=WAIT_MS)  # recent history
        assert tab.locator("#log li.msg").first.get_attribute("class") == "msg mine"
    assert errors == []
