"""What Redis did during a run, from its own INFO: commands, their time, CPU, network bytes.

A :class:`RedisProbe` reads ``INFO commandstats``, ``INFO stats`` and ``INFO cpu`` of every host
of a target before and after the measured window; :func:`delta` turns the two readings into the
work of the run, divided by the sends of the run in the report. The probe's own INFO traffic is
measured once with no load (two readings back to back) and subtracted; ``info`` commands are
left out of the counts.

Redis counts a command that a Lua script runs both on its own line and inside the script's
time, so ``usec`` (the sum of commandstats' ``usec``) counts script-run commands twice; it errs
against layers that use scripts, ours and channels_redis's alike. ``cpu_usec`` is the server
process's CPU time (``used_cpu_user`` + ``used_cpu_sys``), network I/O included.

:func:`ceiling` runs ``redis-benchmark`` (SET, and PUBLISH to a channel with no subscriber) for
the README's "how close to Redis's own limit" line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from .targets import BenchError, host_label

CONNECT_TIMEOUT = 2.0


def client_for(host: Any) -> Redis:
    options: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": 10}
    if isinstance(host, str):
        return Redis.from_url(host, **options)
    if isinstance(host, (list, tuple)):
        return Redis(host=host[0], port=host[1], **options)
    if isinstance(host, dict):
        extra = {k: v for k, v in host.items() if k != "address"}
        address = host.get("address")
        if isinstance(address, str):
            return Redis.from_url(address, **{**extra, **options})
        if isinstance(address, (list, tuple)):
            return Redis(host=address[0], port=address[1], **{**extra, **options})
        return Redis(**{**extra, **options})
    raise BenchError(f"cannot read INFO from Redis host {host!r}")


@dataclass
class Reading:
    commands: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (calls, usec)
    net_in: int = 0
    net_out: int = 0
    cpu: float = 0.0


@dataclass
class RedisWork:
    commands: int
    by_command: dict[str, int]
    usec: int
    cpu_usec: float
    net_in: int
    net_out: int

    def as_dict(self, sends: int) -> dict[str, Any]:
        per = max(sends, 1)
        return {
            "commands": self.commands,
            "by_command": self.by_command,
            "usec": self.usec,
            "cpu_usec": round(self.cpu_usec, 1),
            "net_in_bytes": self.net_in,
            "net_out_bytes": self.net_out,
            "per_send": {
                "commands": self.commands / per,
                "usec": self.usec / per,
                "cpu_usec": self.cpu_usec / per,
                "net_bytes": (self.net_in + self.net_out) / per,
            },
        }


class RedisProbe:
    """INFO readings of the Redis hosts of one target."""

    def __init__(self, hosts: list[Any]) -> None:
        self.labels = [host_label(host) for host in hosts]
        self._clients = [client_for(host) for host in hosts]
        self._overhead = Reading()

    def check(self) -> None:
        """Raise :class:`BenchError` naming the first host that does not answer PING."""
        for label, client in zip(self.labels, self._clients, strict=True):
            try:
                client.ping()
            except Exception as exc:
                raise BenchError(f"cannot reach Redis at {label}: {exc}") from None
        first = self.read()
        self._overhead = _minus(self.read(), first)

    def read(self) -> Reading:
        total = Reading()
        for client in self._clients:
            stats: dict[str, Any] = client.info("stats")
            cpu: dict[str, Any] = client.info("cpu")
            commandstats: dict[str, Any] = client.info("commandstats")
            total.net_in += int(stats["total_net_input_bytes"])
            total.net_out += int(stats["total_net_output_bytes"])
            total.cpu += float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
            for key, value in commandstats.items():
                name = key.removeprefix("cmdstat_")
                calls, usec = total.commands.get(name, (0, 0))
                total.commands[name] = (calls + int(value["calls"]), usec + int(value["usec"]))
        return total

    def close(self) -> None:
        for client in self._clients:
            client.close()


def _minus(after: Reading, before: Reading) -> Reading:
    commands = {}
    for name, (calls, usec) in after.commands.items():
        old_calls, old_usec = before.commands.get(name, (0, 0))
        commands[name] = (calls - old_calls, usec - old_usec)
    return Reading(
        commands,
        after.net_in - before.net_in,
        after.net_out - before.net_out,
        after.cpu - before.cpu,
    )


def delta(probe: RedisProbe, before: Reading, after: Reading) -> RedisWork:
    """The work between two readings, less the probe's own INFO traffic."""
    diff = _minus(after, before)
    overhead = probe._overhead
    by_command = {
        name: calls
        for name, (calls, _) in sorted(diff.commands.items(), key=lambda item: -item[1][0])
        if calls > 0 and name != "info"
    }
    usec = sum(u for name, (calls, u) in diff.commands.items() if calls > 0 and name != "info")
    return RedisWork(
        commands=sum(by_command.values()),
        by_command=by_command,
        usec=usec,
        cpu_usec=max(0.0, diff.cpu) * 1e6,
        net_in=max(0, diff.net_in - overhead.net_in),
        net_out=max(0, diff.net_out - overhead.net_out),
    )


_RATE = re.compile(r"([\d.]+) requests per second")


def ceiling(host: Any, requests: int = 200_000, clients: int = 50) -> dict[str, Any] | None:
    """``redis-benchmark`` SET and PUBLISH rates against ``host``; None without the tool."""
    tool = shutil.which("redis-benchmark")
    if tool is None or not isinstance(host, (str, list, tuple)):
        return None
    client = client_for(host)
    kwargs = client.connection_pool.connection_kwargs
    client.close()
    where = (
        ["-s", kwargs["path"]]
        if "path" in kwargs
        else ["-h", str(kwargs.get("host", "localhost")), "-p", str(kwargs.get("port", 6379))]
    )
    base = [tool, *where, "-q", "-n", str(requests), "-c", str(clients)]
    if kwargs.get("password"):
        base += ["-a", str(kwargs["password"])]
    result: dict[str, Any] = {"host": host_label(host), "requests": requests, "clients": clients}
    for name, extra in (("set", ["-t", "set"]), ("publish", ["publish", "bench.ceiling", "x"])):
        completed = subprocess.run(
            [*base, *extra], capture_output=True, text=True, timeout=120, check=False
        )
        match = _RATE.search(completed.stdout.replace("\r", "\n"))
        result[f"{name}_per_s"] = float(match.group(1)) if match else None
    return result
