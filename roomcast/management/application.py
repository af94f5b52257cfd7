"""The project's ASGI application, named by ``settings.ASGI_APPLICATION`` (Channels' setting).

``ASGI_APPLICATION = "mysite.asgi.application"`` is a dotted path: the module
``mysite.asgi`` and its attribute ``application``. Every mistake in the setting (unset, not a
dotted path, no such module, no such attribute, not callable) is one ``CommandError`` naming
the setting, so ``manage.py runserver`` and ``runworker`` end with one line and status 1.

An exception raised *inside* the module (a bug in the project's code, an import the module
itself makes) is not a mistake in the setting: it propagates with its traceback, which the
user needs. Under runserver's autoreloader the server then waits for the file to be fixed, as
Django's own runserver does.
"""

from __future__ import annotations

import importlib
from typing import Any

from django.conf import settings
from django.core.management import CommandError

SETTING = "ASGI_APPLICATION"
EXAMPLE = "mysite.asgi.application"


def application_path() -> str:
    """The setting's value, checked for shape only (nothing is imported)."""
    value = getattr(settings, SETTING, None)
    if value is None:
        raise CommandError(
            f"{SETTING} is not set: roomcast serves the project's ASGI application; add "
            f"{SETTING} = {EXAMPLE!r} (the application object of your asgi.py) to your settings"
        )
    module, _, attribute = value.rpartition(".") if isinstance(value, str) else ("", "", "")
    if not module or not attribute or module.startswith(".") or module.endswith("."):
        raise CommandError(
            f"{SETTING} = {value!r} is not a dotted path to an object, like {EXAMPLE!r}"
        )
    return str(value)


def serve_path() -> str:
    """The same application as ``roomcast serve`` names it: ``mysite.asgi:application``."""
    module, _, attribute = application_path().rpartition(".")
    return f"{module}:{attribute}"


def load_application() -> Any:
    """Import the application the setting names; ``CommandError`` for a mistake in it."""
    path = application_path()
    module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(f"{missing}.")):
            raise CommandError(
                f"{SETTING} = {path!r}: cannot import module {module_name!r} ({exc})"
            ) from exc
        raise  # the module exists and fails inside: its traceback matters
    try:
        application = getattr(module, attribute)
    except AttributeError:
        raise CommandError(
            f"{SETTING} = {path!r}: module {module_name!r} has no attribute {attribute!r}"
        ) from None
    if not callable(application):
        raise CommandError(
            f"{SETTING} = {path!r} is a {type(application).__name__}, not an ASGI application"
        )
    return application
