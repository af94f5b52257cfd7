"""A real Django project and database: the communicators inside a ``TestCase`` (the connection
holding the test's transaction is not closed), ``ChannelsLiveServerTestCase`` (a live gateway
and a real WebSocket client), and neither needing ``channels`` or ``daphne``.

The Django TestCases are in ``tests/consumers/django_project/cases.py``; each test here runs
some of them with Django's test runner in a subprocess (``django_project.run``), so this pytest
process never configures Django, and asserts the runner's JSON summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CASES = "tests.consumers.django_project.cases"


def run_cases(
    tmp_path: Path, *labels: str, block: str | None = None, memory_db: bool = False
) -> tuple[dict[str, Any], str]:
    """Run ``CASES.<label>`` for each label; the summary and the runner's stderr."""
    env = {**os.environ, "ROOMCAST_TEST_DB_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    if memory_db:
        env["ROOMCAST_TEST_DB_MEMORY"] = "1"
    args = [sys.executable, "-m", "tests.consumers.django_project.run"]
    if block:
        args += ["--block", block]
    args += [f"{CASES}.{label}" for label in labels]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def assert_all_passed(summary: dict[str, Any], stderr: str, count: int) -> None:
    assert (summary["failures"], summary["errors"], summary["skipped"]) == ([], [], []), stderr
    assert summary["run"] == count, stderr


def test_communicators_keep_the_testcase_connection(tmp_path: Path) -> None:
    """Channels' tests/test_database.py, ours: a consumer queries through
    database_sync_to_async inside a TestCase, twice in a row, and sees the test's rows."""
    summary, stderr = run_cases(tmp_path, "CommunicatorDatabaseTests")
    assert_all_passed(summary, stderr, 4)


def test_without_our_communicators_the_connection_is_closed(tmp_path: Path) -> None:
    """The control: the same consumer under asgiref's communicator, and a direct call, close
    the TestCase's connection ("Cannot operate on a closed database")."""
    summary, stderr = run_cases(tmp_path, "AsgirefCommunicatorTests", "DirectCallTests")
    assert_all_passed(summary, stderr, 2)


def test_live_server_serves_the_project_with_the_test_database(tmp_path: Path) -> None:
    summary, stderr = run_cases(tmp_path, "LiveServerTests")
    assert_all_passed(summary, stderr, 6)


def test_live_server_refuses_an_in_memory_database(tmp_path: Path) -> None:
    summary, stderr = run_cases(tmp_path, "LiveServerInMemoryTests", memory_db=True)
    assert summary["run"] == 0
    assert summary["errors"] == [f"setUpClass ({CASES}.LiveServerInMemoryTests)"]
    assert "can not be used with in memory databases" in stderr
    assert "give DATABASES['default'] a TEST NAME that is a file" in stderr


def test_testing_needs_neither_channels_nor_daphne(tmp_path: Path) -> None:
    """Imports of channels and daphne raise ImportError in the subprocess; the communicators and
    the live server test case still work, and nothing even tried to import them."""
    summary, stderr = run_cases(
        tmp_path, "CommunicatorDatabaseTests", "LiveServerTests", block="channels,daphne"
    )
    assert_all_passed(summary, stderr, 10)
    assert summary["channels_probe"] == "blocked"
    assert summary["blocked_imports"] == []
    assert summary["loaded"] == []


def test_live_server_shutdown_closes_open_websockets_1001(tmp_path: Path) -> None:
    summary, stderr = run_cases(tmp_path, "LiveServerShutdownTests")
    assert_all_passed(summary, stderr, 1)


def test_live_server_that_cannot_start_fails_set_up_class(tmp_path: Path) -> None:
    summary, stderr = run_cases(tmp_path, "LiveServerPortInUseTests")
    assert_all_passed(summary, stderr, 1)
