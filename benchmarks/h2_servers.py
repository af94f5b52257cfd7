"""HTTP/2 hello-world req/s: the gateway and hypercorn side by side, h2load as the load.

Each round starts every server in turn (fresh process, on a free 127.0.0.1 port, pinned to
CPU 0 with ``taskset``), runs ``h2load -n 100000 -c 10 -m 10`` pinned to CPU 1 against
``benchmarks.apps:hello`` (a shorter warm-up run first, not counted), then stops the server.
Cleartext by default: h2c by prior knowledge (h2load sends the HTTP/2 connection preface on a
plain TCP connection); with ``--tls`` both servers get a throwaway self-signed certificate and
h2load negotiates ``h2`` by ALPN over https:// (it offers nothing else). Servers are
interleaved within each round and the order rotates from round to round. The table gives the
median of the clean rounds (every request answered 2xx/3xx over h2), the ratio to hypercorn
(asyncio worker), h2load's mean time per request, and the server's CPU time per 1,000
requests. A round with failed, errored or timed-out requests, or that did not speak h2, is
left out of the medians and shown in the failures column: a server that does not speak
HTTP/2 yet shows every request failed, it does not stop the run.

    python -m benchmarks.h2_servers --rounds 5
    python -m benchmarks.h2_servers --tls                    # h2 over TLS, ALPN
    python -m benchmarks.h2_servers --servers hypercorn --requests 20000 --rounds 1

hypercorn closes a connection (GOAWAY) after 1,000 requests by default
(``keep_alive_max_requests``) and h2load does not reconnect, so 9 of every 10 requests would
fail: the harness gives it a TOML config (``--config``) that lifts that limit. The servers,
processes, /proc readings and tables are those of ``benchmarks.http_servers``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import resource
import shlex
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path
from typing import Any

from benchmarks.http_servers import (
    CLIENT_CPU,
    HOST,
    HTTP_APP,
    ROOT,
    SERVER_CPU,
    SERVERS,
    Results,
    Server,
    ServerFailed,
    ServerSpec,
    add_server_arguments,
    busy_cpus,
    cpu_seconds,
    fmt,
    free_port,
    install_cleanup,
    kill_group,
    machine_info,
    other_load,
    other_load_cell,
    pin_self_to_client_cpu,
    pinned,
    print_machine,
    print_table,
    ratio,
    run_interleaved,
    running_server,
    spawn,
)

BASELINE = "hypercorn"
# hypercorn's keep_alive_max_requests (default 1,000 per connection); h2load never reconnects.
HYPERCORN_CONFIG = "keep_alive_max_requests = 1_000_000_000\n"

# --------------------------------------------------------------------------------------------
# Servers


def _hypercorn(app: str, port: int, worker_class: str = "asyncio") -> list[str]:
    # Cleartext binds speak HTTP/1.1 and h2c by prior knowledge; no access log unless asked.
    return [
        "-m", "hypercorn", app, "--bind", f"{HOST}:{port}",
        "--worker-class", worker_class, "--log-level", "warning",
    ]  # fmt: skip


def _hypercorn_uvloop(app: str, port: int) -> list[str]:
    return _hypercorn(app, port, "uvloop")


def _missing(*modules: str) -> str | None:
    missing = [name for name in modules if util.find_spec(name) is None]
    return f"not installed: {', '.join(missing)} (bash benchmarks/setup.sh)" if missing else None


H2_SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        SERVERS["gateway"],  # the same command line as http_servers: --loop asyncio, no log
        SERVERS["gateway-uvloop"],
        ServerSpec(
            "hypercorn", "hypercorn (asyncio)", _hypercorn, lambda: _missing("hypercorn", "h2")
        ),
        ServerSpec(
            "hypercorn-uvloop",
            "hypercorn (uvloop)",
            _hypercorn_uvloop,
            lambda: _missing("hypercorn", "h2", "uvloop"),
        ),
    )
}
DEFAULT_SERVERS = ("gateway", "hypercorn")
FAST_SERVERS = ("gateway-uvloop", "hypercorn-uvloop")


@dataclass(frozen=True)
class Setup:
    """Files the servers are started with: hypercorn's config, the certificate under --tls."""

    hypercorn_config: Path
    certfile: Path | None = None
    keyfile: Path | None = None

    @property
    def tls(self) -> bool:
        return self.certfile is not None


