"""WebSocket echo round trips/s: the gateway, uvicorn (wsproto) and Daphne side by side.

Each round starts every server in turn (fresh process, free 127.0.0.1 port, pinned to CPU 0)
on ``benchmarks.apps:echo``, then a client process pinned to CPU 1 opens ``--connections``
WebSockets; each sends a text message, waits for its echo and sends the next, in a loop. After
a warm-up the client counts round trips for ``--duration`` seconds. Servers are interleaved
within each round (order rotating); the table gives medians and the ratio to uvicorn
(``--ws wsproto --loop asyncio``).

    python -m benchmarks.ws_echo --connections 50 --duration 10 --rounds 5

The default client (``--client raw``) is a minimal one written for this: an asyncio Protocol
per connection (on uvloop when installed) that writes a pre-masked frame and recognises the
echo by its bytes, answering pings and closes, so a Python server on the other core cannot
outrun it. ``--client websockets`` uses the ``websockets`` library's asyncio client instead
(``--compression deflate`` offers permessage-deflate, as browsers do); it costs several times
more CPU per round trip. The client's and the server's CPU use are in the table: a client
near 100 % means its figure is a floor, not the server's limit.

This module also holds the raw client that ``benchmarks.ws_memory`` uses.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
import zlib
from collections.abc import Sequence
from typing import Any, cast

from benchmarks.http_servers import (
    BASELINE,
    CLIENT_CPU,
    HOST,
    ROOT,
    WS_APP,
    Results,
    ServerSpec,
    add_server_arguments,
    busy_cpus,
    cpu_seconds,
    fmt,
    install_cleanup,
    kill_group,
    other_load,
    other_load_cell,
    pin_self_to_client_cpu,
    pinned,
    print_machine,
    print_table,
    ratio,
    run_interleaved,
    running_server,
    selected_servers,
    spawn,
)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# --------------------------------------------------------------------------------------------
# A minimal WebSocket client (RFC 6455, no extensions)


def client_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """One final, masked client frame."""
    length = len(payload)
    if length < 126:
        head = bytes([0x80 | opcode, 0x80 | length])
    elif length < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
    return head + mask + masked


def server_frame(opcode: int, payload: bytes) -> bytes:
    """The unmasked frame a server sends for ``payload``: how an echo looks on the wire."""
    length = len(payload)
    if length < 126:
        return bytes([0x80 | opcode, length]) + payload
    if length < 1 << 16:
        return bytes([0x80 | opcode, 126]) + length.to_bytes(2, "big") + payload
    return bytes([0x80 | opcode, 127]) + length.to_bytes(8, "big") + payload


class Stats:
    """Shared by all connections of one client: round trips and latencies while recording."""

    def __init__(self) -> None:
        self.recording = False
        self.round_trips = 0
        self.latencies: list[float] = []
        self.errors = 0
        self.closed = 0


class RawWebSocket(asyncio.Protocol):
    """One client WebSocket. ``start_loop()`` makes it echo back to back from its callbacks;
    otherwise ``await echo()`` does one round trip.

    With ``deflate`` it offers permessage-deflate as browsers do; if the server takes it, the
    client still sends plain frames (allowed) and inflates what comes back: enough for the
    server to hold its per-connection compression state (``benchmarks.ws_memory --deflate``).
    """

    def __init__(self, port: int, payload: bytes, stats: Stats, deflate: bool = False) -> None:
        self.port = port
        self.deflate = deflate
        self.inflater: Any = None  # zlib decompressobj once deflate is agreed
        self.fresh_inflater = False  # server_no_context_takeover: one per message
        self.compressed = False  # the message being received has RSV1 set
        self.payload = payload
        self.stats = stats
        self.frame = client_frame(0x1, payload, os.urandom(4))
        self.expected = server_frame(0x1, payload)
        self.key = base64.b64encode(os.urandom(16))
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.open = False
        self.looping = False
        self.sent_at = 0.0
        self.close_code: int | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.waiter: asyncio.Future[None] | None = None
        self.fragments: list[bytes] = []

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        offer = b"Sec-WebSocket-Extensions: permessage-deflate\r\n" if self.deflate else b""
        self.transport.write(
            b"GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
            % (HOST.encode(), self.port, self.key, offer)
        )

    def data_received(self, data: bytes) -> None:
        if self.open and not self.buffer and data == self.expected:
            self._echoed()  # the fast path: exactly one echo frame
            return
        self.buffer += data
        if not self.open:
            self._handshake()
        if self.open:
            self._frames()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open:
            self.stats.closed += 1
        self.open = False
        self.looping = False
        error = ConnectionError(f"connection lost (close code {self.close_code}, {exc})")
        for future in (self.opened, self.waiter):
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: a lost connection is counted, not logged

    # protocol

    def _handshake(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        lines = head.split("\r\n")
        accept = base64.b64encode(hashlib.sha1(self.key + GUID).digest()).decode()
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        if lines[0].split(" ")[1:2] != ["101"] or headers.get("sec-websocket-accept") != accept:
            if not self.opened.done():
                self.opened.set_exception(ConnectionError(f"handshake refused: {lines[0]}"))
            assert self.transport is not None
            self.transport.close()
            return
        extensions = headers.get("sec-websocket-extensions")
        if extensions is not None:
            if not self.deflate or not extensions.startswith("permessage-deflate"):
                self.opened.set_exception(ConnectionError(f"extension not offered: {extensions}"))
                assert self.transport is not None
                self.transport.close()
                return
            self.fresh_inflater = "server_no_context_takeover" in extensions
            self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self.open = True
        self.opened.set_result(None)

    def _frames(self) -> None:
        buffer = self.buffer
        while len(buffer) >= 2:
            opcode = buffer[0] & 0x0F
            fin = buffer[0] & 0x80
            length = buffer[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, offset = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, offset = int.from_bytes(buffer[2:10], "big"), 10
            if buffer[1] & 0x80 or len(buffer) < offset + length:
                if buffer[1] & 0x80:
                    self.stats.errors += 1  # servers must not mask
                    buffer.clear()
                return
            if opcode in (0x1, 0x2):
                self.compressed = bool(buffer[0] & 0x40)  # RSV1: a deflated message
            payload = bytes(buffer[offset : offset + length])
            del buffer[: offset + length]
            self._frame(opcode, bool(fin), payload)

    def _frame(self, opcode: int, fin: bool, payload: bytes) -> None:
        assert self.transport is not None
        if opcode in (0x0, 0x1, 0x2):
            self.fragments.append(payload)
            if not fin:
                return
            message = b"".join(self.fragments)
            self.fragments.clear()
            if self.compressed and self.inflater is not None:
                message = self.inflater.decompress(message + b"\x00\x00\xff\xff")
                if self.fresh_inflater:
                    self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            if message == self.payload:
                self._echoed()
            else:
                self.stats.errors += 1
        elif opcode == 0x9:  # ping
            self.transport.write(client_frame(0xA, payload, os.urandom(4)))
        elif opcode == 0x8:  # close: answer it, then the server closes the TCP connection
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            if self.open:
                self.transport.write(client_frame(0x8, payload[:2], os.urandom(4)))
            self.open = False

    def _echoed(self) -> None:
        stats = self.stats
        if self.looping:
            now = time.perf_counter()
            if stats.recording:
                stats.round_trips += 1
                stats.latencies.append(now - self.sent_at)
            self.sent_at = now
            assert self.transport is not None
            self.transport.write(self.frame)
        elif self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # API

    def start_loop(self) -> None:
        assert self.transport is not None
        self.looping = True
        self.sent_at = time.perf_counter()
        self.transport.write(self.frame)

    async def echo(self, timeout: float = 30.0) -> None:
        """One round trip: send the message, wait for it to come back."""
        if not self.open or self.transport is None:
            raise ConnectionError("not open")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(self.frame)
        await asyncio.wait_for(self.waiter, timeout)

    def abort(self) -> None:
        self.looping = False
        if self.transport is not None:
            self.transport.abort()


async def connect(
    port: int, payload: bytes, stats: Stats, timeout: float = 30.0, deflate: bool = False
) -> RawWebSocket:
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(
        loop.create_connection(lambda: RawWebSocket(port, payload, stats, deflate), HOST, port),
        timeout,
    )
    try:
        await asyncio.wait_for(protocol.opened, timeout)
    except BaseException:
        protocol.abort()
        raise
    return protocol


async def connect_many(
    port: int,
    count: int,
    payload: bytes,
    stats: Stats,
    concurrency: int,
    timeout: float = 30.0,
    deflate: bool = False,
) -> tuple[list[RawWebSocket], list[str]]:
    """Open ``count`` WebSockets, at most ``concurrency`` handshakes in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> RawWebSocket:
        async with gate:
            return await connect(port, payload, stats, timeout, deflate)

    outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    sockets = [o for o in outcomes if isinstance(o, RawWebSocket)]
    errors = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome
    return sockets, errors


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit towards ``wanted``; return what it is now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
    except (ValueError, OSError):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def use_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


