"""The worker (consumers/worker.py): named channels consumed through ChannelNameRouter.

In process on the in-memory layer (instances, errors, graceful stop); across processes with
``python -m roomcast.consumers.worker`` and a real redis-server (replies, SIGTERM, two workers
sharing
one channel); and the command's one-line errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import roomcast.consumers.worker
from click.testing import CliRunner
from roomcast.consumers import AsyncConsumer, ChannelNameRouter, ProtocolTypeRouter
from roomcast.consumers.worker import Worker, WorkerConfigError, main
from roomcast.layers import InMemoryChannelLayer, InvalidChannelName
from roomcast.layers.redis import RedisChannelLayer
from roomcast.layers.settings import channel_layers

from examples.thumbnails.app import application as thumbnails_app
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
WAIT = 5.0
THUMBNAILS = "examples.thumbnails.app:application"


@pytest.fixture
def layer() -> Iterator[InMemoryChannelLayer]:
    """A fresh in-memory layer as ``"default"`` (the consumers' layer too); reset afterwards."""
    layer = InMemoryChannelLayer()
    channel_layers.set("default", layer)
    yield layer
    channel_layers.reset()


class Jobs(AsyncConsumer):
    """Replies to ``job.run`` with what it saw; ``fail`` raises, ``seconds`` takes time."""

    async def job_run(self, event: dict[str, Any]) -> None:
        if event.get("fail"):
            raise RuntimeError(f"job {event['n']} failed")
        await asyncio.sleep(event.get("seconds", 0))
        assert self.channel_layer is not None
        await self.channel_layer.send(
            event["reply_channel"],
            {
                "type": "job.done",
                "n": event["n"],
                "instance": id(self),
                "scope": dict(self.scope),
            },
        )


jobs_app = ProtocolTypeRouter(
    {"channel": ChannelNameRouter({"jobs": Jobs.as_asgi(), "mail": Jobs.as_asgi()})}
)


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    """The worker running in a task; stopped (gracefully) and awaited at exit."""
    task = asyncio.create_task(worker.arun())
    try:
        yield task
    finally:
        worker.stop()
        await asyncio.wait_for(task, WAIT)


async def job(layer: InMemoryChannelLayer, channel: str, reply: str, n: int, **extra: Any) -> None:
    await layer.send(channel, {"type": "job.run", "n": n, "reply_channel": reply, **extra})


async def reply_from(layer: InMemoryChannelLayer, reply: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(reply), WAIT)


# In process, on the in-memory layer -------------------------------------------------------


async def test_the_thumbnail_consumer_replies_through_the_layer(
    layer: InMemoryChannelLayer,
) -> None:
    worker = Worker(thumbnails_app, ["thumbnails"], layer)
    reply = await layer.new_channel()
    async with running(worker):
        for name in ("a/cat.jpg", "dog.png"):
            message = {"type": "thumbnails.make", "image": name, "size": 64}
            await layer.send("thumbnails", {**message, "reply_channel": reply})
        done = [await reply_from(layer, reply) for _ in range(2)]
    assert [d["thumbnail"] for d in done] == ["a/cat.64x64.jpg", "dog.64x64.png"]
    assert {d["type"] for d in done} == {"thumbnail.done"}
    assert {d["worker"] for d in done} == {os.getpid()}
    assert worker.handled == 2


async def test_one_instance_per_channel_with_a_channel_scope(layer: InMemoryChannelLayer) -> None:
    worker = Worker(jobs_app, ["jobs", "mail"], layer)
    reply = await layer.new_channel()
    async with running(worker):
        for n in range(3):
            await job(layer, "jobs", reply, n)
            await job(layer, "mail", reply, 10 + n)
        done = [await reply_from(layer, reply) for _ in range(6)]
    by_channel: dict[str, list[dict[str, Any]]] = {"jobs": [], "mail": []}
    for d in done:
        by_channel[d["scope"]["channel"]].append(d)
    assert [d["n"] for d in by_channel["jobs"]] == [0, 1, 2]  # in order, one at a time
    assert [d["n"] for d in by_channel["mail"]] == [10, 11, 12]
    assert by_channel["jobs"][0]["scope"] == {"type": "channel", "channel": "jobs"}
    jobs_instances = {d["instance"] for d in by_channel["jobs"]}
    mail_instances = {d["instance"] for d in by_channel["mail"]}
    assert len(jobs_instances) == len(mail_instances) == 1
    assert jobs_instances != mail_instances


async def test_an_exception_is_logged_and_the_next_message_is_handled(
    layer: InMemoryChannelLayer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="roomcast.consumers")
    worker = Worker(jobs_app, ["jobs"], layer)
    reply = await layer.new_channel()
    async with running(worker):
        await job(layer, "jobs", reply, 1)
        await job(layer, "jobs", reply, 2, fail=True)
        await job(layer, "jobs", reply, 3)
        first, third = await reply_from(layer, reply), await reply_from(layer, reply)
    assert (first["n"], third["n"]) == (1, 3)
    assert first["instance"] != third["instance"]  # a new instance after the failure
    errors = [
        r for r in caplog.records if r.name.startswith("roomcast.consumers") and r.levelno >= 40
    ]
    assert [r.name for r in errors] == [
        "roomcast.consumers.worker"
    ]  # once, not by the consumer too
    line = errors[0].getMessage()
    assert "tests.consumers.test_worker.Jobs" in line
    assert "channel 'jobs'" in line
    assert "job 2 failed" in line
    assert errors[0].exc_info is not None  # with the traceback


async def test_stop_finishes_the_message_in_hand_and_leaves_the_rest(
    layer: InMemoryChannelLayer,
) -> None:
    worker = Worker(jobs_app, ["jobs"], layer)
    reply = await layer.new_channel()
    task = asyncio.create_task(worker.arun())
    await job(layer, "jobs", reply, 1, seconds=0.3)
    await job(layer, "jobs", reply, 2)
    while worker.handled < 1:
        await asyncio.sleep(0.01)
    worker.stop()
    await asyncio.wait_for(task, WAIT)
    assert (await reply_from(layer, reply))["n"] == 1  # finished although stop came first
    # The worker took only what it could handle: the second job is still in the channel.
    assert worker.handled == 1
    assert (await asyncio.wait_for(layer.receive("jobs"), WAIT))["n"] == 2


async def test_a_message_in_hand_is_cut_after_the_graceful_timeout(
    layer: InMemoryChannelLayer, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(jobs_app, ["jobs"], layer, graceful_timeout=0.1)
    reply = await layer.new_channel()
    task = asyncio.create_task(worker.arun())
    await job(layer, "jobs", reply, 1, seconds=30)
    while worker.handled < 1:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    worker.stop()
    await asyncio.wait_for(task, WAIT)
    assert time.monotonic() - started < 2
    assert "Cancelling the messages still in hand on jobs" in caplog.text


async def test_a_second_stop_with_force_cuts_the_wait(layer: InMemoryChannelLayer) -> None:
    worker = Worker(jobs_app, ["jobs"], layer)  # graceful_timeout: the default 30 s
    reply = await layer.new_channel()
    task = asyncio.create_task(worker.arun())
    await job(layer, "jobs", reply, 1, seconds=30)
    while worker.handled < 1:
        await asyncio.sleep(0.01)
    worker.stop()  # the first signal
    await asyncio.sleep(0.1)
    assert not task.done()  # waiting for the message in hand
    worker.stop(force=True)  # the second signal
    await asyncio.wait_for(task, 2)


async def test_bad_channels_are_refused_at_construction(layer: InMemoryChannelLayer) -> None:
    with pytest.raises(WorkerConfigError, match=r"does not route channel 'job'.*'jobs', 'mail'"):
        Worker(jobs_app, ["job"], layer)
    no_channel_routes = ProtocolTypeRouter({"websocket": Jobs.as_asgi()})
    with pytest.raises(WorkerConfigError, match="no 'channel' entry"):
        Worker(no_channel_routes, ["jobs"], layer)
    with pytest.raises(InvalidChannelName, match="process-specific"):
        Worker(jobs_app, ["jobs!abc"], layer)
    with pytest.raises(InvalidChannelName, match="may contain only"):
        Worker(jobs_app, ["bad name"], layer)
    with pytest.raises(WorkerConfigError, match="no channels"):
        Worker(jobs_app, [], layer)
    with pytest.raises(WorkerConfigError, match="needs a channel layer"):
        Worker(jobs_app, ["jobs"], None)
    # An application the worker cannot see into is trusted with any plain name.
    assert Worker(Jobs.as_asgi(), ["anything", "anything"], layer).channels == ["anything"]


# Across processes, with a real redis-server -----------------------------------------------


class WorkerProcess:
    """``python -m roomcast.consumers.worker ARGS`` from the repository root, stderr in a file."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roomcast.consumers.worker", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.stderr)) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}):\n{self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.stderr}")
            time.sleep(0.02)

    def terminate(self, timeout: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._stderr.close()


def start_worker(server: RedisServer, prefix: str, *args: str) -> WorkerProcess:
    env = {"ROOMCAST_LAYER_URL": f"{server.url}?prefix={prefix}"}
    worker = WorkerProcess("-v", "2", THUMBNAILS, "thumbnails", *args, env=env)
    worker.wait_for(r"listening on 'thumbnails'")
    return worker


@contextlib.asynccontextmanager
async def client_layer(server: RedisServer, prefix: str) -> AsyncIterator[RedisChannelLayer]:
    layer = RedisChannelLayer(hosts=[server.url], prefix=prefix)
    try:
        yield layer
    finally:
        await layer.close()


async def make_thumbnails(
    layer: RedisChannelLayer, reply: str, count: int, seconds: float = 0.0
) -> list[dict[str, Any]]:
    for n in range(count):
        await layer.send(
            "thumbnails",
            {
                "type": "thumbnails.make",
                "image": f"photos/{n}.jpg",
                "reply_channel": reply,
                "seconds": seconds,
            },
        )
    return [await asyncio.wait_for(layer.receive(reply), WAIT) for _ in range(count)]


async def test_a_worker_process_serves_the_channel_and_stops_on_sigterm(
    own_redis_server: RedisServer, redis_prefix: str
) -> None:
    with start_worker(own_redis_server, redis_prefix) as worker:
        async with client_layer(own_redis_server, redis_prefix) as layer:
            reply = await layer.new_channel()
            done = await make_thumbnails(layer, reply, 20)
            assert [d["thumbnail"] for d in done] == [f"photos/{n}.128x128.jpg" for n in range(20)]
            assert {d["worker"] for d in done} == {worker.pid}
            # SIGTERM while a message is in hand: it is finished, then the worker exits 0.
            await layer.send(
                "thumbnails",
                {
                    "type": "thumbnails.make",
                    "image": "slow.jpg",
                    "seconds": 0.5,
                    "reply_channel": reply,
                },
            )
            await asyncio.to_thread(worker.wait_for, "'thumbnails': thumbnails.make", 21)
            status = await asyncio.to_thread(worker.terminate)
            last = await asyncio.wait_for(layer.receive(reply), WAIT)
        assert last["thumbnail"] == "slow.128x128.jpg"
        assert status == 0, worker.stderr
        assert "Traceback" not in worker.stderr
        assert "stopped after 21 message(s)" in worker.stderr


async def test_two_worker_processes_share_one_channel(
    own_redis_server: RedisServer, redis_prefix: str
) -> None:
    with (
        start_worker(own_redis_server, redis_prefix) as first,
        start_worker(own_redis_server, redis_prefix) as second,
    ):
        async with client_layer(own_redis_server, redis_prefix) as layer:
            reply = await layer.new_channel()
            done = await make_thumbnails(layer, reply, 40, seconds=0.01)
            with pytest.raises(TimeoutError):  # each message was handled once: no more replies
                await asyncio.wait_for(layer.receive(reply), 0.3)
        assert len({d["thumbnail"] for d in done}) == 40
        assert {d["worker"] for d in done} == {first.pid, second.pid}
        assert await asyncio.to_thread(first.terminate) == 0
        assert await asyncio.to_thread(second.terminate) == 0


# The command's errors ---------------------------------------------------------------------


def test_a_bad_app_path_is_one_line_and_exit_1() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "roomcast.consumers.worker",
            "nosuch.module:application",
            "thumbnails",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "roomcast: error: cannot import module 'nosuch.module': No module named 'nosuch'"
    ]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """The command in process, on the built-in in-memory layer, with our logging untouched."""
    for name in ("ROOMCAST_LAYER_URL", "ROOMCAST_SETTINGS", "DJANGO_SETTINGS_MODULE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(roomcast.consumers.worker, "configure_logging", lambda verbosity: None)
    channel_layers.reset()
    yield CliRunner()
    channel_layers.reset()


@pytest.mark.parametrize(
    ("args", "status", "error"),
    [
        ([THUMBNAILS, "bad name"], 2, "channel name 'bad name' may contain only ASCII letters"),
        ([THUMBNAILS, "thumbnails!x1"], 2, "channel 'thumbnails!x1' is process-specific"),
        (
            [THUMBNAILS, "thumbnail"],
            1,
            "the application does not route channel 'thumbnail': "
            "its ChannelNameRouter routes 'thumbnails'",
        ),
        (["--layer", "nosuch", THUMBNAILS, "thumbnails"], 1, "no channel layer 'nosuch'"),
        (["examples.thumbnails.app", "thumbnails"], 1, "must look like 'module:attribute'"),
        (["examples.thumbnails.app:nope", "thumbnails"], 1, "has no attribute 'nope'"),
    ],
)
def test_command_errors_are_one_line(
    cli: CliRunner, args: list[str], status: int, error: str
) -> None:
    result = cli.invoke(main, args)
    assert result.exit_code == status, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("roomcast: error: ")
    assert error in lines[0]
