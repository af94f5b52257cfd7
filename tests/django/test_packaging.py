"""roomcast replaces Channels for a Django project: the ``[django]`` extra brings Django only,
and ``roomcast`` itself imports without Django installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Makes every import of django fail, as if it were not installed.
NO_DJANGO = """
import importlib.abc
import sys


class NoDjango(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "django" or name.startswith("django."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoDjango())
"""


def test_the_django_extra_is_django_without_channels() -> None:
    extra = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["django"]]
    names = {r.name.lower().replace("_", "-") for r in extra}
    assert names == {"django"}
    assert not names & {"channels", "channels-redis", "daphne"}
    [django] = extra
    assert django.specifier.contains("4.2")


def test_the_django_app_is_packaged() -> None:
    packages = PYPROJECT["tool"]["setuptools"]["packages"]
    assert {"roomcast.management", "roomcast.management.commands"} <= set(packages)


def run_without_django(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NO_DJANGO) + textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_roomcast_imports_without_django() -> None:
    done = run_without_django(
        """
        try:
            import django
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker does not block")
        import roomcast
        import roomcast.cli
        import roomcast.management
        import roomcast.management.commands
        assert not [name for name in sys.modules if name.split(".")[0] == "django"]
        print(roomcast.__version__)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_the_roomcast_command_runs_without_django() -> None:
    done = run_without_django(
        """
        import sys
        from roomcast.cli import main

        sys.argv = ["roomcast", "--help"]
        main()
        """
    )
    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout
