"""``--workers N``: a supervisor process that binds once and keeps N worker processes serving.

The parent binds the listening socket(s) and starts each worker with the "spawn" method, which
hands the sockets down; every worker runs a ``Server`` on them and the kernel spreads new
connections across the processes. The parent never imports the application.

A worker that dies is replaced after a short backoff. Workers that keep dying (a crash loop,
say an app that fails at import) stop the whole server with one clear error rather than forking
forever. A worker whose start-up fails in a way the user must fix (bad app path, lifespan
start-up failure) reports it through a pipe, and the supervisor stops with that one line.

Signals: SIGTERM/SIGINT in the parent are forwarded to the workers as SIGTERM (graceful); a
second one is forwarded again (immediate). Workers ignore SIGINT, so a terminal's Ctrl-C,
delivered to the whole process group, is not counted twice. A worker whose supervisor is gone
shuts itself down. SIGHUP reopens the supervisor's log files and is forwarded to every worker,
which reopens its own (logrotate; see roomcast.gateway.logging).

Metrics (``--metrics-port``): the supervisor serves ``/metrics`` for all its workers. On each
scrape it asks every worker, over the pipe it keeps to it, for
:func:`roomcast.metrics.snapshot`, labels each series ``worker="I"`` (1 to N) and answers with
the lot, plus ``roomcast_gateway_worker_up{worker}`` (0 for a worker that did not answer within
``SCRAPE_TIMEOUT``, one that is starting or blocked) and
``roomcast_gateway_worker_restarts_total``. A worker has at most one question outstanding, so a
blocked worker never fills its pipe. A replaced worker's counters start again from zero (a
counter reset per series, which ``rate()`` handles); a kill -9 of the supervisor takes the
endpoint with it (and the workers stop, see above).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess

from roomcast.gateway.config import Config, ConfigError
from roomcast.gateway.lifespan import LifespanFailure
from roomcast.gateway.logging import configure_logging
from roomcast.gateway.proctitle import set_title
from roomcast.gateway.server import (
    HANDLED_SIGNALS,
    REOPEN_SIGNAL,
    Listener,
    Server,
    bind_listeners,
    close_sockets,
    describe_socket,
    reopen_logs,
)

from roomcast import metrics

logger = logging.getLogger("roomcast.gateway.error")

CRASH_WINDOW = 10.0  # seconds over which worker deaths are counted
BACKOFF_START = 0.1  # seconds before the first restart; doubles with each recent death
BACKOFF_MAX = 5.0
KILL_AFTER = 5.0  # seconds past graceful_timeout before workers that ignore SIGTERM are killed
PARENT_POLL = 1.0  # seconds between a worker's checks that its supervisor is alive
SCRAPE_TIMEOUT = 1.0  # seconds a worker has to send its metrics snapshot to a scrape


class WorkersFailed(Exception):
    """The workers kept dying; the message is one line for the user."""


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    reports: Pipe  # what the worker tells us: ("ready", pid) or (kind, start-up error)
    ready: bool = False
    failure: Exception | None = None
    # The metrics question outstanding: (sequence number, the future its answer resolves).
    asked: tuple[int, asyncio.Future[list[metrics.Family]]] | None = None

    def describe_exit(self) -> str:
        code = self.process.exitcode
        if code is not None and code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with code {code}"


class Supervisor:
    """Runs ``config.workers`` worker processes on sockets bound once, here."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.workers: dict[int, _Worker] = {}
        self.stopping = False
        self.failure: Exception | None = None
        self._stop = asyncio.Event()
        self._signals = 0
        self._announced = False
        self._sockets: list[socket.socket] = []
        self._listeners: list[Listener] = []
        self._crashes: list[float] = []
        self._context = multiprocessing.get_context("spawn")
        self.restarts = 0  # workers replaced after dying
        self._questions = itertools.count(1)

    @property
    def crash_limit(self) -> int:
        """Deaths within CRASH_WINDOW that mean a crash loop rather than bad luck."""
        return max(5, 2 * self.config.workers)

    def run(self) -> None:
        """Serve until stopped; raises ConfigError, LifespanFailure or WorkersFailed."""
        asyncio.run(self.main())

    async def main(self) -> None:
        config = self.config
        set_title("supervisor", config)
        configure_logging(config)
        for endpoint in config.listeners():  # a bad TLS file is reported once, here
            config.ssl_context(endpoint.tls)
        listeners = self._listeners = bind_listeners(config)
        self._sockets = [listener.sock for listener in listeners]
        loop = asyncio.get_running_loop()
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(REOPEN_SIGNAL, self._on_reopen)
        exporter: metrics.MetricsServer | None = None
        try:
            if config.metrics_port is not None:
                try:
                    exporter = await metrics.serve(
                        config.metrics_port, config.metrics_host, gather=self.scrape
                    )
                except metrics.MetricsError as exc:
                    raise ConfigError(str(exc)) from exc
                logger.info("Serving metrics of every worker on %s", exporter.url)
            keepers = [
                asyncio.create_task(self._keep(index, listeners))
                for index in range(1, config.workers + 1)
            ]
            watchdog = asyncio.create_task(self._kill_stragglers())
            await asyncio.wait(keepers)
            watchdog.cancel()
        finally:
            if exporter is not None:
                exporter.close()
            for sig in (*HANDLED_SIGNALS, REOPEN_SIGNAL):
                loop.remove_signal_handler(sig)
            for worker in self.workers.values():
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()
            if not self.stopping:  # stop() closed them already
                close_sockets(listeners, config)
        if self.failure is not None:
            raise self.failure
        logger.info("All workers stopped")

    def stop(self, failure: Exception | None = None) -> None:
        """Stop every worker gracefully; ``failure`` is what ``run()`` raises afterwards."""
        if failure is not None and self.failure is None:
            self.failure = failure
        if self.stopping:
            return  # a second SIGTERM would make the workers skip their graceful shutdown
        self.stopping = True
        self._stop.set()
        # Our copy of the listening socket would keep the port accepting into a backlog no
        # worker reads any more: close it now, so new clients are refused instead of hanging.
        close_sockets(self._listeners, self.config)
        self._signal_workers(signal.SIGTERM)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info("Received %s: stopping workers gracefully", sig.name)
            self.stop()
        else:
            logger.warning("Received %s again: workers exit now", sig.name)
            self._signal_workers(signal.SIGTERM)

    def _on_reopen(self) -> None:
        """SIGHUP: reopen our log files and tell every worker to reopen its own."""
        reopen_logs()
        self._signal_workers(REOPEN_SIGNAL)

    async def scrape(self) -> list[metrics.Family]:
        """Every worker's metrics, labelled ``worker``, with ``roomcast_gateway_worker_up``."""
        workers = sorted(self.workers.values(), key=lambda worker: worker.index)
        answers = await asyncio.gather(*(self._ask_metrics(worker) for worker in workers))
        families: list[metrics.Family] = []
        up: dict[tuple[str, ...], float] = {}
        for worker, answer in zip(workers, answers, strict=True):
            label = str(worker.index)
            up[(label,)] = 0 if answer is None else 1
            for family in answer or ():
                if "worker" not in family.labels:
                    family = family.with_label("worker", label)
                families.append(family)
        families.append(
            metrics.gauge(
                "roomcast_gateway_worker_up",
                "1 when the worker answered this scrape, 0 when it did not (starting, blocked).",
                up,
                ("worker",),
            )
        )
        families.append(
            metrics.counter(
                "roomcast_gateway_worker_restarts_total",
                "Worker processes replaced after they died.",
                self.restarts,
            )
        )
        return metrics.merge(families)

    async def _ask_metrics(self, worker: _Worker) -> list[metrics.Family] | None:
        """The worker's snapshot, or None if it does not answer within SCRAPE_TIMEOUT."""
        if worker.asked is not None and not worker.asked[1].done():
            return None  # still silent on the last question: do not pile up more
        if not worker.ready or worker.reports.closed or worker.process.exitcode is not None:
            return None
        answer: asyncio.Future[list[metrics.Family]] = asyncio.get_running_loop().create_future()
        question = next(self._questions)
        worker.asked = (question, answer)
        try:
            worker.reports.send(("metrics", question))
        except OSError:
            answer.cancel()
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(answer), SCRAPE_TIMEOUT)
        except TimeoutError:
            return None

    def _signal_workers(self, sig: signal.Signals) -> None:
        for worker in self.workers.values():
            pid = worker.process.pid
            if pid is not None and worker.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

    async def _keep(self, index: int, sockets: list[Listener]) -> None:
        """Keep worker ``index`` running until the supervisor stops."""
        while not self.stopping:
            worker = self._spawn(index, sockets)
            await self._watch(worker)
            code = worker.process.exitcode
            if self.stopping:
                # Before we announced, the start-up error already explains everything.
                if self._announced and code not in (0, -signal.SIGTERM):
                    logger.warning("Worker %d %s while stopping", index, worker.describe_exit())
                return
            if worker.failure is not None:
                self.stop(worker.failure)
                return
            if not self._announced:
                # The first start-up failed (an import error, say; its traceback is above):
                # restarting would only repeat it.
                self.stop(WorkersFailed(f"worker {index} {worker.describe_exit()} during start-up"))
                return
            delay = self._crash_delay()
            if delay is None:
                self.stop(
                    WorkersFailed(
                        f"workers keep dying ({len(self._crashes)} exits within "
                        f"{CRASH_WINDOW:g} s, the last: worker {index} {worker.describe_exit()})"
                    )
                )
                return
            self.restarts += 1
            logger.error(
                "Worker %d (pid %s) %s; restarting it in %.1f s",
                index,
                worker.process.pid,
                worker.describe_exit(),
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _watch(self, worker: _Worker) -> None:
        """Follow the worker's reports until it exits."""
        loop = asyncio.get_running_loop()
        fileno = worker.reports.fileno()
        loop.add_reader(fileno, self._read_reports, worker)
        try:
            await _wait_exit(worker.process)
            self._read_reports(worker)  # what it said just before exiting
        finally:
            loop.remove_reader(fileno)
            worker.reports.close()

    def _spawn(self, index: int, sockets: list[Listener]) -> _Worker:
        # Duplex: the worker reports to us, and answers our metrics questions.
        reader, writer = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker_main,
            args=(self.config, sockets, writer, index),
            name=f"gateway-worker-{index}",
        )
        process.start()
        writer.close()  # the child holds the only writer: EOF when it exits
        worker = self.workers[index] = _Worker(index, process, reader)
        # Quiet until all are up: a start-up error must stay the only line the user sees.
        level = logging.INFO if self._announced else logging.DEBUG
        logger.log(level, "Started worker %d (pid %s)", index, process.pid)
        return worker

    def _read_reports(self, worker: _Worker) -> None:
        try:
            while not worker.reports.closed and worker.reports.poll():
                kind, detail = worker.reports.recv()
                if kind == "ready":
                    worker.ready = True
                    self._announce()
                elif kind == "metrics":
                    question, families = detail
                    asked = worker.asked
                    if asked is not None and asked[0] == question and not asked[1].done():
                        asked[1].set_result(families)
                elif kind == "lifespan":
                    worker.failure = LifespanFailure(detail)
                else:
                    worker.failure = ConfigError(detail)
        except (EOFError, OSError):  # the worker is gone; _keep notices through the sentinel
            asyncio.get_running_loop().remove_reader(worker.reports.fileno())

    def _announce(self) -> None:
        """Log where we listen once every first-generation worker is serving."""
        ready = [worker for worker in self.workers.values() if worker.ready]
        if self._announced or len(ready) < self.config.workers:
            return
        self._announced = True
        pids = ", ".join(str(worker.process.pid) for worker in ready)
        for sock, endpoint in self._listeners:
            logger.info(
                "Listening on %s with %d workers (pids %s; supervisor %d)",
                describe_socket(sock, endpoint.tls is not None),
                len(ready),
                pids,
                os.getpid(),
            )

    def _crash_delay(self) -> float | None:
        """Seconds to wait before the next restart, or None for a crash loop."""
        now = time.monotonic()
        self._crashes = [at for at in self._crashes if now - at < CRASH_WINDOW]
        self._crashes.append(now)
        if len(self._crashes) >= self.crash_limit:
            return None
        delay: float = BACKOFF_START * 2.0 ** (len(self._crashes) - 1)
        return min(BACKOFF_MAX, delay)

    async def _kill_stragglers(self) -> None:
        """After a stop, kill workers still alive well past the graceful timeout."""
        await self._stop.wait()
        await asyncio.sleep(self.config.graceful_timeout + KILL_AFTER)
        for worker in self.workers.values():
            if worker.process.is_alive():
                logger.error("Worker %d did not stop in time: killing it", worker.index)
                worker.process.kill()