def make_setup(directory: Path, tls: bool) -> Setup:
    config = directory / "hypercorn.toml"
    config.write_text(HYPERCORN_CONFIG)
    if not tls:
        return Setup(config)
    # The tests' helper: an EC key and a self-signed certificate for 127.0.0.1 (cryptography).
    from tests.tls_support import self_signed_certificate

    certfile, keyfile = self_signed_certificate(directory)
    return Setup(config, certfile, keyfile)


def server_extra(spec: ServerSpec, setup: Setup, gateway_args: Sequence[str]) -> tuple[str, ...]:
    """Arguments appended to a server's command line for this run."""
    if spec.name.startswith("gateway"):
        extra = list(gateway_args)
        if setup.tls:
            extra += ["--ssl-certfile", str(setup.certfile), "--ssl-keyfile", str(setup.keyfile)]
    else:
        extra = ["--config", str(setup.hypercorn_config)]
        if setup.tls:
            extra += ["--certfile", str(setup.certfile), "--keyfile", str(setup.keyfile)]
    return (*spec.extra, *extra)


def selected_h2_servers(
    args: argparse.Namespace, setup: Setup
) -> tuple[list[ServerSpec], dict[str, str]]:
    """The specs to run (with this run's extra arguments) and why the others are skipped."""
    names = [name.strip() for name in args.servers.split(",") if name.strip()]
    if args.fast:
        names += [name for name in FAST_SERVERS if name not in names]
    unknown = [name for name in names if name not in H2_SERVERS]
    if unknown:
        known = ", ".join(H2_SERVERS)
        raise SystemExit(f"unknown server(s): {', '.join(unknown)}; known: {known}")
    gateway_args = shlex.split(args.gateway_args)
    specs: list[ServerSpec] = []
    skipped: dict[str, str] = {}
    for name in names:
        spec = H2_SERVERS[name]
        reason = spec.missing()
        if reason is None:
            specs.append(dataclasses.replace(spec, extra=server_extra(spec, setup, gateway_args)))
        else:
            skipped[name] = reason
            print(f"skipping {name}: {reason}", file=sys.stderr)
    return specs, skipped


def https_get(port: int, timeout: float = 5.0) -> bytes:
    """``GET /`` over HTTP/1.1 and TLS (certificate not checked: it is our throwaway one)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    request = f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
    chunks = []
    with (
        socket.create_connection((HOST, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as sock,
    ):
        sock.sendall(request)
        with contextlib.suppress(ssl.SSLZeroReturnError, ssl.SSLEOFError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def running_h2_server(spec: ServerSpec, tls: bool, ready_timeout: float = 30.0) -> Iterator[Server]:
    """``running_server`` for cleartext; under TLS the same, with the readiness check (GET /
    answered ``Hello, world!`` over HTTP/1.1) made over TLS."""
    if not tls:
        with running_server(spec, HTTP_APP, ready_timeout=ready_timeout) as server:
            yield server
        return
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="roomcast-bench-"))
    log = log_dir / f"{spec.name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROOMCAST_", "UVICORN_"))}
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("wb") as log_file:
        proc = spawn(
            pinned(SERVER_CPU, spec.argv(HTTP_APP, port)),
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Server(spec, proc, port, log)
    try:
        deadline, last = time.monotonic() + ready_timeout, ""
        while True:
            server.check_alive()
            try:
                response = https_get(port, timeout=2.0)
            except OSError as exc:  # ssl.SSLError included
                if time.monotonic() > deadline:
                    raise ServerFailed(
                        f"{spec.name} not ready on port {port} after {ready_timeout:.0f} s"
                        f" ({last or exc}):\n{server.log_tail()}"
                    ) from exc
                last = str(exc)
                time.sleep(0.1)
                continue
            head, _, body = response.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200") or body != b"Hello, world!":
                raise ServerFailed(f"{spec.name} answered GET / with {response[:300]!r}")
            break
        yield server
        server.check_alive()
    finally:
        kill_group(proc)
        shutil.rmtree(log_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# h2load

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"unparsable h2load duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_h2load(output: str) -> dict[str, Any]:
    """Counts, req/s and request times (ms) from h2load's summary."""
    finished = re.search(r"^finished in (\S+), ([\d.]+) req/s", output, re.M)
    counts = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed,"
        r" (\d+) errored, (\d+) timeout",
        output,
        re.M,
    )
    times = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", output, re.M)
    if not (finished and counts and times):
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise ValueError(f"unexpected h2load output:\n{tail}")
    total, started, done, succeeded, failed, errored, timeout = map(int, counts.groups())
    protocol = re.search(r"^Application protocol: (\S+)", output, re.M)
    statuses = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output, re.M)
    return {
        "rps": float(finished.group(2)),
        "seconds": _ms(finished.group(1)) / 1e3,
        "mean_ms": _ms(times.group(3)),
        "max_ms": _ms(times.group(2)),
        "requests": total,
        "started": started,
        "done": done,
        "succeeded": succeeded,
        "failed": failed,
        "errored": errored,
        "timeout": timeout,
        "non2xx": sum(map(int, statuses.groups()[1:])) if statuses else None,
        "protocol": protocol.group(1) if protocol else None,
    }


