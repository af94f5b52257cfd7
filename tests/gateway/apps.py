"""Small ASGI apps for the gateway tests, and a runner for ``python -m roomcast.gateway`` processes.

Apps are addressed as ``tests.gateway.apps:<name>`` from the repository root. Those with a
lifespan record what happened in the file named by ``ROOMCAST_TEST_MARKER`` (if set), one
word a line (``startup``, ``shutdown``), so a test can see a process's lifespan from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from roomcast.gateway.config import Message, Receive, Scope, Send

ROOT = Path(__file__).resolve().parents[2]
MARKER_ENV = "ROOMCAST_TEST_MARKER"


# Helpers --------------------------------------------------------------------------------


async def respond(send: Send, body: bytes, status: int = 200, content_type: bytes = b"") -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type:
        headers.append((b"content-type", content_type))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def mark(word: str) -> None:
    """Append ``word`` to the marker file, if the test asked for one."""
    path = os.environ.get(MARKER_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as marker:
            marker.write(f"{word} {os.getpid()}\n")


async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    """A well-behaved lifespan: puts ``greeting`` and ``pid`` in the state, marks both phases."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            scope["state"]["greeting"] = "hello from startup"
            scope["state"]["pid"] = os.getpid()
            mark("startup")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            mark("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def drain_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message: Message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


# Apps -----------------------------------------------------------------------------------


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """``hello`` for every request; supports the lifespan."""
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    await drain_body(receive)
    await respond(send, b"hello")


async def pid(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the serving process's pid: tells workers apart."""
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    await respond(send, str(os.getpid()).encode())


async def loop_kind(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the module of the running event loop's class: asyncio or uvloop."""
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    await respond(send, type(asyncio.get_running_loop()).__module__.encode())


async def state(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the request scope's ``state`` as JSON (what the lifespan put there)."""
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    body = json.dumps(scope.get("state", None)).encode()
    await respond(send, body, content_type=b"application/json")


async def slow(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers after ``?delay=SECONDS`` (default 0.5): a request still in flight at shutdown.

    ``&mark=1`` marks ``request`` when the app has it, so a test knows it is in flight."""
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    query = parse_qs(scope["query_string"].decode())
    if query.get("mark"):
        mark("request")
    delay = float(query.get("delay", ["0.5"])[0])
    await asyncio.sleep(delay)
    await respond(send, b"done after %.2f" % delay)


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """WebSocket echo (accepts, sends back each message); ``hello`` for HTTP."""
    if scope["type"] != "websocket":
        await hello(scope, receive, send)
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            reply = {key: message[key] for key in ("text", "bytes") if message.get(key)}
            await send({"type": "websocket.send", **reply})
        else:
            return


async def no_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    """Like Django's ASGIHandler: refuses any scope but HTTP."""
    if scope["type"] != "http":
        raise ValueError(f"only HTTP is handled here, not {scope['type']}")
    await respond(send, b"no lifespan here")


async def startup_fails(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers ``lifespan.startup.failed`` with a reason."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await respond(send, b"unreachable")


async def startup_crashes(scope: Scope, receive: Receive, send: Send) -> None:
    """Kills its own process during start-up: a worker that never comes up."""
    if scope["type"] == "lifespan":
        await receive()
        os._exit(7)
    await respond(send, b"unreachable")


async def dies_soon(scope: Scope, receive: Receive, send: Send) -> None:
    """Starts, then kills its own process 0.3 s later: a worker that keeps crashing. With a
    marker file, 1 s after ``ROOMCAST_TEST_SIBLINGS`` workers have started (so that the first
    generation is up, however slowly the machine spawns them)."""
    if scope["type"] == "lifespan":
        asyncio.get_running_loop().create_task(_die_after_siblings())
        await lifespan(scope, receive, send)
        return
    await respond(send, b"still here")


async def _die_after_siblings() -> None:
    path = os.environ.get(MARKER_ENV)
    siblings = int(os.environ.get("ROOMCAST_TEST_SIBLINGS", "0"))
    for _ in range(3000):  # at most ~60 s
        if not path or not siblings or _marks(path).count("startup") >= siblings:
            break
        await asyncio.sleep(0.02)
    # The siblings' "ready" reach the supervisor a little after their start-up: give it time.
    await asyncio.sleep(1.0 if siblings else 0.3)
    os._exit(7)


def _marks(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as marker:
            return [line.split()[0] for line in marker if line.strip()]
    except FileNotFoundError:
        return []


async def receive_forever(scope: Scope, receive: Receive, send: Send) -> None:
    """A buggy app that keeps calling ``receive()`` after the disconnect: on WebSockets, and on
    HTTP at ``/loop`` (after answering); ``hello`` elsewhere. Marks ``cancelled`` when the
    server gives up on it (``--application-close-timeout``)."""
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    try:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while True:
                await receive()
        if scope["path"] == "/loop":
            await drain_body(receive)
            await respond(send, b"looping")
            while True:
                await receive()
    except asyncio.CancelledError:
        mark("cancelled")
        raise
    await respond(send, b"hello")


async def spin(scope: Scope, receive: Receive, send: Send) -> None:
    """Burns the event loop (``while True: pass``) at ``/spin``; ``hello`` elsewhere."""
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    if scope["path"] == "/spin":
        while True:
            pass
    await respond(send, b"hello")


async def scope_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with what the scope says of the mount point: root_path, path and the header
    names, as JSON (HTTP: the body; WebSocket: the first message, after accepting)."""
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    seen = {
        "root_path": scope["root_path"],
        "path": scope["path"],
        "headers": [name.decode("latin-1") for name, _ in scope["headers"]],
        "client": scope["client"],
    }
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(seen)})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    await respond(send, json.dumps(seen).encode(), content_type=b"application/json")


async def websockets_for_the_log(scope: Scope, receive: Receive, send: Send) -> None:
    """WebSockets for the access-log tests: ``/reject`` is refused (403), ``/app-close`` is
    accepted then closed by the app with 4001, ``/pick`` accepts naming subprotocol ``mine``,
    anything else echoes until the client leaves; ``hello`` for HTTP."""
    if scope["type"] != "websocket":
        await hello(scope, receive, send)
        return
    await receive()
    if scope["path"] == "/reject":
        await send({"type": "websocket.close"})
        return
    if scope["path"] == "/pick":
        await send({"type": "websocket.accept", "subprotocol": "mine"})
    else:
        await send({"type": "websocket.accept"})
    if scope["path"] == "/app-close":
        await send({"type": "websocket.close", "code": 4001})
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})


class Asgi2Hello:
    """An ASGI 2 application: instantiated with the scope, then called with receive/send."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, receive: Receive, send: Send) -> None:
        if self.scope["type"] == "lifespan":
            await lifespan(self.scope, receive, send)
            return
        await respond(send, b"hello from ASGI 2")


async def readiness_reporter(scope: Scope, receive: Receive, send: Send) -> None:
    """Reports to :mod:`roomcast.readiness` as a channel layer would: ``/not-ready?key=K&
    reason=R`` and ``/ready?key=K``; WebSocket echo; ``hello`` elsewhere."""
    from roomcast import readiness

    if scope["type"] != "http":
        await echo(scope, receive, send)
        return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    if scope["path"] == "/not-ready":
        readiness.report_not_ready(query["key"], query["reason"])
    elif scope["path"] == "/ready":
        readiness.report_ready(query["key"])
    await hello(scope, receive, send)


RELEASE_ENV = "ROOMCAST_TEST_RELEASE"


async def slow_startup(scope: Scope, receive: Receive, send: Send) -> None:
    """Its lifespan start-up completes only once the file named by ROOMCAST_TEST_RELEASE
    exists; ``hello`` afterwards."""
    if scope["type"] == "lifespan":
        await receive()
        release = os.environ[RELEASE_ENV]
        while not os.path.exists(release):  # noqa: ASYNC240 - a test app polling a file
            await asyncio.sleep(0.02)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await respond(send, b"hello after startup")


def make_hello() -> Any:
    """A factory, for ``--factory``."""
    return hello


# Running the gateway as a process -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GatewayProcess:
    """``python -m roomcast.gateway ARGS`` from ``cwd`` (the repository root), stderr in a file.

    Use as a context manager: at exit the process and any workers of it still running are
    killed (it runs in a process group of its own).
    """

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        pass_fds: Collection[int] = (),
        cwd: str | os.PathLike[str] = ROOT,
        command: tuple[str, ...] = ("-m", "roomcast.gateway"),
    ) -> None:
        """``command`` follows the interpreter: ``("-m", "roomcast", "serve")`` runs the
        ``roomcast serve`` of a Procfile."""
        self.args = args
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        self._stdout = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, *command, *args],
            cwd=cwd,
            env=full_env,
            stdout=self._stdout,
            stderr=self._stderr,
            pass_fds=tuple(pass_fds),
            start_new_session=True,  # its own process group: its workers are ours to clean up
        )

    @property
    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    @property
    def stdout(self) -> str:
        self._stdout.seek(0)
        return self._stdout.read().decode(errors="replace")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 15.0) -> list[str]:
        """Wait until ``pattern`` (a regex) matched ``count`` times in stderr; the matches."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.findall(pattern, self.stderr)
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"gateway exited ({self.proc.returncode}) before {pattern!r}:\n{self.stderr}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.stderr}")
            time.sleep(0.02)

    def wait_listening(self, timeout: float = 15.0) -> None:
        self.wait_for(r"Listening on", timeout=timeout)

    def wait_accepting(self, port: int, timeout: float = 15.0) -> None:
        """Wait until 127.0.0.1:``port`` takes connections (for ``-v 0``, which logs nothing)."""
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited ({self.proc.returncode}):\n{self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"port {port} not accepting within {timeout}s")
            time.sleep(0.02)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def finish(self, timeout: float = 15.0) -> tuple[int, str]:
        """Wait for a process expected to exit by itself: its status and stderr."""
        return self.wait(timeout), self.stderr

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the gateway and any workers it left
        self.proc.wait()
        self._stderr.close()
        self._stdout.close()


@contextlib.contextmanager
def preserved_logging() -> Iterator[None]:
    """Undo what ``configure_logging`` does to our loggers, so later tests' caplog still works."""
    names = ("roomcast", "roomcast.gateway.error", "roomcast.gateway.access", "asyncio")
    loggers = [logging.getLogger(name) for name in names]
    saved = [(lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    try:
        yield
    finally:
        for logger, (handlers, level, propagate, disabled) in zip(loggers, saved, strict=True):
            for handler in logger.handlers[:]:
                if handler not in handlers:
                    logger.removeHandler(handler)
                    handler.close()
            logger.level, logger.propagate, logger.disabled = level, propagate, disabled


def one_error_line(stderr: str) -> str:
    """The single ``roomcast: error:`` line stderr must consist of (asserted)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("roomcast: error: "), lines[0]
    assert "Traceback" not in stderr
    return lines[0]
