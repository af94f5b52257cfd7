"""Django's autoreloader for roomcast's runserver, with stops that let the server drain.

Django's ``autoreload.run_with_reloader`` (what its runserver and Daphne's use) runs the server
in a child process and starts a new child when a file changes; but on SIGTERM the parent
SIGKILLs the child, on Ctrl-C it gives it a quarter of a second, and the child's server dies
with its daemon thread on a reload: open WebSockets just see the connection drop. This module
assembles the same parts of ``django.utils.autoreload`` (``get_child_arguments``,
``get_reloader``, ``start_django``, the ``RUN_MAIN`` variable, the exit status 3 of a reload)
so that every stop is the gateway's graceful one:

* **The parent** (the process you started) runs the child with ``RUN_MAIN=true`` and starts a
  new one whenever it exits with status 3. It forwards SIGINT and SIGTERM to the child and
  waits for it (a Ctrl-C reaches both; the child takes the first signal and ignores the
  second); a second signal to the parent, or a child still running ``timeout`` + 5 seconds
  later, kills the child at once. Its exit status is the child's (0 after a signal).
* **The child** serves in Django's ``django-main-thread`` while its main thread watches the
  files with Django's reloader (StatReloader, or Watchman when available). A change → the
  server stops with ``restart=True`` (WebSockets close 1012, "service restart": reconnect)
  and the child exits 3; SIGINT or SIGTERM → it stops (WebSockets close 1001) and the child
  exits 0. ``stop`` is given up to ``timeout`` seconds.

Faults: ``kill -9`` of the child ends the parent with status 137 and one line (a crash is not
restarted: the files did not change); ``kill -9`` of the parent leaves the child alone, and the
child, seeing its parent gone (it looks once a second), stops as on SIGTERM, so no orphan keeps
the port. An exception in the project's code while the server starts is printed with its
traceback and the child waits for the file to be fixed, as under Django's runserver.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

from django.utils import autoreload

# Django's own logger: its LOGGING shows these lines in DEBUG, as for Django's runserver.
logger = logging.getLogger("django.utils.autoreload")

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RELOAD_STATUS = 3  # autoreload.trigger_reload's sys.exit(3): a file changed
KILL_MARGIN = 5.0  # seconds the parent waits past the child's own stop timeout
POLL = 0.5  # seconds between the parent's looks at the deadline
PARENT_POLL = 1.0  # seconds between the child's looks at its parent


def run_with_reloader(
    main: Callable[[], None], stop: Callable[[bool], None], timeout: float
) -> NoReturn:
    """Run ``main`` under the autoreloader; ``stop(restart)`` ends what it serves, in bound."""
    if os.environ.get(autoreload.DJANGO_AUTORELOAD_ENV) == "true":
        _child(main, stop)
    sys.exit(_supervise(timeout + KILL_MARGIN))


# The child: serve in a thread, watch the files in the main thread --------------------------


class _Stop(BaseException):
    """SIGINT/SIGTERM in the child: unwinds the reloader like KeyboardInterrupt would."""


_stopping = threading.Event()  # set once the child is on its way out: signals change nothing


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    if _stopping.is_set():
        return  # e.g. the duplicate of a Ctrl-C (it reaches the parent, which forwards it)
    _stopping.set()
    raise _Stop(signum)


def _child(main: Callable[[], None], stop: Callable[[bool], None]) -> NoReturn:
    reloader = autoreload.get_reloader()
    logger.info("Watching for file changes with %s", type(reloader).__name__)
    for sig in HANDLED_SIGNALS:
        signal.signal(sig, _on_stop_signal)
    _watch_parent()
    status: int | str | None = 0
    restart = False
    try:
        try:
            autoreload.start_django(reloader, main)
        except SystemExit as exc:  # a file changed: trigger_reload's sys.exit(3)
            status, restart = exc.code, exc.code == RELOAD_STATUS
        finally:
            _stopping.set()
    except _Stop:  # also when it came while a reload was unwinding: a stop wins
        status, restart = 0, False
    stop(restart)
    sys.exit(status)


def _watch_parent() -> None:
    """Stop as on SIGTERM when the parent is gone (``kill -9``): no orphan keeps the port."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="roomcast-parent-watch", daemon=True).start()


# The parent: start the child again after a reload, forward signals -------------------------


class _Parent:
    def __init__(self, kill_after: float) -> None:
        self.kill_after = kill_after
        self.child: subprocess.Popen[bytes] | None = None
        self.signals: list[int] = []
        self.first_signal = 0.0

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.signals:
            self.first_signal = time.monotonic()
        self.signals.append(signum)
        self.forward()

    def forward(self) -> None:
        child = self.child
        if child is None or not self.signals:
            return
        with contextlib.suppress(ProcessLookupError):
            if len(self.signals) == 1:
                child.send_signal(self.signals[0])
            else:
                child.kill()

    def wait(self) -> int:
        assert self.child is not None
        while True:
            try:
                return self.child.wait(timeout=POLL)
            except subprocess.TimeoutExpired:
                late = time.monotonic() - self.first_signal > self.kill_after
                if self.signals and late:
                    logger.warning("The server did not stop in %gs: killing it", self.kill_after)
                    self.child.kill()


def _supervise(kill_after: float) -> int:
    args = autoreload.get_child_arguments()
    env = {**os.environ, autoreload.DJANGO_AUTORELOAD_ENV: "true"}
    parent = _Parent(kill_after)
    previous = {sig: signal.signal(sig, parent.on_signal) for sig in HANDLED_SIGNALS}
    try:
        while True:
            parent.child = subprocess.Popen(args, env=env, close_fds=False)
            parent.forward()  # a signal that came while it was being started
            status = parent.wait()
            if parent.signals:
                return max(status, 0)
            if status < 0:
                name = signal.Signals(-status).name
                sys.stderr.write(f"The server process was killed by {name}.\n")
                return 128 - status
            if status != RELOAD_STATUS:
                return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
