"""Process titles for ``ps`` and ``top``: ``roomcast: worker 2 of 4 [myproject.asgi]``.

With the optional ``setproctitle`` package (in the ``fast`` extra) each gateway process names
its role and the application's module: ``server`` (one process), ``worker I of N`` and
``supervisor`` (``--workers N``), ``reloader`` and ``server (reloading)`` (``--reload``).
Without it nothing changes and nothing fails: the title stays the command line. The title is
set once, when the process takes its role; a replaced worker sets its own again.
"""

from __future__ import annotations

from roomcast.gateway.config import Config

PREFIX = "roomcast"


def title(role: str, config: Config) -> str:
    """``roomcast: ROLE [module]``; an app given as an object shows its qualified name."""
    app = config.app
    if isinstance(app, str):
        where = app.partition(":")[0]
    else:
        where = (
            f"{getattr(app, '__module__', '?')}.{getattr(app, '__qualname__', type(app).__name__)}"
        )
    return f"{PREFIX}: {role} [{where}]"


def set_title(role: str, config: Config) -> bool:
    """Set this process's title (see :func:`title`); False when setproctitle is missing."""
    try:
        import setproctitle
    except ImportError:
        return False
    setproctitle.setproctitle(title(role, config))
    return True
