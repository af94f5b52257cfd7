"""Gateways serving tests.outages.app over a shared redis-server, and a look at what they hold."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx

from tests.gateway.apps import ROOT, GatewayProcess, free_port

APP = "tests.outages.app:application"
# The gateway's own informational lines; anything else in its log is trouble (warnings and
# errors, tracebacks, and the layer's and consumers' lines, which reach stderr bare).
INFO = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ INFO ")


class Gateway:
    """One ``python -m roomcast.gateway tests.outages.app:application`` process."""

    def __init__(self, redis: str, prefix: str, **settings: str) -> None:
        self.port = free_port()
        # ROOMCAST_SETTINGS named here, not inherited: a module imported earlier in this test
        # process (examples.chat.asgi does os.environ.setdefault) may have set it to its own.
        env = {
            "ROOMCAST_SETTINGS": "tests.outages.settings",
            "OUTAGE_REDIS": redis,
            "OUTAGE_PREFIX": prefix,
        }
        env.update({f"OUTAGE_{key.upper()}": value for key, value in settings.items()})
        self.process = GatewayProcess(APP, "-p", str(self.port), env=env)
        self.process.wait_listening()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=10)
        response.raise_for_status()
        report: dict[str, Any] = response.json()
        return report

    def trouble(self) -> list[str]:
        lines = self.process.stderr.splitlines()
        return [line for line in lines if line.strip() and not INFO.match(line)]

    def close(self) -> None:
        self.process.__exit__(None, None, None)


@contextlib.contextmanager
def gateways(count: int, redis: str, prefix: str, **settings: str) -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    try:
        for _ in range(count):
            started.append(Gateway(redis, prefix, **settings))
        yield started
    finally:
        for gateway in started:
            gateway.close()


def storm_client(
    urls: list[str], clients: int, room: str, timeout: float = 120.0
) -> dict[str, Any]:
    """Run the storm client (benchmarks.storm) as a process of its own; its JSON report."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.storm", "client", "--clients", str(clients)),
            *("--room", room, "--timeout", str(timeout), *urls),
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=timeout * 4,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    report: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return report


def eventually(check: Any, timeout: float = 60.0, interval: float = 0.1) -> Any:
    """Call ``check`` until it returns a true value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{getattr(check, '__name__', check)} still false after {timeout} s"
            )
        time.sleep(interval)
