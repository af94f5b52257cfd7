"""``python -m tests.consumers.django_project.run LABEL...``: run Django test labels with
Django's runner (test database created and destroyed) and print one JSON line: tests run, the
ids of failures/errors/skips, and the ``channels``/``daphne`` imports that were attempted.

With ``--block channels,daphne`` a meta-path finder makes importing those packages raise
``ImportError`` (and records the attempt) before anything else is imported.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys
from typing import Any

ATTEMPTS: list[str] = []


class Blocker(importlib.abc.MetaPathFinder):
    """Refuses to import the top-level packages in ``names`` (and their submodules)."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname.split(".")[0] in self.names:
            ATTEMPTS.append(fullname)
            raise ImportError(f"{fullname} is blocked for this test", name=fullname)
        return None


def main(argv: list[str]) -> int:
    if argv[:1] == ["--block"]:
        blocked = set(argv[1].split(","))
        for name in list(sys.modules):
            if name.split(".")[0] in blocked:
                del sys.modules[name]
        sys.meta_path.insert(0, Blocker(blocked))
        argv = argv[2:]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.consumers.django_project.settings")

    import django
    from django.test.runner import DiscoverRunner

    django.setup()

    class Runner(DiscoverRunner):
        result: Any = None

        def run_suite(self, suite: Any, **kwargs: Any) -> Any:
            self.result = super().run_suite(suite, **kwargs)
            return self.result

    runner = Runner(verbosity=2, interactive=False)
    runner.run_tests(argv)
    result = runner.result
    attempts = list(ATTEMPTS)
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("channels", "daphne"))
    try:  # the blocker really blocks (probed after the tests, so not counted as an attempt)
        import channels  # noqa: F401
    except ImportError:
        probe = "blocked"
    else:
        probe = "importable"
    print(
        json.dumps(
            {
                "run": result.testsRun,
                "failures": [test.id() for test, _ in result.failures],
                "errors": [test.id() for test, _ in result.errors],
                "skipped": [test.id() for test, _ in result.skipped],
                "blocked_imports": attempts,
                "channels_probe": probe,
                "loaded": loaded,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
