"""``python manage.py ARGS`` as a real process, for the Django tests.

Django is configured only in these subprocesses: other tests rely on it being unconfigured in
the pytest process.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

STARTED = r"Starting roomcast ASGI server for \S+ at (\S+)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def project_env(**extra: str) -> dict[str, str]:
    """The environment of a project process: nothing inherited that would change its layer."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ROOMCAST_LAYER_URL": "", "ROOMCAST_SETTINGS": ""}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(extra)
    return env


class ManageProcess:
    """``python manage.py ARGS`` in ``project``, in a session of its own, output in files.

    Use as a context manager: at exit the process and its children (the autoreloader's
    server process) are killed.
    """

    def __init__(self, project: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.args = args
        self._stdout = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=project,
            env=dict(env) if env is not None else project_env(),
            stdout=self._stdout,
            stderr=self._stderr,
            start_new_session=True,  # its own process group: its children are ours to clean up
        )

    @property
    def stdout(self) -> str:
        self._stdout.seek(0)
        return self._stdout.read().decode(errors="replace")

    @property
    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 60.0) -> list[str]:
        """Wait until ``pattern`` (a regex) matched ``count`` times in stdout; the matches."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.findall(pattern, self.stdout)
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"manage.py exited ({self.proc.returncode}) before {pattern!r}:\n"
                    f"{self.stdout}\n{self.stderr}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {pattern!r} within {timeout}s:\n{self.stdout}\n{self.stderr}"
                )
            time.sleep(0.05)

    def wait_for_stderr(self, pattern: str, count: int = 1, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.stderr)) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"no {pattern!r} on stderr (status {self.proc.poll()}):\n{self.stderr}"
                )
            time.sleep(0.05)

    def wait_started(self, count: int = 1, timeout: float = 60.0) -> str:
        """The URL of the ``count``-th "Starting roomcast ..." line, once it is printed."""
        return self.wait_for(STARTED, count, timeout)[count - 1]

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def signal_group(self, sig: signal.Signals) -> None:
        """What a terminal's Ctrl-C does: the signal to every process of the group."""
        os.killpg(self.proc.pid, sig)

    def finish(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def __enter__(self) -> ManageProcess:
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
        self._stdout.close()
        self._stderr.close()


def manage(
    project: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run a command that ends by itself: its status and output."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=dict(env) if env is not None else project_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def group_is_gone(pgid: int, timeout: float = 30.0) -> bool:
    """True once no process of the group ``pgid`` is left (the reloader's child included)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False
