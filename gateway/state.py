"""What one gateway process shares between its server loop and its connections."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Protocol

from .metrics import GatewayMetrics


class Connection(Protocol):
    """What the server asks of every connection it tracks."""

    def shutdown(self, restart: bool = False) -> None:
        """Begin a graceful close: finish in-flight requests, close WebSockets 1001 (1012)."""

    def abort(self) -> None:
        """Close now (the graceful timeout ran out)."""


@dataclass
class Counters:
    """Per-process figures for logs and tests."""

    requests: int = 0
    websockets: int = 0
    rejected_overload: int = 0  # 503 for --limit-concurrency
    slow_clients_closed: int = 0  # WebSocket clients that stopped reading
    bad_requests: int = 0


@dataclass
class ServerState:
    connections: set[Connection] = field(default_factory=set)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    app_state: dict[str, Any] = field(default_factory=dict)  # lifespan "state", per-scope copy
    counters: Counters = field(default_factory=Counters)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)  # exported (metrics.py)
    closing: bool = False
    app_started: bool = True  # the lifespan start-up completed (the Server sets it False first)
    probes: Any = None  # probes.Probes, made on first use (see probes_of)
    active: int = 0  # requests and WebSockets the app is handling now
    server_header: bytes | None = b"roomcast"
    _date_second: int = 0
    _date_header: bytes = b""

    def date_header(self) -> bytes:
        """The Date header value, formatted at most once a second."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_header = formatdate(now, usegmt=True).encode()
        return self._date_header

    def default_headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"date", self.date_header())]
        if self.server_header:
            headers.append((b"server", self.server_header))
        return headers
