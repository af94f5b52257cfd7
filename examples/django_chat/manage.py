#!/usr/bin/env python
"""Django's command-line utility for the Django chat example (``migrate``, ``createsuperuser``).

Runs from anywhere: ``python examples/django_chat/manage.py migrate`` puts this directory on
``sys.path`` itself, as any script's directory is.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    try:
        from django.core.management import execute_from_command_line
    except ImportError as exc:
        raise ImportError(
            "Couldn't import Django. Install it with: pip install 'roomcast[django]'"
        ) from exc
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
