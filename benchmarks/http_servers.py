"""HTTP hello-world req/s: the gateway, uvicorn (h11) and Daphne side by side, wrk as the load.

Each round starts every server in turn (fresh process, on a free 127.0.0.1 port, pinned to
CPU 0 with ``taskset``), runs ``wrk -t1 -c50 --latency`` pinned to CPU 1 against
``benchmarks.apps:hello`` (a short warm-up run first, not counted), then stops the server.
Servers are interleaved within each round and the order rotates from round to round, so slow
drift of a noisy machine hits every server alike. The table gives the median of the rounds
and the ratio to uvicorn (h11, asyncio loop).

    python -m benchmarks.http_servers --rounds 5 --duration 10
    python -m benchmarks.http_servers --fast        # + uvicorn httptools/uvloop, gateway uvloop

This module also holds what the WebSocket benchmarks share: the server definitions, starting
and stopping them (never leaving one behind, Ctrl-C included), CPU and memory readings from
/proc, and the table printing.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import functools
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata, util
from pathlib import Path
from types import FrameType
from typing import Any

HOST = "127.0.0.1"
SERVER_CPU = 0
CLIENT_CPU = 1
ROOT = Path(__file__).resolve().parent.parent
HTTP_APP = "benchmarks.apps:hello"
WS_APP = "benchmarks.apps:echo"
BASELINE = "uvicorn"

# --------------------------------------------------------------------------------------------
# Servers


@functools.cache
def gateway_help() -> str | None:
    """``python -m roomcast.gateway --help`` output, or None when the gateway cannot run yet."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "roomcast.gateway", "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout + proc.stderr


def _module_missing(*modules: str) -> str | None:
    missing = [name for name in modules if util.find_spec(name) is None]
    return f"not installed: {', '.join(missing)} (bash benchmarks/setup.sh)" if missing else None


def _gateway_missing() -> str | None:
    if gateway_help() is None:
        return "`python -m roomcast.gateway --help` does not run yet"
    return None


def _gateway_uvloop_missing() -> str | None:
    help_text = gateway_help()
    if help_text is None:
        return "`python -m roomcast.gateway --help` does not run yet"
    if "--loop" not in help_text or "uvloop" not in help_text:
        return "the gateway has no `--loop uvloop` option"
    return _module_missing("uvloop")


@dataclass(frozen=True)
class ServerSpec:
    """One server configuration: how to start it on a port with an app, and what it needs."""

    name: str
    label: str
    args: Callable[[str, int], list[str]]  # (app, port) -> arguments after the interpreter
    missing: Callable[[], str | None]  # why it cannot run here, or None
    extra: tuple[str, ...] = ()

    def argv(self, app: str, port: int) -> list[str]:
        return [sys.executable, *self.args(app, port), *self.extra]


def _gateway(app: str, port: int, loop: str = "asyncio") -> list[str]:
    args = ["-m", "roomcast.gateway", app, "-b", HOST, "-p", str(port)]
    # The gateway's --loop auto takes uvloop when installed: name the loop, so that the plain
    # entry is the pure-Python stack the issue compares with uvicorn-h11 on asyncio.
    if "--loop" in (gateway_help() or ""):
        args += ["--loop", loop]
    return args


def _gateway_uvloop(app: str, port: int) -> list[str]:
    return _gateway(app, port, "uvloop")


def _uvicorn(app: str, port: int) -> list[str]:
    return [
        "-m", "uvicorn", app, "--host", HOST, "--port", str(port),
        "--http", "h11", "--ws", "wsproto", "--loop", "asyncio",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def _uvicorn_fast(app: str, port: int) -> list[str]:
    return [
        "-m", "uvicorn", app, "--host", HOST, "--port", str(port),
        "--http", "httptools", "--ws", "websockets", "--loop", "uvloop",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def _daphne(app: str, port: int) -> list[str]:
    # No --access-log: Daphne writes none unless asked, like the others here.
    return ["-m", "daphne", "-b", HOST, "-p", str(port), app]


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec("gateway", "gateway", _gateway, _gateway_missing),
        ServerSpec("gateway-uvloop", "gateway uvloop", _gateway_uvloop, _gateway_uvloop_missing),
        ServerSpec(
            "uvicorn",
            "uvicorn (h11, wsproto, asyncio)",
            _uvicorn,
            lambda: _module_missing("uvicorn", "h11", "wsproto"),
        ),
        ServerSpec(
            "uvicorn-fast",
            "uvicorn (httptools, websockets, uvloop)",
            _uvicorn_fast,
            lambda: _module_missing("uvicorn", "httptools", "uvloop", "websockets"),
        ),
        ServerSpec("daphne", "daphne", _daphne, lambda: _module_missing("daphne")),
    )
}
DEFAULT_SERVERS = ("gateway", "uvicorn", "daphne")
FAST_SERVERS = ("gateway-uvloop", "uvicorn-fast")


