"""Fixtures for the gateway tests: an in-process HTTP/1.1 server on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NamedTuple

import pytest
from roomcast.gateway.config import ASGIApp, Config
from roomcast.gateway.connections.http1 import HTTP1Connection
from roomcast.gateway.state import ServerState


class RunningServer(NamedTuple):
    host: str
    port: int
    state: ServerState


Serve = Callable[..., Awaitable[RunningServer]]


async def close_servers(servers: list[tuple[asyncio.Server, ServerState]]) -> None:
    """Stop accepting, abort every connection, and wait (bounded) for every stream task."""
    for server, state in servers:
        server.close()
        for connection in list(state.connections):
            connection.abort()
        for task in list(state.tasks):
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.gather(*state.tasks, return_exceptions=True), 5)
        await server.wait_closed()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """``await serve(app, **config_overrides)`` → ``(host, port, state)``; closed at teardown.

    Each call starts one server with a ``Config(app=app, **overrides)`` and a fresh
    ``ServerState()``. At teardown every connection is aborted and every stream task ends.
    """
    servers: list[tuple[asyncio.Server, ServerState]] = []

    async def start(app: ASGIApp, **overrides: Any) -> RunningServer:
        config = Config(app=app, **overrides)
        state = ServerState()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: HTTP1Connection(config, app, state), "127.0.0.1", 0
        )
        servers.append((server, state))
        port = server.sockets[0].getsockname()[1]
        return RunningServer("127.0.0.1", port, state)

    yield start

    await close_servers(servers)
    await asyncio.sleep(0)  # let the transports' connection_lost callbacks run


@pytest.fixture
def error_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """``caplog`` that sees ``roomcast.gateway.error`` even if logging was set not to propagate."""
    logger = logging.getLogger("roomcast.gateway.error")
    saved = logger.level, logger.disabled, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.DEBUG)
    logger.disabled = False
    logger.propagate = False  # caplog's handler sits on this logger: each record once
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(saved[0])
        logger.disabled, logger.propagate = saved[1], saved[2]


class RunningTLSServer(NamedTuple):
    host: str
    port: int
    state: ServerState
    cafile: str  # the server's self-signed certificate: what a client verifies it with


ServeTLS = Callable[..., Awaitable[RunningTLSServer]]


@pytest.fixture
async def serve_tls(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServeTLS]:
    """Like ``serve``, over TLS with a throwaway certificate for 127.0.0.1.

    ``await serve_tls(app, **config_overrides)`` → ``(host, port, state, cafile)``; the server
    offers what ``Config.ssl_context()`` offers (ALPN ``h2`` and ``http/1.1``).
    """
    from tests.tls_support import self_signed_certificate

    certfile, keyfile = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    servers: list[tuple[asyncio.Server, ServerState]] = []

    async def start(app: ASGIApp, **overrides: Any) -> RunningTLSServer:
        config = Config(app=app, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile), **overrides)
        state = ServerState()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: HTTP1Connection(config, app, state),
            "127.0.0.1",
            0,
            ssl=config.ssl_context(),
        )
        servers.append((server, state))
        port = server.sockets[0].getsockname()[1]
        return RunningTLSServer("127.0.0.1", port, state, str(certfile))

    yield start

    await close_servers(servers)
    await asyncio.sleep(0)
