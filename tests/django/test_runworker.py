"""``python manage.py runworker CHANNEL...``: roomcast's worker, run by Channels' command.

Two real worker processes share one channel of a Redis layer (a redis-server of the test's
own); the messages are sent from the test process with the same layer class.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from pathlib import Path

import pytest
from roomcast.layers.redis import RedisChannelLayer

from tests.django.project import write_project
from tests.django.support import ManageProcess, manage, project_env
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(120)

LISTENING = r"Worker \d+ listening on 'thumbnails' -> chat\.workers\.ThumbnailConsumer"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "project")


def handled(log: Path) -> list[tuple[int, int]]:
    """(pid, message id) for each message a worker handled."""
    if not log.exists():
        return []
    pairs = []
    for line in log.read_text().splitlines():
        pid, number = line.split()
        pairs.append((int(pid), int(number)))
    return pairs


async def test_two_workers_share_a_redis_channel_each_message_once(
    project: Path, tmp_path: Path, own_redis_server: RedisServer
) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    log = tmp_path / "thumbnails.log"
    env = project_env(
        ROOMCAST_LAYER_URL=f"{own_redis_server.url}?prefix={prefix}", THUMBNAILS_LOG=str(log)
    )
    count = 40
    with (
        ManageProcess(project, "runworker", "thumbnails", env=env) as one,
        ManageProcess(project, "runworker", "thumbnails", env=env) as two,
    ):
        one.wait_for_stderr(LISTENING)
        two.wait_for_stderr(LISTENING)
        layer = RedisChannelLayer(hosts=[own_redis_server.url], prefix=prefix)
        try:
            for number in range(count):
                await layer.send("thumbnails", {"type": "thumbnails.make", "id": number})
        finally:
            await layer.close()
        deadline = time.monotonic() + 60
        while len(handled(log)) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # SIGTERM: each finishes what it holds and exits 0; nothing is handled twice after.
        for worker in (one, two):
            worker.signal(signal.SIGTERM)
        assert one.finish() == 0, one.stderr
        assert two.finish() == 0, two.stderr
        pairs = handled(log)
        assert sorted(number for _, number in pairs) == list(range(count))  # each exactly once
        assert {pid for pid, _ in pairs} == {one.proc.pid, two.proc.pid}  # both took a share
        for worker in (one, two):
            assert "Traceback" not in worker.stderr
            assert "in-memory" not in worker.stderr


def one_error(done_stderr: str) -> str:
    lines = done_stderr.strip().splitlines()
    assert len(lines) == 1, done_stderr
    assert lines[0].startswith("CommandError: "), done_stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["bad name"], 2, "'bad name'"),
        (["thumbnails!abc"], 2, "process-specific"),
        (
            ["thumbnails", "nosuch"],
            1,
            "the application does not route channel 'nosuch': its ChannelNameRouter routes "
            "'thumbnails'",
        ),
        (["--layer", "nosuch", "thumbnails"], 1, "'nosuch'"),
    ],
    ids=["invalid-name", "process-specific", "unrouted", "unknown-layer"],
)
def test_mistakes_are_one_line(project: Path, args: list[str], status: int, message: str) -> None:
    done = manage(project, "runworker", *args)
    assert done.returncode == status, done.stderr
    assert message in one_error(done.stderr)


def test_a_bad_asgi_application_is_one_line(project: Path) -> None:
    done = manage(project, "runworker", "--settings=mysite.settings_no_application", "thumbnails")
    assert done.returncode == 1
    assert one_error(done.stderr).startswith("CommandError: ASGI_APPLICATION is not set")


def test_on_the_in_memory_layer_it_warns_then_runs_until_sigterm(project: Path) -> None:
    with ManageProcess(project, "runworker", "thumbnails") as worker:
        worker.wait_for_stderr(LISTENING)
        assert "is the in-memory layer: this worker receives only messages sent inside" in (
            worker.stderr
        )
        worker.signal(signal.SIGINT)
        assert worker.finish() == 0
        assert "Traceback" not in worker.stderr
