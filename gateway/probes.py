"""Health and readiness answered by the gateway itself, before the app (``--health-path``,
``--ready-path``): a Django project gets them without writing a view.

- Liveness (``--health-path /healthz``): ``200 {"status": "alive"}`` whenever the loop turns
  to answer it. A blocked loop answers nothing, which is the point: the probe times out.
- Readiness (``--ready-path /readyz``): ``200 {"status": "ready"}``, or ``503 {"status":
  "not ready", "reasons": {...}}`` while the application's lifespan start-up has not
  completed, while the server drains after SIGTERM/SIGINT, and while any part of the process
  reports through :mod:`roomcast.readiness` (a channel layer that cannot reach Redis, say;
  the gateway imports that registry, never a layer).

Both answer GET and HEAD (405 otherwise), with ``cache-control: no-store``, on HTTP/1.1 and
HTTP/2, whatever ``--limit-concurrency`` says, and appear in the access log like any request.

With a probe path configured the server also listens earlier and longer: during the lifespan
start-up (probes are answered; requests for the app wait for the start-up to complete) and
while draining (probes are answered, other new requests get 503 and ``connection: close``),
so an orchestrator sees the 503 instead of a refused connection. Per process: with
``--workers N`` each worker answers for itself (its own start-up, its own registry). After a
kill -9 nothing answers (the probe fails, as it should); a restarted process starts not
ready until its start-up completes.
"""

from __future__ import annotations

import json
import os

from roomcast import readiness

from .config import ASGIApp, Config, Receive, Scope, Send
from .state import ServerState

_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


def probes_of(config: Config, state: ServerState) -> Probes:
    """The process's Probes (made on first use, kept on the state the connections share)."""
    probes = state.probes
    if not isinstance(probes, Probes):
        probes = state.probes = Probes(config, state)
    return probes


class Probes:
    """The ASGI apps that answer the probe paths of one server process."""

    def __init__(self, config: Config, state: ServerState) -> None:
        self.state = state
        self.paths: dict[bytes, ASGIApp] = {}
        if config.health_path:
            self.paths[config.health_path.encode()] = self.health
        if config.ready_path:
            self.paths[config.ready_path.encode()] = self.ready

    def match(self, target: bytes) -> ASGIApp | None:
        """The probe app for a request target (its path, the query ignored), or None."""
        return self.paths.get(target.partition(b"?")[0])

    def reasons(self) -> dict[str, str]:
        """Why this process is not ready: empty when it is."""
        found: dict[str, str] = {}
        if not self.state.app_started:
            found["lifespan"] = "application startup not complete"
        if self.state.closing:
            found["server"] = "shutting down"
        found.update(readiness.not_ready())
        return found

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _answer(scope, send, 200, {"status": "alive", "pid": os.getpid()})

    async def ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        reasons = self.reasons()
        if reasons:
            body = {"status": "not ready", "reasons": reasons, "pid": os.getpid()}
            await _answer(scope, send, 503, body)
        else:
            await _answer(scope, send, 200, {"status": "ready", "pid": os.getpid()})


async def _answer(scope: Scope, send: Send, status: int, body: dict[str, object]) -> None:
    headers = list(_HEADERS)
    if scope["method"] not in ("GET", "HEAD"):
        status, body = 405, {"status": "method not allowed"}
        headers.append((b"allow", b"GET, HEAD"))
    data = json.dumps(body).encode() + b"\n"
    headers.append((b"content-length", str(len(data)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
