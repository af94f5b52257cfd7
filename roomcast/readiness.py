"""This process's readiness: what it still waits for before it can serve, by whom it is reported.

The gateway answers its readiness path (``--ready-path``) from here, and the parts that depend
on an outside service report to it: a channel layer that cannot reach Redis says so under its
alias, and takes it back when Redis answers again. That keeps the dependencies one way: the
gateway imports this module, never a layer; a layer imports this module, never the gateway.

The registry is per process: with ``--workers N`` each worker answers for itself, which is what a
load balancer probing that worker's socket needs. Reports are plain dictionary writes, safe from
any thread.
"""

from __future__ import annotations

__all__ = ["not_ready", "report_not_ready", "report_ready", "reset"]

_waiting: dict[str, str] = {}


def report_not_ready(key: str, reason: str) -> None:
    """``key`` (e.g. ``"channel layer 'default'"``) cannot serve yet, because of ``reason``."""
    _waiting[key] = reason


def report_ready(key: str) -> None:
    """``key`` can serve again (a no-op when it never reported)."""
    _waiting.pop(key, None)


def not_ready() -> dict[str, str]:
    """Every part still waiting, with its reason: empty when the process is ready."""
    return dict(_waiting)


def reset() -> None:
    """Forget every report (tests; a process that re-initialises its parts)."""
    _waiting.clear()
