"""database_sync_to_async: ORM code from async consumers, in a thread, connections tidied."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import asyncio, threading
import django
from django.conf import settings
settings.configure(DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                                          "NAME": ":memory:"}},
                   INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"])
django.setup()
from roomcast.consumers.db import aclose_old_connections, database_sync_to_async

@database_sync_to_async
def query(x):
    from django.db import connection
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s + 1", [x])
        return cursor.fetchone()[0], threading.current_thread() is threading.main_thread()

async def main():
    value, on_main = await query(41)
    await aclose_old_connections()
    print(value, on_main, query.__name__)

asyncio.run(main())
"""


def test_database_sync_to_async_runs_orm_code_off_the_event_loop() -> None:
    """Django is configured in a subprocess: this pytest process keeps it unconfigured."""
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["42", "False", "query"]
