"""``roomcast serve --metrics-port``: scrapes of real gateway processes, alone and with workers.

What is proven: /metrics is served on its own port (the app's port still reaches the app), the
gateway's families are there with the values they should have (the loop-lag histogram moves
between two scrapes, readiness is 1), a supervisor's one scrape holds every worker's series
labelled ``worker``, a worker killed with -9 is seen down or replaced and counted, and the
user's mistakes are one error line each.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from roomcast.gateway.config import Config, ConfigError

from tests.gateway.apps import GatewayProcess, free_port, one_error_line
from tests.metrics_support import Scrape

WAIT = 20.0
GATEWAY_FAMILIES = {
    "roomcast_gateway_connections",
    "roomcast_gateway_connections_accepted",
    "roomcast_gateway_connections_closed",
    "roomcast_gateway_requests",
    "roomcast_gateway_request_duration_seconds",
    "roomcast_gateway_websocket_messages",
    "roomcast_gateway_websocket_bytes",
    "roomcast_gateway_websocket_closed",
    "roomcast_gateway_slow_client_drops",
    "roomcast_gateway_refusals",
    "roomcast_gateway_handshake_failures",
    "roomcast_gateway_tls_errors",
    "roomcast_gateway_limit_refusals",
    "roomcast_gateway_event_loop_lag_seconds",
    "roomcast_gateway_ready",
    "roomcast_gateway_not_ready_reasons",
}


def scrape(port: int) -> Scrape:
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=WAIT)
    assert answer.status_code == 200, answer.text
    return Scrape.parse(answer.text)


def eventually(check: object, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except (httpx.HTTPError, AssertionError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_single_gateway_serves_its_metrics_on_their_own_port() -> None:
    port, metrics_port = free_port(), free_port()
    args = ("-p", str(port), "--metrics-port", str(metrics_port))
    with GatewayProcess("tests.gateway.apps:hello", *args) as gateway:
        gateway.wait_for(f"Serving metrics on http://127.0.0.1:{metrics_port}/metrics")
        gateway.wait_listening()
        # The app's port is the app's: /metrics there is an ordinary request.
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").text == "hello"
        first = scrape(metrics_port)
        assert set(first.families) >= GATEWAY_FAMILIES, GATEWAY_FAMILIES - set(first.families)
        assert first.families["roomcast_gateway_event_loop_lag_seconds"][0] == "histogram"
        assert first.value("roomcast_gateway_ready") == 1
        assert first.value("roomcast_gateway_not_ready_reasons") == 0
        assert "process_resident_memory_bytes" in first.names()  # the process's own collectors
        lag = "roomcast_gateway_event_loop_lag_seconds_count"
        # The watchdog observes the loop's lag every tick: the count moves between scrapes.
        eventually(lambda: scrape(metrics_port).value(lag) > first.value(lag), "more lag samples")
        assert first.label_values("roomcast_gateway_connections", "protocol") == {"h1", "h2", "ws"}
        gateway.signal(signal.SIGTERM)
        assert gateway.wait() == 0
    with socket.socket() as probe:  # the metrics port closed with the process
        assert probe.connect_ex(("127.0.0.1", metrics_port)) != 0


def test_a_supervisor_serves_every_workers_metrics_in_one_scrape() -> None:
    port, metrics_port = free_port(), free_port()
    args = ("-p", str(port), "--metrics-port", str(metrics_port), "--workers", "2")
    with GatewayProcess("tests.gateway.apps:pid", *args) as gateway:
        gateway.wait_listening(timeout=WAIT)
        gateway.wait_for("Serving metrics of every worker on")
        values = scrape(metrics_port)
        assert values.label_values("roomcast_gateway_ready", "worker") == {"1", "2"}
        assert values.value("roomcast_gateway_worker_up", worker="1") == 1
        assert values.value("roomcast_gateway_worker_up", worker="2") == 1
        assert values.value("roomcast_gateway_worker_restarts_total") == 0
        assert set(values.families) >= GATEWAY_FAMILIES
        lag = "roomcast_gateway_event_loop_lag_seconds_count"
        for worker in ("1", "2"):  # each worker's loop-lag histogram, apart
            eventually(lambda w=worker: scrape(metrics_port).value(lag, worker=w) > 0, "lag")
        # The app's port never serves the metrics.
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").text.isdigit()

        # kill -9 one worker: the next scrapes say so, then count its replacement.
        victim = int(httpx.get(f"http://127.0.0.1:{port}/").text)
        victim_index = worker_index(gateway.proc.pid, victim)
        os.kill(victim, signal.SIGKILL)
        eventually(
            lambda: scrape(metrics_port).value("roomcast_gateway_worker_restarts_total") == 1,
            "the restart counted",
        )
        eventually(
            lambda: (
                scrape(metrics_port).value("roomcast_gateway_worker_up", worker=victim_index) == 1
            ),
            "the replacement answering",
        )
        gateway.signal(signal.SIGTERM)
        assert gateway.wait(30) == 0


def worker_index(supervisor: int, pid: int) -> str:
    """The ``worker`` label of process ``pid``, read from its title when setproctitle is in,
    else from its order among the supervisor's children."""
    children = sorted(
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _ppid(entry) == supervisor
    )
    title = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
    if title.startswith("roomcast: worker "):
        return title.split()[2]
    return str(children.index(pid) + 1)


def _ppid(entry: Path) -> int | None:
    try:
        stat = (entry / "stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def test_metrics_port_mistakes_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is the app's port"):
        Config(app="a:b", port=9100, metrics_port=9100)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        for extra in ((), ("--workers", "2")):
            args = ("-p", str(free_port()), "--metrics-port", str(busy), *extra)
            with GatewayProcess("tests.gateway.apps:hello", *args) as gateway:
                status, stderr = gateway.finish(timeout=WAIT)
            assert status == 1
            assert f"cannot serve metrics on 127.0.0.1:{busy}" in one_error_line(stderr)
    # Without prometheus-client: a package of that name that cannot be imported stands in.
    fake = tmp_path / "prometheus_client"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('prometheus_client is not installed')\n")
    env = {"PYTHONPATH": str(tmp_path)}
    args = ("-p", str(free_port()), "--metrics-port", str(free_port()))
    with GatewayProcess("tests.gateway.apps:hello", *args, env=env) as gateway:
        status, stderr = gateway.finish(timeout=WAIT)
    assert status == 1
    assert "pip install 'roomcast[metrics]'" in one_error_line(stderr)
