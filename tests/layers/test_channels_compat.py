"""A Django Channels project can have ``roomcast.layers.redis.RedisChannelLayer`` as ``BACKEND``.

The project is ``channels_app.py`` beside this file: ``settings.configure(CHANNEL_LAYERS=...)``,
``django.setup()``, Channels' own ``AsyncWebsocketConsumer`` and (sync) ``JsonWebsocketConsumer``
driven by Channels' ``WebsocketCommunicator``, and a second OS process that reaches them with
``async_to_sync(get_channel_layer().group_send)`` as a Django view would. It runs in interpreters
of its own, so Django is never configured in this process (``test_settings.py`` relies on
that); it prints JSON lines, which the tests below assert.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from tests.redis_server import RedisServer

# Looked up, not imported: this process keeps Django out of sys.modules.
pytestmark = pytest.mark.skipif(
    find_spec("django") is None or find_spec("channels") is None,
    reason="needs django and channels (pip install 'roomcast[django]')",
)

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).with_name("channels_app.py")
# Settings sources that would take precedence over, or leak into, the app's own configure().
ENV_VARS = ("DJANGO_SETTINGS_MODULE", "ROOMCAST_SETTINGS", "ROOMCAST_LAYER_URL")
RUN_TIMEOUT = 90  # the app bounds each step itself; this only stops a wedged interpreter


class AppRun:
    """One ``channels_app.py serve`` run: its JSON lines by ``check``, and its output."""

    def __init__(self, proc: subprocess.CompletedProcess[str], prefix: str) -> None:
        self.proc = proc
        self.prefix = prefix
        self.checks: dict[str, dict[str, Any]] = {}
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                self.checks[record.pop("check")] = record

    def __getitem__(self, check: str) -> dict[str, Any]:
        if check not in self.checks:
            pytest.fail(
                f"channels_app.py never reported {check!r} (exit {self.proc.returncode})\n"
                f"--- error ---\n{self.checks.get('error', {}).get('traceback', '')}\n"
                f"--- stdout ---\n{self.proc.stdout}\n--- stderr ---\n{self.proc.stderr}"
            )
        return self.checks[check]


@pytest.fixture(scope="module")
def app(redis_server: RedisServer) -> AppRun:
    """Run the whole Channels scenario once for the module, against the session's Redis."""
    prefix = f"t{secrets.token_hex(4)}"
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(APP), "serve", redis_server.url, prefix],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    return AppRun(proc, prefix)


def test_scenario_completes(app: AppRun) -> None:
    assert "error" not in app.checks, app.checks["error"]["traceback"]
    assert app["done"] == {}
    assert app.proc.returncode == 0, app.proc.stderr


def test_get_channel_layer_returns_roomcast_layer(app: AppRun) -> None:
    layer = app["layer"]
    assert layer["class"] == "roomcast.layers.redis.layer.RedisChannelLayer"
    assert layer["is_roomcast"]
    assert layer["same_instance"]  # Channels builds one instance per alias and keeps it
    assert layer["prefix"] == app.prefix  # CONFIG reached the constructor
    assert "groups" in layer["extensions"]


def test_consumers_connect_and_join_the_group(app: AppRun) -> None:
    assert app["connected"] == {"a": True, "b": True, "sync": True}
    assert app["members_after_connect"]["count"] == 3


def test_async_consumers_in_one_process_hear_each_other(app: AppRun) -> None:
    heard = app["same_process"]["heard"]
    for text in ("hello from a", "hello from b"):
        assert heard[text]["a"] == text
        assert heard[text]["b"] == text
    assert app["same_process"]["quiet"] == {"a": True, "b": True, "sync": True}


def test_sync_consumer_works_through_async_to_sync(app: AppRun) -> None:
    heard = app["same_process"]["heard"]
    # It hears the async consumers' group_send ...
    assert heard["hello from a"]["sync"] == {"text": "hello from a", "via": "sync"}
    assert heard["hello from b"]["sync"] == {"text": "hello from b", "via": "sync"}
    # ... and its own async_to_sync(group_send) reaches everyone, itself included.
    assert heard["hello from sync"] == {
        "a": "hello from sync",
        "b": "hello from sync",
        "sync": {"text": "hello from sync", "via": "sync"},
    }


def test_another_process_reaches_the_consumers(app: AppRun) -> None:
    sent = app["sender.sent"]
    layer = app["layer"]
    assert sent["is_roomcast"]
    assert sent["pid"] != layer["pid"]
    assert sent["process_id"] != layer["process_id"]
    got = app["from_other_process"]
    group_text = f"hello from process {sent['pid']}"
    assert got["a"] == sorted([group_text, "direct: just for a"])
    assert got["b"] == group_text
    assert got["sync"] == {"text": group_text, "via": "sync"}
    assert got["quiet"] == {"a": True, "b": True, "sync": True}  # once each, direct for a only


def test_consumers_reach_a_member_in_another_process(app: AppRun) -> None:
    out = app["to_other_process"]
    assert out["there"] == {"type": "chat.message", "text": "hello, other process"}
    assert out["here"] == {
        "a": "hello, other process",
        "b": "hello, other process",
        "sync": {"text": "hello, other process", "via": "sync"},
    }
    assert app["sender_exit"] == {"code": 0, "stderr": ""}


def test_disconnect_leaves_the_group(app: AppRun) -> None:
    after = app["after_disconnect"]
    assert not after["a_still_member"]
    assert after["members"] == 2
    assert after["b"] == "after a left"
    assert after["sync"] == {"text": "after a left", "via": "sync"}
    assert app["members_after_all_left"]["count"] == 0


def test_django_stays_unconfigured_in_this_process(app: AppRun) -> None:
    django_conf = sys.modules.get("django.conf")
    assert django_conf is None or not django_conf.settings.configured