async def _wait_exit(process: BaseProcess) -> None:
    """Wait without a thread: a process's sentinel becomes readable when it exits."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    sentinel = process.sentinel

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(sentinel, on_exit)
    try:
        await exited
    finally:
        loop.remove_reader(sentinel)
    process.join()


# In the worker process -----------------------------------------------------------------


def worker_main(config: Config, sockets: list[Listener], reports: Pipe, index: int = 1) -> None:
    """A worker's entry point (it runs in a fresh interpreter: the "spawn" method)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor forwards Ctrl-C as SIGTERM
    signal.signal(REOPEN_SIGNAL, signal.SIG_IGN)  # until the server handles it: never a death
    set_title(f"worker {index} of {config.workers}", config)
    server = Server(config)
    server.handled_signals = (signal.SIGTERM,)
    server.serve_metrics = False  # the supervisor serves every worker's
    try:
        with asyncio.Runner(loop_factory=config.loop_factory()) as runner:
            runner.run(_serve_worker(server, sockets, reports, answer_metrics=True))
    except ConfigError as exc:
        reports.send(("config", str(exc)))
        sys.exit(1)
    except LifespanFailure as exc:
        reports.send(("lifespan", str(exc)))
        sys.exit(3)


async def _serve_worker(
    server: Server, sockets: list[Listener], reports: Pipe, answer_metrics: bool = False
) -> None:
    loop = asyncio.get_running_loop()
    if answer_metrics:
        loop.add_reader(reports.fileno(), _answer_metrics, reports)
    watch = asyncio.create_task(_watch_parent(server, os.getppid()))
    serving = asyncio.create_task(server.serve(sockets))
    started = asyncio.create_task(server.started.wait())
    try:
        await asyncio.wait([serving, started], return_when=asyncio.FIRST_COMPLETED)
        if started.done():
            reports.send(("ready", os.getpid()))
        await serving
    finally:
        started.cancel()
        watch.cancel()
        if answer_metrics and not reports.closed:
            loop.remove_reader(reports.fileno())


def _answer_metrics(reports: Pipe) -> None:
    """The supervisor asks for our metrics: send it :func:`roomcast.metrics.snapshot`."""
    try:
        while reports.poll():
            kind, question = reports.recv()
            if kind == "metrics":
                reports.send(("metrics", (question, metrics.snapshot())))
    except (EOFError, OSError):  # the supervisor is gone; _watch_parent stops us
        with contextlib.suppress(OSError):
            asyncio.get_running_loop().remove_reader(reports.fileno())


async def _watch_parent(server: Server, parent: int) -> None:
    """Shut down gracefully if the supervisor dies (it can no longer forward signals)."""
    while True:
        await asyncio.sleep(PARENT_POLL)
        if os.getppid() != parent:
            logger.warning("Supervisor %d is gone: worker %d stopping", parent, os.getpid())
            server.exit()
            return
