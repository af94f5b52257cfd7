"""The lifespan protocol driven directly: start-up, shutdown, state, auto/on/off, failures."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Literal

import pytest
from roomcast.gateway.config import Config, Message, Receive, Scope, Send
from roomcast.gateway.lifespan import Lifespan, LifespanFailure
from roomcast.gateway.state import ServerState

from tests.gateway import apps

Mode = Literal["auto", "on", "off"]


def make(app: object, mode: Mode = "auto") -> tuple[Lifespan, ServerState]:
    state = ServerState()
    config = Config(app="unused:app", lifespan=mode)
    return Lifespan(app, config, state), state  # type: ignore[arg-type]


class Recorder:
    """An app that records its scope and every message, answering as told."""

    def __init__(self, startup: str = "complete", shutdown: str = "complete") -> None:
        self.startup = startup
        self.shutdown = shutdown
        self.scopes: list[Scope] = []
        self.received: list[str] = []
        self.returned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        message: Message = await receive()
        self.received.append(message["type"])
        scope["state"]["db"] = "connected"
        reply: Message = {"type": f"lifespan.startup.{self.startup}"}
        if self.startup == "failed":
            reply["message"] = "no database\nat all"
        await send(reply)
        message = await receive()
        self.received.append(message["type"])
        reply = {"type": f"lifespan.shutdown.{self.shutdown}"}
        if self.shutdown == "failed":
            reply["message"] = "could not flush"
        await send(reply)
        self.returned = True


async def test_startup_and_shutdown_share_state_with_requests() -> None:
    app = Recorder()
    lifespan, state = make(app)
    await lifespan.startup()
    assert lifespan.running
    (scope,) = app.scopes
    assert scope["type"] == "lifespan"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.0"}
    assert scope["state"] is state.app_state
    assert state.app_state == {"db": "connected"}
    await lifespan.shutdown()
    assert app.received == ["lifespan.startup", "lifespan.shutdown"]
    assert app.returned
    assert not lifespan.running


@pytest.mark.parametrize("mode", ["auto", "on"])
async def test_startup_failed_raises_with_the_apps_message(mode: Mode) -> None:
    lifespan, _ = make(Recorder(startup="failed"), mode)
    with pytest.raises(LifespanFailure, match=r"^no database at all$"):
        await lifespan.startup()
    await lifespan.shutdown()  # nothing to do: it never started


async def test_shutdown_failed_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    lifespan, _ = make(Recorder(shutdown="failed"))
    await lifespan.startup()
    with caplog.at_level(logging.INFO, logger="roomcast.gateway.error"):
        await lifespan.shutdown()
    assert "Application shutdown failed: could not flush" in caplog.text


async def test_auto_continues_when_the_app_refuses_lifespan(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lifespan, _ = make(apps.no_lifespan, "auto")
    with caplog.at_level(logging.INFO, logger="roomcast.gateway.error"):
        await lifespan.startup()
    assert not lifespan.running
    assert "ASGI 'lifespan' protocol appears unsupported" in caplog.text
    assert "Traceback" not in caplog.text  # no alarm for a normal app
    await lifespan.shutdown()


async def test_auto_continues_when_the_app_returns_at_once() -> None:
    async def returns(scope: Scope, receive: Receive, send: Send) -> None:
        return

    lifespan, _ = make(returns, "auto")
    await lifespan.startup()
    assert not lifespan.running


async def test_on_fails_when_the_app_refuses_lifespan(caplog: pytest.LogCaptureFixture) -> None:
    lifespan, _ = make(apps.no_lifespan, "on")
    with pytest.raises(LifespanFailure, match="raised ValueError: only HTTP"):
        await lifespan.startup()
    assert "Exception in application startup" in caplog.text  # with the app's traceback


async def test_on_fails_when_the_app_returns_without_answering() -> None:
    async def returns(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    lifespan, _ = make(returns, "on")
    with pytest.raises(LifespanFailure, match=r"returned without answering lifespan\.startup"):
        await lifespan.startup()


async def test_off_never_calls_the_app() -> None:
    app = Recorder()
    lifespan, _ = make(app, "off")
    await lifespan.startup()
    await lifespan.shutdown()
    assert app.scopes == []


async def test_a_message_out_of_order_is_refused_to_the_app() -> None:
    async def confused(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    lifespan, _ = make(confused, "on")
    with pytest.raises(LifespanFailure, match=r"unexpected ASGI message 'lifespan\.shutdown"):
        await lifespan.startup()


async def test_an_exception_during_shutdown_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def breaks_at_shutdown(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        raise RuntimeError("flush failed")

    lifespan, _ = make(breaks_at_shutdown)
    await lifespan.startup()
    await lifespan.shutdown()
    assert "Exception in application shutdown" in caplog.text
    assert "RuntimeError: flush failed" in caplog.text


async def test_a_startup_that_hangs_can_be_cancelled() -> None:
    async def hangs(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await asyncio.Event().wait()

    lifespan, _ = make(hangs)
    startup = asyncio.create_task(lifespan.startup())
    done, _ = await asyncio.wait([startup], timeout=0.1)
    assert not done
    startup.cancel()
    await lifespan.cancel()
    assert startup.cancelled() or startup.done()


async def test_the_test_apps_lifespan_marks_both_phases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "marker"
    monkeypatch.setenv(apps.MARKER_ENV, str(marker))
    lifespan, state = make(apps.state)
    await lifespan.startup()
    assert state.app_state["greeting"] == "hello from startup"
    await lifespan.shutdown()
    lines = marker.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["startup", "shutdown"]
