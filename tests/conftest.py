"""Fixtures shared by the whole suite."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session; tests keep apart by using their own key prefix."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A redis-server for this test alone: it may kill, restart or partition it."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix unique to the test, so tests sharing a server never see each other."""
    import secrets

    return f"t{secrets.token_hex(4)}"


@pytest.fixture(autouse=True)
def _restore_project_logging() -> Iterator[None]:
    """Undo what an in-process server's dictConfig did to the project's loggers (handlers,
    levels, propagation), so a later test's caplog sees roomcast.* records again."""
    names = ("roomcast", "roomcast.gateway.error", "roomcast.gateway.access", "asyncio")
    loggers = [logging.getLogger(name) for name in names]
    saved = [(lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    yield
    for logger, (handlers, level, propagate, disabled) in zip(loggers, saved, strict=True):
        if logger.handlers != handlers:
            for handler in logger.handlers[:]:
                if handler not in handlers:
                    handler.close()
            logger.handlers[:] = handlers
        logger.level, logger.propagate, logger.disabled = level, propagate, disabled