def problems(reading: dict[str, Any]) -> list[str]:
    """What makes a run not count: anything but every request answered 2xx/3xx over h2."""
    found = []
    if reading.get("exit_code"):
        found.append(f"h2load exit {reading['exit_code']}")
    if reading["protocol"] is None:
        found.append("no protocol negotiated")
    elif reading["protocol"] not in ("h2", "h2c"):
        found.append(f"spoke {reading['protocol']}, not h2")
    for key in ("failed", "errored", "timeout"):
        if reading[key]:
            found.append(f"{reading[key]:,} {key}")
    if reading["succeeded"] != reading["requests"] and not found:
        found.append(f"{reading['succeeded']:,} of {reading['requests']:,} succeeded")
    return found


def h2load_argv(args: argparse.Namespace, port: int, requests: int) -> list[str]:
    scheme = "https" if args.tls else "http"
    argv = [
        "h2load", "-n", str(requests), "-c", str(args.clients), "-m", str(args.streams),
        "-t", "1", "-N", str(args.inactivity_timeout),
    ]  # fmt: skip
    if args.tls:
        argv.append("--npn-list=h2")  # offer h2 only: never a silent fallback to HTTP/1.1
    return pinned(CLIENT_CPU, [*argv, f"{scheme}://{HOST}:{port}/"])


