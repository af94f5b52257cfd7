"""Reconnect storm: N WebSocket handshakes at once over K gateway processes sharing a Redis.

What a deploy or a network blip does to a horizontally scaled chat: every client reconnects at
the same instant. Each client opens ``/room/<room>/`` on one of the gateways (round robin) at
once, and the consumer joins the room's group before it accepts (``group_add``), so every
handshake is a Redis call made concurrently with all the others. Reported: how many handshakes
were refused (anything but an accepted WebSocket followed by its ``joined`` answer), the time
until all were joined, the time until one message said by one client had reached all of them,
and, after all close at once, the time until the gateways hold no membership.

    python -m benchmarks.storm --clients 2000 --gateways 2 --rounds 3
    python -m benchmarks.storm client --clients 500 ws://127.0.0.1:8001 ws://127.0.0.1:8002

The first form starts a redis-server (no persistence) and the gateways (``python -m
roomcast.gateway tests.outages.app:application``) on free ports of 127.0.0.1 and runs
``--rounds`` storms; the second is the client alone (the tests run it as a subprocess), which
prints one JSON line. The client raises its own file limit (``RLIMIT_NOFILE``) to fit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
APP = "tests.outages.app:application"


def raise_file_limit(wanted: int) -> int:
    """Raise this process's open-file limit towards ``wanted`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


# The client ----------------------------------------------------------------------------------


async def storm(
    urls: list[str],
    clients: int,
    room: str = "storm",
    *,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Open ``clients`` WebSockets at once over ``urls``; say one message; close them all."""
    import websockets
    from websockets.asyncio.client import ClientConnection

    raise_file_limit(clients + 256)
    errors: dict[str, int] = {}

    def failed(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def one(index: int) -> ClientConnection | None:
        url = f"{urls[index % len(urls)]}/room/{room}/"
        try:
            client = await websockets.connect(
                url, open_timeout=timeout, ping_interval=None, max_queue=None
            )
        except websockets.InvalidStatus as exc:
            failed(f"HTTP {exc.response.status_code}")
            return None
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            failed(type(exc).__name__)
            return None
        try:
            joined = json.loads(await asyncio.wait_for(client.recv(), timeout))
        except (TimeoutError, websockets.ConnectionClosed) as exc:
            failed(f"not joined: {type(exc).__name__}")
            await client.close()
            return None
        if "joined" not in joined:
            failed("not joined")
        return client

    start = time.perf_counter()
    opened = await asyncio.gather(*(one(index) for index in range(clients)))
    join_seconds = time.perf_counter() - start
    connected = [client for client in opened if client is not None]

    heard = 0
    hear_seconds = None
    if connected:
        start = time.perf_counter()
        await connected[0].send(json.dumps({"say": "hello everyone", "n": 1}))

        async def hear(client: ClientConnection) -> bool:
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        message = json.loads(await client.recv())
                        if message.get("n") == 1:
                            return True
            except (TimeoutError, websockets.ConnectionClosed):
                return False

        heard = sum(await asyncio.gather(*(hear(client) for client in connected)))
        hear_seconds = time.perf_counter() - start

    start = time.perf_counter()
    closes = await asyncio.gather(*(client.close() for client in connected), return_exceptions=True)
    close_errors = sum(1 for result in closes if isinstance(result, BaseException))
    close_seconds = time.perf_counter() - start
    return {
        "clients": clients,
        "gateways": len(urls),
        "refused": clients - len(connected),
        "errors": errors,
        "joined": len(connected),
        "join_seconds": round(join_seconds, 3),
        "heard": heard,
        "hear_seconds": None if hear_seconds is None else round(hear_seconds, 3),
        "close_errors": close_errors,
        "close_seconds": round(close_seconds, 3),
    }


# The whole scenario --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as response:
        report: dict[str, Any] = json.loads(response.read())
        return report


def run_rounds(clients: int, gateways: int, rounds: int) -> list[dict[str, Any]]:
    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit("storm: redis-server is not installed")
    work = Path(tempfile.mkdtemp(prefix="roomcast-storm-"))
    redis_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    *(redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""),
                    *("--appendonly", "no", "--dir", str(work), "--maxclients", "10000"),
                ],
                stdout=subprocess.DEVNULL,
            )
        )
        wait_port(redis_port)
        env = {
            **os.environ,
            "OUTAGE_REDIS": f"redis://127.0.0.1:{redis_port}/0",
            "OUTAGE_PREFIX": "storm",
        }
        ports = [free_port() for _ in range(gateways)]
        for port in ports:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "roomcast.gateway", APP, "-p", str(port)],
                    cwd=ROOT,
                    env=env,
                    stderr=(work / f"gateway-{port}.log").open("wb"),
                )
            )
        for port in ports:
            wait_port(port)
        urls = [f"ws://127.0.0.1:{port}" for port in ports]
        results = []
        for number in range(rounds):
            result = asyncio.run(storm(urls, clients, room=f"storm{number}"))
            start = time.perf_counter()
            while any(stats(port)["local_memberships"] for port in ports):
                if time.perf_counter() - start > 60:
                    break
                time.sleep(0.05)
            result["left_seconds"] = round(time.perf_counter() - start, 3)
            print(json.dumps(result), file=sys.stderr)
            results.append(result)
        return results
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        parser = argparse.ArgumentParser(prog="python -m benchmarks.storm client")
        parser.add_argument("--clients", type=int, default=1000)
        parser.add_argument("--room", default="storm")
        parser.add_argument("--timeout", type=float, default=120.0)
        parser.add_argument("urls", nargs="+", help="ws://host:port of each gateway")
        args = parser.parse_args(argv[1:])
        result = asyncio.run(storm(args.urls, args.clients, args.room, timeout=args.timeout))
        print(json.dumps(result), flush=True)
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.storm", description=__doc__)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", metavar="FILE", help="write every round's figures here")
    args = parser.parse_args(argv)
    results = run_rounds(args.clients, args.gateways, args.rounds)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))

    def median(key: str) -> float:
        return statistics.median(result[key] or 0 for result in results)

    print(f"{args.clients} clients over {args.gateways} gateways, {args.rounds} round(s), medians:")
    print(f"  refused            {median('refused'):g}")
    print(f"  all joined after   {median('join_seconds'):.2f} s")
    print(f"  message heard by   {median('heard'):g} in {median('hear_seconds'):.2f} s")
    print(f"  all left after     {median('close_seconds') + median('left_seconds'):.2f} s")


if __name__ == "__main__":
    main()
