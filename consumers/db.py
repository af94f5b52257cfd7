"""Django database access from async consumers: Channels' ``database_sync_to_async``.

Django's ORM is synchronous and keeps one connection per thread; a long-lived consumer thread
would hold a connection past ``CONN_MAX_AGE`` or across a database restart. These helpers run
the ORM code in asgiref's thread-sensitive executor and close stale connections around it, as
Django's request cycle does. Django is imported only when they run.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async

P = ParamSpec("P")
T = TypeVar("T")


def database_sync_to_async(func: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """``await database_sync_to_async(get_user)(pk)``, or use it as a decorator."""

    @functools.wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        from django.db import close_old_connections

        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(call, thread_sensitive=True)


async def aclose_old_connections() -> None:
    """Close connections past their age or unusable, from async code (as Channels does)."""
    from django.db import close_old_connections

    await sync_to_async(close_old_connections, thread_sensitive=True)()
