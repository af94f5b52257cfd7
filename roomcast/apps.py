"""``"roomcast"`` in ``INSTALLED_APPS``: ``manage.py runserver`` and ``runworker`` on roomcast.

List it before ``django.contrib.staticfiles`` (as Daphne asks for ``"daphne"``): Django runs
the ``runserver`` of the first app in ``INSTALLED_APPS`` that has one, and staticfiles has its
own (the WSGI development server). The system check ``roomcast.E001`` says so when another
app's ``runserver`` would win; ``roomcast.W001`` when ``channels`` (listed first) would run
``runworker``.

Only Django loads this module (``roomcast`` itself never imports Django).
"""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks

NAME = "roomcast"


class RoomcastConfig(AppConfig):  # type: ignore[misc]  # Django is untyped here
    """The Django app: its management commands are roomcast's runserver and runworker."""

    name = NAME
    verbose_name = "roomcast"

    def ready(self) -> None:
        checks.register(check_commands_are_ours, checks.Tags.staticfiles)


def check_commands_are_ours(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """``roomcast.E001``/``W001``: another app listed first would run runserver/runworker."""
    from django.core.management import get_commands

    commands = get_commands()
    problems: list[Any] = []
    runserver = commands.get("runserver")
    if runserver != NAME:
        problems.append(
            checks.Error(
                f"'roomcast' must be listed before {runserver!r} in INSTALLED_APPS: "
                f"'manage.py runserver' comes from {runserver!r}, not from roomcast.",
                hint="Put 'roomcast' above 'django.contrib.staticfiles' (and 'daphne').",
                id="roomcast.E001",
            )
        )
    runworker = commands.get("runworker")
    if runworker not in (None, NAME):
        problems.append(
            checks.Warning(
                f"'manage.py runworker' comes from {runworker!r}, not from roomcast: "
                f"{runworker!r} is listed before 'roomcast' in INSTALLED_APPS.",
                hint="Put 'roomcast' above it to run roomcast's worker.",
                id="roomcast.W001",
            )
        )
    return problems
