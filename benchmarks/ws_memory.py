"""Idle WebSocket memory: server KiB per open connection, gateway beside uvicorn and Daphne.

For each server (fresh process on ``benchmarks.apps:echo``, pinned to CPU 0, its open-file
limit raised with ``prlimit``): open and close a few connections so that lazy imports and
first-use caches are paid, read the server's memory, open ``--connections`` WebSockets from
this process (pinned to CPU 1, its own limit raised with ``setrlimit``), do one echo on each so
every connection is known to work and its app is parked in ``receive()``, let it settle, read
the memory again. KiB per connection = (after - before) / connections, from ``VmRSS`` (and
``Pss`` from ``smaps_rollup``) of the server process and any children. Then it holds them for
``--hold`` seconds and echoes on each again: "held" counts those that still answer.

    python -m benchmarks.ws_memory --connections 2000
    python -m benchmarks.ws_memory --connections 10000 --servers gateway    # capability check

The client is the raw one of ``benchmarks.ws_echo``: no extensions offered, pings answered.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.http_servers import (
    BASELINE,
    WS_APP,
    Results,
    ServerSpec,
    add_server_arguments,
    fmt,
    install_cleanup,
    memory_kib,
    pin_self_to_client_cpu,
    print_machine,
    print_table,
    ratio,
    run_interleaved,
    running_server,
    selected_servers,
)
from benchmarks.ws_echo import RawWebSocket, Stats, connect_many, raise_nofile

PAYLOAD = b"x" * 32


async def _echo_all(sockets: Sequence[RawWebSocket], timeout: float) -> int:
    """One round trip on each socket; how many answered."""
    outcomes = await asyncio.gather(*(ws.echo(timeout) for ws in sockets), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome
    return sum(1 for outcome in outcomes if outcome is None)


async def measure_server(pid: int, port: int, args: argparse.Namespace) -> dict[str, Any]:
    stats = Stats()
    warm, _ = await connect_many(port, 20, PAYLOAD, stats, 20, deflate=args.deflate)
    await _echo_all(warm, 10)
    for ws in warm:
        ws.abort()
    await asyncio.sleep(args.settle)
    before = memory_kib(pid)

    started = time.monotonic()
    sockets, errors = await connect_many(
        port,
        args.connections,
        PAYLOAD,
        stats,
        args.concurrency,
        timeout=args.connect_timeout,
        deflate=args.deflate,
    )
    open_seconds = time.monotonic() - started
    try:
        answered = await _echo_all(sockets, 60)
        await asyncio.sleep(args.settle)
        after = memory_kib(pid)
        opened = len(sockets)
        await asyncio.sleep(args.hold)
        held = await _echo_all([ws for ws in sockets if ws.open], 60)
    finally:
        for ws in sockets:
            ws.abort()
    per_conn = max(1, opened)
    return {
        "opened": opened,
        "deflate": sum(1 for ws in sockets if ws.inflater is not None),
        "answered": answered,
        "held": held,
        "open_seconds": open_seconds,
        "rss_before_kib": before["rss_kib"],
        "rss_after_kib": after["rss_kib"],
        "kib_per_conn_rss": (after["rss_kib"] - before["rss_kib"]) / per_conn,
        "kib_per_conn_pss": (after["pss_kib"] - before["pss_kib"]) / per_conn,
        "connect_errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes in flight")
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before each reading")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds held before re-echo")
    parser.add_argument(
        "--deflate",
        action="store_true",
        help="offer permessage-deflate, as browsers do (servers that take it keep zlib state)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    add_server_arguments(parser)
    parser.set_defaults(quiet_wait=0.0)  # memory readings do not mind a busy CPU
    args = parser.parse_args(argv)

    install_cleanup()
    pin_self_to_client_cpu()
    limit = raise_nofile(args.connections + 1024)
    if limit < args.connections + 64:
        raise SystemExit(f"open-file limit {limit} is too low for {args.connections} connections")
    specs, skipped = selected_servers(args)
    if not specs:
        raise SystemExit("no server can run")
    results = Results("ws_memory", vars(args), skipped=skipped)
    print_machine()
    print(f"{len(specs)} servers x {args.rounds} rounds, {args.connections} idle WebSockets each")

    def measure(spec: ServerSpec, round_no: int) -> dict[str, Any]:
        nofile = args.connections + 4096
        with running_server(spec, WS_APP, nofile=nofile) as server:
            # Bounded: connecting, two echo passes, settling and holding.
            budget = 2 * args.connect_timeout + args.connections / 50 + 120 + args.hold
            coro = measure_server(server.pid, server.port, args)
            reading = asyncio.run(asyncio.wait_for(coro, budget))
            reading["server_alive"] = server.proc.poll() is None
            return reading

    try:
        run_interleaved(specs, args.rounds, results, measure)
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped; what was measured so far", file=sys.stderr)
    report(results, specs, args.markdown)
    if args.json:
        results.write_json(args.json, {spec.name: spec.label for spec in specs})


def report(results: Results, specs: Sequence[ServerSpec], markdown: bool) -> None:
    base = results.median(BASELINE, "kib_per_conn_rss")
    rows = []
    for spec in specs:
        name = spec.name
        if name not in results.rounds:
            continue
        last = results.rounds[name][-1]
        rows.append(
            [
                spec.label,
                f"{last['opened']:,}/{results.args['connections']:,}",
                f"{last['held']:,}",
                f"{last['deflate']:,}",
                fmt((results.median(name, "rss_before_kib") or 0) / 1024, ".1f"),
                fmt((results.median(name, "rss_after_kib") or 0) / 1024, ".1f"),
                fmt(results.median(name, "kib_per_conn_rss"), ".1f"),
                ratio(results.median(name, "kib_per_conn_rss"), base),
                fmt(results.median(name, "kib_per_conn_pss"), ".1f"),
                fmt(results.median(name, "open_seconds"), ".1f"),
            ]
        )
    print_table(
        f"Idle WebSockets: server memory, {results.args['connections']:,} connections,"
        f" median of {results.args['rounds']} round(s)",
        [
            "server", "opened", "held", "deflate", "RSS before MiB", "RSS after MiB",
            "KiB/conn (RSS)", "x uvicorn", "KiB/conn (PSS)", "open s",
        ],
        rows,
        markdown,
    )  # fmt: skip
    for spec in specs:
        for reading in results.rounds.get(spec.name, []):
            if reading["first_error"]:
                failed, first = reading["connect_errors"], reading["first_error"]
                print(f"{spec.name}: {failed} connections failed, e.g. {first}")
    for name, reason in {**results.failed, **results.skipped}.items():
        print(f"{name}: {reason.splitlines()[0]}")


if __name__ == "__main__":
    main()