def add_server_arguments(
    parser: argparse.ArgumentParser,
    servers: Sequence[str] = tuple(SERVERS),
    default: Sequence[str] = DEFAULT_SERVERS,
    fast: Sequence[str] = FAST_SERVERS,
) -> None:
    """``--servers`` (from ``servers``), ``--fast``, ``--gateway-args``, ``--quiet-wait``,
    ``--quiet-load`` and ``--json``: what every server benchmark here takes."""
    parser.add_argument(
        "--servers",
        default=",".join(default),
        help=f"comma-separated, from {', '.join(servers)} (default: %(default)s)",
    )
    parser.add_argument("--fast", action="store_true", help=f"also run {' and '.join(fast)}")
    parser.add_argument(
        "--gateway-args",
        default="",
        help="extra command-line arguments for the gateway, e.g. '--limit-concurrency 20000'",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for other processes to leave the two CPUs"
        " below --quiet-load (a shared machine); 0 never waits (default: %(default)s)",
    )
    parser.add_argument(
        "--quiet-load",
        type=float,
        default=0.10,
        metavar="SHARE",
        help="load on either CPU from other processes that counts as quiet (default: %(default)s)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every reading as JSON here")


def selected_servers(args: argparse.Namespace) -> tuple[list[ServerSpec], dict[str, str]]:
    """The specs to run and, for those that cannot run here, why (they are skipped)."""
    names = [name.strip() for name in args.servers.split(",") if name.strip()]
    if args.fast:
        names += [name for name in FAST_SERVERS if name not in names]
    unknown = [name for name in names if name not in SERVERS]
    if unknown:
        raise SystemExit(f"unknown server(s): {', '.join(unknown)}; known: {', '.join(SERVERS)}")
    extra = tuple(shlex.split(args.gateway_args))
    specs: list[ServerSpec] = []
    skipped: dict[str, str] = {}
    for name in names:
        spec = SERVERS[name]
        if name.startswith("gateway") and extra:
            spec = ServerSpec(spec.name, spec.label, spec.args, spec.missing, extra)
        reason = spec.missing()
        if reason is None:
            specs.append(spec)
        else:
            skipped[name] = reason
            print(f"skipping {name}: {reason}", file=sys.stderr)
    return specs, skipped


# --------------------------------------------------------------------------------------------
# Processes: started in their own session, always stopped


_LIVE: set[subprocess.Popen[Any]] = set()


def kill_group(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGINT (graceful for every server here), then SIGTERM, then SIGKILL, to the group."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    # Whatever the leader left behind in its group (workers) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    _LIVE.discard(proc)


def _kill_all_live() -> None:
    for proc in list(_LIVE):
        kill_group(proc, grace=1.0)


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Popen in a new session (so Ctrl-C reaches us, not it) that is killed if we exit."""
    proc: subprocess.Popen[Any] = subprocess.Popen(
        list(argv), start_new_session=True, stdin=subprocess.DEVNULL, **kwargs
    )
    _LIVE.add(proc)
    return proc


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_cleanup() -> None:
    """Run ``finally`` blocks on SIGTERM/SIGHUP/SIGINT, and kill leftovers at exit."""
    atexit.register(_kill_all_live)
    # SIGINT too: a shell's background job starts with it ignored, which Python inherits.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)


def pin_self_to_client_cpu() -> None:
    """Keep the harness itself off the server's CPU."""
    if (os.cpu_count() or 1) > CLIENT_CPU:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {CLIENT_CPU})


