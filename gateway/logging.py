"""The gateway's loggers: ``roomcast.gateway.error`` (diagnostics), ``roomcast.gateway.access``.

Only these loggers are configured, never the root logger, so an application's own logging
(Django's ``LOGGING``, for one) is left alone. The access log, as in Daphne, goes to stdout
unless ``--access-log PATH`` names a file; ``--no-access-log`` (or ``-v 0`` without
``--access-log``) turns it off, and ``log_access`` then costs one ``isEnabledFor`` call.

Its lines, after the time (Daphne's NCSA-like shapes, with a few more fields)::

    127.0.0.1:51000 - "GET /path?q=1 HTTP/1.1" 200 12 0.8ms
    127.0.0.1:51002 - "WSCONNECTING /chat/" - -
    127.0.0.1:51002 - "WSCONNECT /chat/" 101 - 3.1ms          (200 over HTTP/2)
    127.0.0.1:51004 - "WSREJECT /chat/" 403 - 1.2ms
    127.0.0.1:51002 - "WSDISCONNECT /chat/" 1000 - 5210.4ms client in=3 out=4

The WSDISCONNECT line holds the close code, who ended the session (``client``: its Close
frame or a lost connection, 1006; ``app``: ``websocket.close`` or the app returning;
``server``: shutdown, a limit, a timeout) and the time since the handshake began.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from roomcast.gateway.config import LOG_FORMAT, Config, ConfigError

error_logger = logging.getLogger("roomcast.gateway.error")
access_logger = logging.getLogger("roomcast.gateway.access")

# Daphne's -v levels: 0 warnings and errors, 1 also start/stop, 2 and 3 debug (3 adds asyncio).
VERBOSITY_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}
ERROR_FORMAT = LOG_FORMAT  # the default; --log-fmt replaces it
ACCESS_FORMAT = "%(asctime)s %(message)s"

_OURS = "_gateway_handler"  # marks handlers we added, so configuring twice replaces them


def configure_logging(config: Config) -> None:
    """Set levels and handlers of our loggers from ``verbosity``, ``log_fmt`` and ``access_log``.

    ``log_fmt`` (Daphne's ``--log-fmt``) formats the ``roomcast.gateway.error`` lines only: the
    access
    log keeps its own fixed format, as Daphne's access log does.
    """
    level = VERBOSITY_LEVELS.get(config.verbosity, logging.DEBUG)
    error_handler = logging.StreamHandler(sys.stderr)
    error_handler.setFormatter(logging.Formatter(config.log_fmt))
    _install(error_logger, error_handler, level)
    logging.getLogger("asyncio").setLevel(
        logging.DEBUG if config.verbosity >= 3 else logging.WARNING
    )

    if not config.access_log:
        _install(access_logger, None, logging.CRITICAL + 1)
        return
    access_handler: logging.Handler
    if config.access_log == "-":
        access_handler = logging.StreamHandler(sys.stdout)
    else:
        try:
            access_handler = logging.FileHandler(config.access_log, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot open access log {config.access_log!r}: {exc}") from exc
    access_handler.setFormatter(logging.Formatter(ACCESS_FORMAT))
    _install(access_logger, access_handler, logging.INFO)


def _install(logger: logging.Logger, handler: logging.Handler | None, level: int) -> None:
    for old in [h for h in logger.handlers if getattr(h, _OURS, False)]:
        logger.removeHandler(old)
        old.close()
    if handler is not None:
        setattr(handler, _OURS, True)
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # our lines are formatted already; never print them twice
    logger.disabled = False


def log_access(
    client: tuple[str, int] | None,
    method: str,
    path: str,
    http_version: str,
    status: int,
    size: int,
    duration: float,
) -> None:
    """One request's line: ``127.0.0.1:5000 - "GET /path HTTP/1.1" 200 12 0.8ms``.

    ``duration`` is in seconds, ``size`` the response body bytes, ``client`` None for a unix
    socket peer. Call it unconditionally: it returns at once when the access log is off.
    """
    if not access_logger.isEnabledFor(logging.INFO):
        return
    access_logger.info(
        '%s - "%s %s HTTP/%s" %d %d %.1fms',
        _peer(client),
        method,
        path,
        http_version,
        status,
        size,
        duration * 1000.0,
    )


def log_websocket(
    scope: Any,
    event: str,
    status: int | None,
    duration: float,
    by: str | None = None,
    counts: tuple[int, int] | None = None,
) -> None:
    """One WebSocket line (see the module's docstring): ``event`` is WSCONNECTING,
    WSCONNECT, WSREJECT or WSDISCONNECT; ``status`` the HTTP status, or the close code."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    query = scope["query_string"]
    target = (scope["raw_path"] + (b"?" + query if query else b"")).decode("latin-1")
    peer = _peer(scope.get("client"))
    if event == "WSCONNECTING":
        access_logger.info('%s - "%s %s" - -', peer, event, target)
    elif by is None:
        access_logger.info(
            '%s - "%s %s" %s - %.1fms', peer, event, target, status, duration * 1000.0
        )
    else:
        received, sent = counts or (0, 0)
        access_logger.info(
            '%s - "%s %s" %s - %.1fms %s in=%d out=%d',
            peer,
            event,
            target,
            status,
            duration * 1000.0,
            by,
            received,
            sent,
        )


def _peer(client: tuple[str, int] | None) -> str:
    if client is None:
        return "-"  # a unix socket's peer
    if ":" in client[0]:
        return f"[{client[0]}]:{client[1]}"
    return f"{client[0]}:{client[1]}"