def run_h2load(args: argparse.Namespace, port: int, requests: int) -> dict[str, Any]:
    """One h2load run: its readings, its own CPU share, whether it counts."""
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = spawn(
        h2load_argv(args, port, requests),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired as exc:
        raise subprocess.SubprocessError(
            f"h2load did not finish {requests:,} requests in {args.timeout:g} s"
        ) from exc
    finally:
        kill_group(proc, grace=1.0)
    elapsed = time.monotonic() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    reading = parse_h2load(out)
    if proc.returncode:
        reading["exit_code"] = proc.returncode
    used = children.ru_utime + children.ru_stime
    used -= children_before.ru_utime + children_before.ru_stime
    reading["client_cpu"] = used / elapsed  # h2load is the only child reaped in between
    reading["problems"] = problems(reading)
    reading["clean"] = not reading["problems"]
    return reading


def h2load_version() -> str | None:
    if not shutil.which("h2load"):
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["h2load", "--version"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
    return None


# --------------------------------------------------------------------------------------------
# The HTTP/2 benchmark


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", "-n", type=int, default=100_000, help="h2load -n")
    parser.add_argument("--clients", "-c", type=int, default=10, help="h2load -c (connections)")
    parser.add_argument(
        "--streams", "-m", type=int, default=10, help="h2load -m (concurrent streams each)"
    )
    parser.add_argument(
        "--warmup", type=int, default=10_000, help="requests of unmeasured load (0: none)"
    )
    parser.add_argument("--tls", action="store_true", help="https://, h2 by ALPN")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds one h2load run may take"
    )
    parser.add_argument(
        "--inactivity-timeout",
        type=int,
        default=10,
        metavar="SECONDS",
        help="h2load -N: a connection silent this long is closed, its requests count as"
        " timeouts (default: %(default)s)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    add_server_arguments(parser, tuple(H2_SERVERS), DEFAULT_SERVERS, FAST_SERVERS)
    args = parser.parse_args(argv)
    if not shutil.which("h2load"):
        print("h2load not found: apt-get install nghttp2-client", file=sys.stderr)
        raise SystemExit(2)
    install_cleanup()
    pin_self_to_client_cpu()
    # machine_info() is cached: what this benchmark adds shows in print_machine and --json.
    info = machine_info()
    info["h2load"] = h2load_version()
    info["packages"].update({name: _version(name) for name in ("hypercorn", "h2", "hpack")})
    with tempfile.TemporaryDirectory(prefix="roomcast-h2-") as directory:
        setup = make_setup(Path(directory), args.tls)
        specs, skipped = selected_h2_servers(args, setup)
        if not specs:
            raise SystemExit("no server can run")
        results = Results("h2_servers", vars(args), skipped=skipped)
        print_machine()
        print(
            f"{info['h2load']}; {len(specs)} servers x {args.rounds} rounds;"
            f" h2load -n {args.requests} -c {args.clients} -m {args.streams}"
            f" ({'h2 over TLS, ALPN' if args.tls else 'h2c, prior knowledge'}) on {HTTP_APP},"
            f" after {args.warmup:,} warm-up requests"
        )

        def measure(spec: ServerSpec, round_no: int) -> dict[str, Any]:
            with running_h2_server(spec, args.tls) as server:
                if args.warmup > 0:
                    run_h2load(args, server.port, args.warmup)
                cpu_before, busy_before = cpu_seconds(server.pid), busy_cpus()
                started = time.monotonic()
                reading = run_h2load(args, server.port, args.requests)
                elapsed = time.monotonic() - started
                used = cpu_seconds(server.pid) - cpu_before
                reading["server_cpu"] = used / elapsed
                reading["server_cpu_ms_per_1k"] = (
                    1e6 * used / reading["succeeded"] if reading["succeeded"] else None
                )
                reading.update(other_load(busy_before, elapsed, reading))
                return reading

        try:
            run_interleaved(specs, args.rounds, results, measure)
        except KeyboardInterrupt:
            print("\ninterrupted: servers stopped; medians of the rounds so far", file=sys.stderr)
    report_h2(results, specs, args.markdown)
    if args.json:
        labels = {spec.name: spec.label for spec in H2_SERVERS.values()}
        results.write_json(args.json, labels)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def clean_median(results: Results, server: str, key: str) -> float | None:
    """The median of ``key`` over the rounds that count (see ``problems``)."""
    values = [
        r[key] for r in results.rounds.get(server, []) if r["clean"] and r.get(key) is not None
    ]
    return statistics.median(values) if values else None


def percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f}"


def failures_cell(rounds: Sequence[dict[str, Any]]) -> str:
    bad = [r for r in rounds if not r["clean"]]
    if not bad:
        return "0"
    worst = max(bad, key=lambda r: r["requests"] - r["succeeded"])
    what = ", ".join(worst["problems"])
    return f"{len(bad)}/{len(rounds)} rounds: {what} (of {worst['requests']:,})"


def report_h2(results: Results, specs: Sequence[ServerSpec], markdown: bool) -> None:
    base = clean_median(results, BASELINE, "rps")
    rows = []
    for spec in specs:
        name = spec.name
        rounds = results.rounds.get(name, [])
        if not rounds:
            reason = results.failed.get(name, "no round finished").splitlines()[0]
            rows.append([spec.label, *["-"] * 8, f"failed: {reason}"])
            continue
        clean = [r["rps"] for r in rounds if r["clean"]]
        rps = clean_median(results, name, "rps")
        rows.append(
            [
                spec.label,
                fmt(rps),
                f"{min(clean):,.0f}-{max(clean):,.0f}" if clean else "-",
                ratio(rps, base),
                fmt(clean_median(results, name, "mean_ms"), ".2f"),
                fmt(clean_median(results, name, "server_cpu_ms_per_1k"), ",.1f"),
                percent(clean_median(results, name, "server_cpu")),
                percent(clean_median(results, name, "client_cpu")),
                other_load_cell(results, name) if clean else "-",
                failures_cell(rounds)
                + (f"; then failed: {results.failed[name]}" if name in results.failed else ""),
            ]
        )
    for name, reason in results.skipped.items():
        label = H2_SERVERS[name].label if name in H2_SERVERS else name
        rows.append([label, *["-"] * 8, f"skipped: {reason}"])
    a = results.args
    mode = "h2 over TLS (ALPN)" if a["tls"] else "h2c (prior knowledge)"
    print_table(
        f"HTTP/2 hello-world, {mode}, median of the clean rounds of {a['rounds']},"
        f" h2load -n {a['requests']} -c {a['clients']} -m {a['streams']}",
        [
            "server",
            "req/s",
            "min-max",
            "x hypercorn",
            "mean ms",
            "server CPU ms / 1k req",
            "server CPU %",
            "h2load CPU %",
            "other load % CPU0 / CPU1",
            "failures",
        ],
        rows,
        markdown,
    )
    for name, reason in {**results.failed, **results.skipped}.items():
        print(f"{name}: {reason.splitlines()[0]}")
    for spec in specs:
        share = clean_median(results, spec.name, "client_cpu")
        if share is not None and share > 0.9:
            print(
                f"warning: h2load used {100 * share:.0f} % of its CPU against {spec.name}:"
                " the load generator may be the limit there"
            )


if __name__ == "__main__":
    main()