def pinned(cpu: int, argv: Sequence[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > cpu:
        return ["taskset", "-c", str(cpu), *argv]
    return list(argv)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerFailed(RuntimeError):
    pass


@dataclass
class Server:
    spec: ServerSpec
    proc: subprocess.Popen[Any]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ServerFailed(
                f"{self.spec.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
            )


def http_get(port: int, timeout: float = 5.0) -> bytes:
    request = f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
    chunks = []
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request)
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            response = http_get(server.port, timeout=2.0)
        except OSError as exc:
            last = exc
            time.sleep(0.1)
            continue
        head, _, body = response.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200") or body != b"Hello, world!":
            raise ServerFailed(f"{server.spec.name} answered GET / with {response[:300]!r}")
        return
    raise ServerFailed(
        f"{server.spec.name} not ready on port {server.port} after {timeout:.0f} s ({last}):\n"
        f"{server.log_tail()}"
    )


@contextlib.contextmanager
def running_server(
    spec: ServerSpec, app: str, *, nofile: int | None = None, ready_timeout: float = 30.0
) -> Iterator[Server]:
    """Start ``spec`` serving ``app`` on a free port, pinned to CPU 0; stop it on exit."""
    port = free_port()
    argv = pinned(SERVER_CPU, spec.argv(app, port))
    if nofile is not None and shutil.which("prlimit"):
        argv = ["prlimit", f"--nofile={nofile}:{nofile}", *argv]
    log_dir = Path(tempfile.mkdtemp(prefix="roomcast-bench-"))
    log = log_dir / f"{spec.name}.log"
    # Settings from the environment (ROOMCAST_PORT, UVICORN_...) would skew a comparison.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROOMCAST_", "UVICORN_"))}
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("wb") as log_file:
        proc = spawn(argv, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = Server(spec, proc, port, log)
    try:
        _wait_ready(server, ready_timeout)
        yield server
        server.check_alive()
    finally:
        kill_group(proc)
        shutil.rmtree(log_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Readings from /proc

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server may fork workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLK_TCK


def cpu_busy(cpu: int) -> float:
    """Seconds CPU ``cpu`` has spent on processes (user, nice, system) or lost to the
    hypervisor (steal) since boot, from /proc/stat. Interrupts and softirqs are left out: on
    loopback they are mostly the benchmark's own packets."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(int, line.split()[1:9])
            return (user + nice + system + steal) / _CLK_TCK
    return 0.0


def busy_cpus() -> tuple[float, float]:
    return cpu_busy(SERVER_CPU), cpu_busy(CLIENT_CPU)


def other_load(
    before: tuple[float, float], elapsed: float, reading: dict[str, Any]
) -> dict[str, float]:
    """Share of each pinned CPU that went to anything but the server and the load generator
    over a window: the noise of a shared machine (``reading`` has their ``*_cpu`` shares)."""
    after = busy_cpus()
    server = reading.get("server_cpu", 0.0) * elapsed
    client = reading.get("client_cpu", 0.0) * elapsed
    return {
        "cpu0_other": max(0.0, after[0] - before[0] - server) / elapsed,
        "cpu1_other": max(0.0, after[1] - before[1] - client) / elapsed,
    }


def other_load_cell(results: Results, name: str) -> str:
    cpu0 = 100 * (results.median(name, "cpu0_other") or 0)
    cpu1 = 100 * (results.median(name, "cpu1_other") or 0)
    return f"{cpu0:.0f} / {cpu1:.0f}"


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and Pss (KiB) of ``pid`` and its descendants, summed."""
    rss = pss = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return {"rss_kib": rss, "pss_kib": pss}


# --------------------------------------------------------------------------------------------
# Rounds, machine notes, tables


@dataclass
class Results:
    """Readings per server, one dict per round; a server that failed is dropped with a reason."""

    benchmark: str
    args: dict[str, Any]
    rounds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def median(self, server: str, key: str) -> float | None:
        values = [r[key] for r in self.rounds.get(server, []) if r.get(key) is not None]
        return statistics.median(values) if values else None

    def write_json(self, path: str, labels: dict[str, str]) -> None:
        document = {
            "benchmark": self.benchmark,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "args": self.args,
            "servers": {
                name: {"label": labels.get(name, name), "rounds": rounds}
                for name, rounds in self.rounds.items()
            },
            "failed": self.failed,
            "skipped": self.skipped,
        }
        Path(path).write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {path}")


def wait_for_quiet(max_wait: float, threshold: float) -> float:
    """Wait (up to ``max_wait`` s) until neither CPU is more than ``threshold`` busy over a
    second with nothing of ours running; return the load last seen on the busier CPU."""
    deadline = time.monotonic() + max_wait
    while True:
        before, started = busy_cpus(), time.monotonic()
        time.sleep(1.0)
        after, elapsed = busy_cpus(), time.monotonic() - started
        load = max(after[0] - before[0], after[1] - before[1]) / elapsed
        if load <= threshold or time.monotonic() >= deadline:
            return load


def run_interleaved(
    specs: Sequence[ServerSpec],
    rounds: int,
    results: Results,
    measure: Callable[[ServerSpec, int], dict[str, Any]],
) -> None:
    """``measure(spec, round)`` for every server in every round, rotating the order; before
    each, wait for the machine to be quiet (``--quiet-wait``)."""
    quiet_wait = results.args.get("quiet_wait", 0.0)
    quiet_load = results.args.get("quiet_load", 1.0)
    for round_no in range(rounds):
        shift = round_no % len(specs) if specs else 0
        for spec in [*specs[shift:], *specs[:shift]]:
            if spec.name in results.failed:
                continue
            if quiet_wait > 0:
                waited = time.monotonic()
                load = wait_for_quiet(quiet_wait, quiet_load)
                waited = time.monotonic() - waited
                if waited > 1.5:
                    state = "quiet" if load <= quiet_load else f"still {100 * load:.0f} % busy"
                    print(f"  waited {waited:.0f} s for other processes to leave ({state})")
            started = time.monotonic()
            try:
                reading = measure(spec, round_no)
            except (ServerFailed, OSError, subprocess.SubprocessError, ValueError) as exc:
                results.failed[spec.name] = f"round {round_no + 1}: {exc}"
                print(f"  {spec.name}: FAILED, dropped from the run: {exc}", file=sys.stderr)
                continue
            results.rounds.setdefault(spec.name, []).append(reading)
            summary = ", ".join(
                f"{key} {value:,.2f}" if isinstance(value, float) else f"{key} {value}"
                for key, value in reading.items()
            )
            took = time.monotonic() - started
            print(f"  round {round_no + 1}/{rounds} {spec.name}: {summary} ({took:.0f} s)")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    wrk = None
    if shutil.which("wrk"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
            wrk = (out.stdout + out.stderr).split("\n")[0].strip() or None
    packages = (
        "uvicorn", "h11", "wsproto", "httptools", "uvloop", "daphne", "twisted", "autobahn",
        "websockets",
    )  # fmt: skip
    source = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "gateway"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        source = f"{head}{' + uncommitted gateway/ changes' if dirty else ''}" if head else None
    return {
        "roomcast": source,
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk,
        "packages": {name: _version(name) for name in packages},
        "pinning": f"server on CPU {SERVER_CPU}, load generator on CPU {CLIENT_CPU}",
    }


def print_machine() -> None:
    info = machine_info()
    versions = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    print(
        f"{info['cpus']} CPUs ({info['cpu']}), Linux {info['kernel']}, Python {info['python']}"
        f"; {info['pinning']}\n{versions}; {info['wrk'] or 'wrk not installed'}"
        f"\nroomcast {info['roomcast'] or '(not a git checkout)'}"
    )


def print_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False
) -> None:
    """A rich table when rich is installed (and not --markdown), plain text otherwise."""
    if markdown:
        print(f"\n{title}\n")
        print("| " + " | ".join(columns) + " |")
        print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        print(f"\n{title}")
        for line in (columns, *rows):
            pairs = enumerate(zip(line, widths, strict=True))
            cells = [v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in pairs]
            print("  ".join(cells))
        return
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=max(200, shutil.get_terminal_size().columns)).print(table)


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def ratio(value: float | None, baseline: float | None) -> str:
    if value is None or not baseline:
        return "-"
    return f"{value / baseline:.2f}"


# --------------------------------------------------------------------------------------------
# wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, p50/p99 latency (ms), request and error counts from ``wrk --latency``."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    total = re.search(r"^\s+(\d+) requests in", output, re.M)
    if not (rps and p50 and p99 and total):
        raise ValueError(f"unexpected wrk output:\n{output}")
    errors = 0
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    return {
        "rps": float(rps.group(1)),
        "p50_ms": _ms(p50.group(1)),
        "p99_ms": _ms(p99.group(1)),
        "requests": int(total.group(1)),
        "errors": errors,
    }


def run_wrk(port: int, duration: float, connections: int, threads: int) -> dict[str, Any]:
    argv = pinned(
        CLIENT_CPU,
        [
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
            "--latency", f"http://{HOST}:{port}/",
        ],
    )  # fmt: skip
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=duration + 30)
    finally:
        kill_group(proc, grace=1.0)
    elapsed = time.monotonic() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise subprocess.SubprocessError(f"wrk exited with {proc.returncode}:\n{out}")
    reading = parse_wrk(out)
    # wrk is the only child reaped in between: its CPU use, to see whether it saturated.
    used = children.ru_utime + children.ru_stime
    used -= children_before.ru_utime + children_before.ru_stime
    reading["client_cpu"] = used / elapsed
    return reading


# --------------------------------------------------------------------------------------------
# The HTTP benchmark


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: bash benchmarks/setup.sh")
    install_cleanup()
    pin_self_to_client_cpu()
    specs, skipped = selected_servers(args)
    if not specs:
        raise SystemExit("no server can run")
    results = Results("http_servers", vars(args), skipped=skipped)
    per_run = args.duration + (args.warmup if args.warmup > 0 else 0) + 5
    print_machine()
    print(
        f"{len(specs)} servers x {args.rounds} rounds x ~{per_run:.0f} s"
        f" = ~{len(specs) * args.rounds * per_run / 60:.1f} min;"
        f" wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s on {HTTP_APP}"
    )

    def measure(spec: ServerSpec, round_no: int) -> dict[str, Any]:
        with running_server(spec, HTTP_APP) as server:
            if args.warmup > 0:
                run_wrk(server.port, args.warmup, args.connections, args.threads)
            cpu_before, busy_before = cpu_seconds(server.pid), busy_cpus()
            started = time.monotonic()
            reading = run_wrk(server.port, args.duration, args.connections, args.threads)
            elapsed = time.monotonic() - started
            reading["server_cpu"] = (cpu_seconds(server.pid) - cpu_before) / elapsed
            reading.update(other_load(busy_before, elapsed, reading))
            return reading

    try:
        run_interleaved(specs, args.rounds, results, measure)
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped; medians of the rounds done so far", file=sys.stderr)
    report_http(results, specs, args.markdown)
    if args.json:
        results.write_json(args.json, {spec.name: spec.label for spec in specs})


def report_http(results: Results, specs: Sequence[ServerSpec], markdown: bool) -> None:
    base = results.median(BASELINE, "rps")
    rows = []
    for spec in specs:
        if spec.name not in results.rounds:
            continue
        name = spec.name
        rounds = ", ".join(f"{r['rps']:,.0f}" for r in results.rounds[name])
        errors = sum(r["errors"] for r in results.rounds[name])
        rows.append(
            [
                spec.label,
                fmt(results.median(name, "rps")),
                ratio(results.median(name, "rps"), base),
                fmt(results.median(name, "p50_ms"), ".2f"),
                fmt(results.median(name, "p99_ms"), ".2f"),
                fmt(100 * (results.median(name, "server_cpu") or 0), ".0f"),
                fmt(100 * (results.median(name, "client_cpu") or 0), ".0f"),
                other_load_cell(results, name),
                str(errors),
                rounds,
            ]
        )
    a = results.args
    print_table(
        f"HTTP hello-world, median of {a['rounds']} rounds of {a['duration']:g} s,"
        f" wrk -t{a['threads']} -c{a['connections']}",
        [
            "server",
            "req/s",
            "x uvicorn",
            "p50 ms",
            "p99 ms",
            "server CPU %",
            "wrk CPU %",
            "other load % CPU0 / CPU1",
            "errors",
            "rounds",
        ],
        rows,
        markdown,
    )
    for name, reason in {**results.failed, **results.skipped}.items():
        print(f"{name}: {reason.splitlines()[0]}")


if __name__ == "__main__":
    main()