# --------------------------------------------------------------------------------------------
# The client process (python -m benchmarks.ws_echo --worker ...)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(
    stats: Stats, warmup: float, duration: float, server_pid: int | None
) -> dict[str, Any]:
    await asyncio.sleep(warmup)
    server_before = cpu_seconds(server_pid) if server_pid else 0.0
    busy_before = busy_cpus()
    client_before = _cpu()
    started = time.perf_counter()
    stats.recording = True
    await asyncio.sleep(duration)
    stats.recording = False
    elapsed = time.perf_counter() - started
    reading: dict[str, Any] = {
        "rtps": stats.round_trips / elapsed,
        "round_trips": stats.round_trips,
        "client_cpu": (_cpu() - client_before) / elapsed,
    }
    if server_pid:
        reading["server_cpu"] = (cpu_seconds(server_pid) - server_before) / elapsed
    reading.update(other_load(busy_before, elapsed, reading))
    latencies = sorted(stats.latencies)
    if latencies:
        reading["p50_ms"] = 1e3 * latencies[len(latencies) // 2]
        reading["p99_ms"] = 1e3 * latencies[int(len(latencies) * 0.99)]
    return reading


async def raw_worker(args: argparse.Namespace) -> dict[str, Any]:
    stats = Stats()
    payload = b"x" * args.size
    sockets, errors = await connect_many(args.port, args.connections, payload, stats, 100)
    if errors:
        raise ConnectionError(f"{len(errors)} connections failed, first: {errors[0]}")
    for ws in sockets:
        ws.start_loop()
    try:
        reading = await _measure(stats, args.warmup, args.duration, args.server_pid)
    finally:
        for ws in sockets:
            ws.abort()
    reading["errors"] = stats.errors
    reading["closed_by_server"] = stats.closed
    return reading


async def websockets_worker(args: argparse.Namespace) -> dict[str, Any]:
    from websockets.asyncio.client import connect as ws_connect

    stats = Stats()
    payload = "x" * args.size
    compression = "deflate" if args.compression == "deflate" else None
    uri = f"ws://{HOST}:{args.port}/"
    ready = asyncio.Event()
    connected = 0

    async def one() -> None:
        nonlocal connected
        async with ws_connect(
            uri, compression=compression, ping_interval=None, max_size=None, open_timeout=30
        ) as ws:
            connected += 1
            await ready.wait()
            while True:
                sent_at = time.perf_counter()
                await ws.send(payload)
                if await ws.recv() != payload:
                    stats.errors += 1
                if stats.recording:
                    stats.round_trips += 1
                    stats.latencies.append(time.perf_counter() - sent_at)

    tasks = [asyncio.ensure_future(one()) for _ in range(args.connections)]
    try:
        deadline = time.monotonic() + 60
        while connected < args.connections:
            failed = [t for t in tasks if t.done()]
            if failed or time.monotonic() > deadline:
                error = failed[0].exception() if failed else TimeoutError("connecting")
                raise ConnectionError(f"connections failed: {error!r}")
            await asyncio.sleep(0.01)
        ready.set()
        reading = await _measure(stats, args.warmup, args.duration, args.server_pid)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    reading["errors"] = stats.errors
    return reading


def worker_main(args: argparse.Namespace) -> None:
    if args.client_loop == "uvloop" and not use_uvloop():
        raise SystemExit("uvloop not installed")
    raise_nofile(args.connections + 256)
    worker = raw_worker if args.client == "raw" else websockets_worker
    reading = asyncio.run(worker(args))
    reading["client_loop"] = args.client_loop
    print(json.dumps(reading), flush=True)


# --------------------------------------------------------------------------------------------
# The benchmark


def run_client(args: argparse.Namespace, port: int, server_pid: int) -> dict[str, Any]:
    argv = pinned(
        CLIENT_CPU,
        [
            sys.executable, "-m", "benchmarks.ws_echo", "--worker", "--port", str(port),
            "--server-pid", str(server_pid), "--connections", str(args.connections),
            "--duration", str(args.duration), "--warmup", str(args.warmup),
            "--size", str(args.size), "--client", args.client,
            "--compression", args.compression, "--client-loop", args.client_loop,
        ],
    )  # fmt: skip
    proc = spawn(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=args.warmup + args.duration + 90)
    finally:
        kill_group(proc, grace=1.0)
    if proc.returncode != 0:
        raise subprocess.SubprocessError(
            f"client exited with {proc.returncode}: {err.strip().splitlines()[-1:]}"
        )
    reading: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return reading


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured echo")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=32, help="message size in bytes (text)")
    parser.add_argument("--client", choices=("raw", "websockets"), default="raw")
    parser.add_argument(
        "--compression",
        choices=("none", "deflate"),
        default="none",
        help="permessage-deflate offer (--client websockets only)",
    )
    parser.add_argument(
        "--client-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop" if _has_uvloop() else "asyncio",
        help="the client's event loop (default: uvloop when installed)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    add_server_arguments(parser)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    if args.compression == "deflate" and args.client == "raw":
        raise SystemExit("--compression deflate needs --client websockets")

    install_cleanup()
    pin_self_to_client_cpu()
    specs, skipped = selected_servers(args)
    if not specs:
        raise SystemExit("no server can run")
    results = Results("ws_echo", vars(args), skipped=skipped)
    per_run = args.duration + args.warmup + 5
    print_machine()
    print(
        f"{len(specs)} servers x {args.rounds} rounds x ~{per_run:.0f} s"
        f" = ~{len(specs) * args.rounds * per_run / 60:.1f} min; {args.connections} connections,"
        f" {args.size}-byte text messages, {args.client} client on {args.client_loop}"
    )

    def measure(spec: ServerSpec, round_no: int) -> dict[str, Any]:
        with running_server(spec, WS_APP, nofile=args.connections + 1024) as server:
            return run_client(args, server.port, server.pid)

    try:
        run_interleaved(specs, args.rounds, results, measure)
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped; medians of the rounds done so far", file=sys.stderr)
    report(results, specs, args.markdown)
    if args.json:
        results.write_json(args.json, {spec.name: spec.label for spec in specs})


def _has_uvloop() -> bool:
    from importlib.util import find_spec

    return find_spec("uvloop") is not None


def report(results: Results, specs: Sequence[ServerSpec], markdown: bool) -> None:
    base = results.median(BASELINE, "rtps")
    rows = []
    saturated = []
    for spec in specs:
        name = spec.name
        if name not in results.rounds:
            continue
        client_cpu = results.median(name, "client_cpu") or 0.0
        if client_cpu > 0.9:
            saturated.append(name)
        rows.append(
            [
                spec.label,
                fmt(results.median(name, "rtps")),
                ratio(results.median(name, "rtps"), base),
                fmt(results.median(name, "p50_ms"), ".2f"),
                fmt(results.median(name, "p99_ms"), ".2f"),
                fmt(100 * (results.median(name, "server_cpu") or 0), ".0f"),
                fmt(100 * client_cpu, ".0f"),
                other_load_cell(results, name),
                str(sum(r.get("errors", 0) for r in results.rounds[name])),
                ", ".join(f"{r['rtps']:,.0f}" for r in results.rounds[name]),
            ]
        )
    a = results.args
    print_table(
        f"WebSocket echo, {a['connections']} connections, {a['size']}-byte text,"
        f" median of {a['rounds']} rounds of {a['duration']:g} s ({a['client']} client)",
        [
            "server", "round trips/s", "x uvicorn", "p50 ms", "p99 ms",
            "server CPU %", "client CPU %", "other load % CPU0 / CPU1", "errors", "rounds",
        ],
        rows,
        markdown,
    )  # fmt: skip
    for name in saturated:
        print(f"warning: the client used > 90 % of its CPU against {name}: a floor, not a limit")
    for name, reason in {**results.failed, **results.skipped}.items():
        print(f"{name}: {reason.splitlines()[0]}")


if __name__ == "__main__":
    main()
