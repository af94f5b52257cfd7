"""Django database access from async consumers: Channels' ``database_sync_to_async``.

Django's ORM is synchronous and keeps one connection per thread; a long-lived consumer thread
would hold a connection past ``CONN_MAX_AGE`` or across a database restart. These helpers run
the ORM code in asgiref's thread-sensitive executor and close stale connections around it, as
Django's request cycle does (``close_old_connections``). Django is imported only when they run.

**Tests.** Inside a Django ``TestCase`` the connection holds the test's transaction, and
closing it breaks the test ("Cannot operate on a closed database" on the next query). So, as
Channels 4.2+ does, the test communicators of :mod:`roomcast.consumers.testing` keep
connections open: the application they run executes inside :func:`keep_connections`, under
which these helpers (and ``aclose_old_connections``) close nothing. Channels does it by patching
``close_old_connections`` process-wide while a communicator call waits; here a context variable
marks the application's task (and the threads ``sync_to_async`` runs for it), so code outside
the communicator, a live server thread for instance, still closes stale connections.

Faults: a database that went away (restart, failover) leaves a broken connection; the close
before the next call drops it and Django reconnects, so one call fails at most. A kill -9 of
the process loses only the transactions in flight.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async

__all__ = ["aclose_old_connections", "database_sync_to_async", "keep_connections"]

P = ParamSpec("P")
T = TypeVar("T")

_keeping: ContextVar[bool] = ContextVar("roomcast_keep_db_connections", default=False)


@contextlib.contextmanager
def keep_connections() -> Iterator[None]:
    """While in this context (and in tasks and ``sync_to_async`` threads started from it),
    ``database_sync_to_async`` and ``aclose_old_connections`` close no connection.

    The test communicators use it; a test may too, around its own calls in a ``TestCase``.
    """
    token = _keeping.set(True)
    try:
        yield
    finally:
        _keeping.reset(token)


def _close_old_connections() -> None:
    if _keeping.get():
        return
    from django.db import close_old_connections

    close_old_connections()


def database_sync_to_async(
    func: Callable[P, T],
    *,
    thread_sensitive: bool = True,
    executor: ThreadPoolExecutor | None = None,
) -> Callable[P, Awaitable[T]]:
    """``await database_sync_to_async(get_user)(pk)``, or use it as a decorator.

    ``thread_sensitive`` and ``executor`` are asgiref's ``sync_to_async`` options (the default
    runs in the one thread Django's ORM code shares; an ``executor`` needs
    ``thread_sensitive=False``, asgiref's rule).
    """

    @functools.wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        _close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            _close_old_connections()

    return sync_to_async(call, thread_sensitive=thread_sensitive, executor=executor)


async def aclose_old_connections() -> None:
    """Close connections past their age or unusable, from async code (as Channels does)."""
    await sync_to_async(_close_old_connections, thread_sensitive=True)()
