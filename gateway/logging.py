"""The process's logging: every logger the project owns, in text or JSON, through dictConfig.

``roomcast serve`` configures the ``roomcast`` logger (the parent of ``roomcast.gateway.*``,
``roomcast.layers.*``, ``roomcast.consumers.*`` and ``roomcast.metrics``) and the access log,
``roomcast.gateway.access``; never the root logger, so an application's own logging (Django's
``LOGGING``) is left alone. The configuration is a :func:`logging.config.dictConfig` dict
(:func:`logging_config` builds it), so a user can replace it whole with ``--log-config FILE``:
a dictConfig in JSON or YAML (``.json``, ``.yaml``/``.yml``; YAML needs PyYAML) or an ini file
for :func:`logging.config.fileConfig`, as uvicorn takes. The formatters and the file handler
below are importable by such a file (``roomcast.gateway.logging.JSONFormatter``, ...).

- ``--log-format text`` (the default): the server's lines as ``--log-fmt`` says (Daphne's
  flag; default ``%(asctime)s %(levelname)-8s %(message)s``), the access log as
  ``%(asctime)s %(message)s`` followed by the NCSA-like line below.
- ``--log-format json``: one JSON object per line, ``{"time": "2025-01-31T12:00:00.123+00:00",
  "level": "INFO", "logger": "roomcast.gateway.access", "message": "...", ...}``, with every
  ``extra`` field of the record: an access line carries ``method``, ``path`` (with its query),
  ``status``, ``duration`` (seconds), ``client`` (``"ip:port"``, null for a unix socket),
  ``protocol`` (``HTTP/1.1``) and ``bytes``; a WebSocket line ``event`` (``WSCONNECTING``,
  ``WSCONNECT``, ``WSREJECT``, ``WSDISCONNECT``), ``path``, ``client``, ``status`` (the HTTP
  status, or the close code), ``duration``, and at the end ``closed_by``, ``messages_in``,
  ``messages_out``. A traceback is the ``exception`` field.

Control characters are escaped in both formats, so a client cannot forge a line: a path with
``\\n`` or ``\\x1b`` is written ``\\x0a``, ``\\x1b`` in text (tracebacks keep their newlines)
and ``\\u000a``, ``\\u001b`` in JSON (which reads back as the path sent).

Where lines go: the access log to stdout unless ``--access-log PATH`` names a file
(``--no-access-log``, or ``-v 0`` without ``--access-log``, turns it off, and
:func:`log_access` then costs one ``isEnabledFor`` call); the other lines to stderr unless
``--log-file PATH``. Files are opened in append mode by :class:`ReopeningFileHandler`.

**SIGHUP** (logrotate): :func:`reopen_log_files` closes and reopens every file handler of the
process's loggers (ours, and a ``--log-config`` file's ``FileHandler``\\ s), at the same path:
after ``mv access.log access.log.1; kill -HUP <pid>`` the next lines land in a new
``access.log``. The server calls it from its loop on SIGHUP; the ``--workers`` supervisor
forwards the signal to its workers (each has its own file descriptors). A line written while
the file is being reopened goes to the old file or the new one, never nowhere. A ``kill -9``
loses at most what the handler had not flushed (each line is flushed as it is written).

Access lines in text, after the time (Daphne's NCSA-like shapes, with a few more fields)::

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

import configparser
import datetime
import importlib
import json
import logging
import logging.config
import re
from pathlib import Path
from typing import Any

from roomcast.gateway.config import LOG_FORMAT, Config, ConfigError

error_logger = logging.getLogger("roomcast.gateway.error")
access_logger = logging.getLogger("roomcast.gateway.access")

#: The parent of every logger the project owns but the access log.
PROJECT_LOGGER = "roomcast"
# Daphne's -v levels: 0 warnings and errors, 1 also start/stop, 2 and 3 debug (3 adds asyncio).
VERBOSITY_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}
ERROR_FORMAT = LOG_FORMAT  # the default; --log-fmt replaces it
ACCESS_FORMAT = "%(asctime)s %(message)s"
LOG_FORMATS = ("text", "json")

# Escaping ----------------------------------------------------------------------------------

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_JSON_UNESCAPED = re.compile("[\x7f-\x9f\u2028\u2029]")  # json.dumps escapes below 0x20


def _hex(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, keep_newlines: bool = False) -> str:
    """``text`` with every control character written as ``\\xNN`` (``\\uNNNN`` above 0xff)."""
    pattern = _CONTROL_BUT_LINES if keep_newlines else _CONTROL
    if pattern.search(text) is None:
        return text
    return pattern.sub(_hex, text)


# Formatters --------------------------------------------------------------------------------


class TextFormatter(logging.Formatter):
    """A ``%``-style formatter whose message has its control characters escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return escape_controls(super().formatException(ei), keep_newlines=True)

    def formatStack(self, stack_info: str) -> str:
        return escape_controls(super().formatStack(stack_info), keep_newlines=True)


_STANDARD_FIELDS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName"}
)


def iso_time(created: float) -> str:
    """A record's time in ISO 8601 with the local offset, to the millisecond."""
    moment = datetime.datetime.fromtimestamp(created).astimezone()
    return moment.isoformat(timespec="milliseconds")


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        text = json.dumps(entry, ensure_ascii=False, default=str)
        if _JSON_UNESCAPED.search(text) is None:
            return text
        return _JSON_UNESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# Files that logrotate moves ------------------------------------------------------------------


class ReopeningFileHandler(logging.FileHandler):
    """A FileHandler (append mode) that :meth:`reopen` points at a new file at the same path."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = "utf-8") -> None:
        super().__init__(filename, mode=mode, encoding=encoding)

    def reopen(self) -> None:
        reopen_file_handler(self)


def reopen_file_handler(handler: logging.FileHandler) -> None:
    """Open ``handler``'s path anew and swap the stream in (public API: ``setStream``)."""
    # Append, whatever the handler's mode: a HUP never truncates.
    stream = open(handler.baseFilename, "a", encoding=handler.encoding)  # noqa: SIM115
    old = handler.setStream(stream)
    if old is not None and old is not stream:
        old.close()


def _loggers() -> list[logging.Logger]:
    found = [logging.getLogger()]
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            found.append(logger)
    return found


def reopen_log_files() -> int:
    """Reopen every file handler of the process's loggers (SIGHUP); how many were reopened.

    A file that cannot be opened any more (its folder is gone) is logged and its handler keeps
    the old file, so no line is lost.
    """
    done: set[int] = set()
    for logger in _loggers():
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler) and id(handler) not in done:
                done.add(id(handler))
                try:
                    reopen_file_handler(handler)
                except OSError as exc:
                    error_logger.error("cannot reopen log file %s: %s", handler.baseFilename, exc)
    return len(done)


# The configuration ---------------------------------------------------------------------------


def _check_writable(path: str, what: str) -> None:
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot open {what} {path!r}: {exc}") from exc


def _handler(target: str, formatter: str, stream: str) -> dict[str, Any]:
    if target == "-":
        return {"class": "logging.StreamHandler", "formatter": formatter, "stream": stream}
    return {"()": ReopeningFileHandler, "formatter": formatter, "filename": target}


def logging_config(config: Config) -> dict[str, Any]:
    """The dictConfig of ``config``'s ``log_format``, ``log_fmt``, ``log_file``, ``access_log``
    and ``verbosity`` (what ``--log-config`` replaces)."""
    json_lines = config.log_format == "json"
    level = VERBOSITY_LEVELS.get(config.verbosity, logging.DEBUG)
    formatters: dict[str, Any] = {
        "roomcast.text": {"()": TextFormatter, "fmt": config.log_fmt},
        "roomcast.access": {"()": TextFormatter, "fmt": ACCESS_FORMAT},
        "roomcast.json": {"()": JSONFormatter},
    }
    server_formatter = "roomcast.json" if json_lines else "roomcast.text"
    access_formatter = "roomcast.json" if json_lines else "roomcast.access"
    handlers: dict[str, Any] = {
        "roomcast.server": _handler(config.log_file or "-", server_formatter, "ext://sys.stderr")
    }
    access: dict[str, Any] = {"handlers": [], "level": logging.CRITICAL + 1, "propagate": False}
    if config.access_log:
        handlers["roomcast.access"] = _handler(
            config.access_log, access_formatter, "ext://sys.stdout"
        )
        access = {"handlers": ["roomcast.access"], "level": logging.INFO, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": formatters,
        "handlers": handlers,
        "loggers": {
            # Our lines are formatted here; never printed twice by a root handler.
            PROJECT_LOGGER: {"handlers": ["roomcast.server"], "level": level, "propagate": False},
            "roomcast.gateway.error": {"handlers": [], "level": logging.NOTSET, "propagate": True},
            "roomcast.gateway.access": access,
            "asyncio": {"level": logging.DEBUG if config.verbosity >= 3 else logging.WARNING},
        },
    }


def configure_logging(config: Config) -> None:
    """Configure the project's loggers from ``config`` (or its ``--log-config`` file)."""
    if config.log_config:
        apply_log_config_file(config.log_config)
        return
    if config.log_file and config.log_file != "-":
        _check_writable(config.log_file, "log file")
    if config.access_log and config.access_log != "-":
        _check_writable(config.access_log, "access log")
    logging.config.dictConfig(logging_config(config))
    enable_project_loggers()


def enable_project_loggers() -> None:
    """Undo a ``disable_existing_loggers`` of a dictConfig run since (Django's ``LOGGING``
    when the app is imported): the project's loggers keep writing."""
    for logger in _loggers():
        if logger.name == PROJECT_LOGGER or logger.name.startswith(PROJECT_LOGGER + "."):
            logger.disabled = False


def apply_log_config_file(path: str) -> None:
    """``--log-config``: a dictConfig in JSON or YAML, else an ini file for ``fileConfig``."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--log-config {path!r}: no such file")
    suffix = file.suffix.lower()
    try:
        if suffix == ".json":
            logging.config.dictConfig(_mapping(json.loads(file.read_text()), path))
        elif suffix in (".yaml", ".yml"):
            try:
                yaml: Any = importlib.import_module("yaml")
            except ImportError:
                raise ConfigError(
                    f"--log-config {path!r}: YAML needs PyYAML: pip install pyyaml"
                ) from None
            logging.config.dictConfig(_mapping(yaml.safe_load(file.read_text()), path))
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except ConfigError:
        raise
    except (
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        ImportError,
        OSError,
        configparser.Error,
    ) as exc:
        reason = f"{exc}: {exc.__cause__}" if exc.__cause__ else str(exc)
        raise ConfigError(
            f"--log-config {path!r} is not a usable logging configuration: {reason}"
        ) from exc


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"--log-config {path!r} must hold a mapping (a dictConfig)")
    value.setdefault("version", 1)
    value.setdefault("disable_existing_loggers", False)
    return value


# Access lines ---------------------------------------------------------------------------------


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
    peer = _peer(client)
    access_logger.info(
        '%s - "%s %s HTTP/%s" %d %d %.1fms',
        peer,
        method,
        path,
        http_version,
        status,
        size,
        duration * 1000.0,
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration": round(duration, 6),
            "client": None if client is None else peer,
            "protocol": f"HTTP/{http_version}",
            "bytes": size,
        },
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
    client = scope.get("client")
    peer = _peer(client)
    fields: dict[str, Any] = {
        "event": event,
        "path": target,
        "client": None if client is None else peer,
        "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
    }
    if event == "WSCONNECTING":
        access_logger.info('%s - "%s %s" - -', peer, event, target, extra=fields)
        return
    fields["status"] = status
    fields["duration"] = round(duration, 6)
    if by is None:
        access_logger.info(
            '%s - "%s %s" %s - %.1fms',
            peer,
            event,
            target,
            status,
            duration * 1000.0,
            extra=fields,
        )
        return
    received, sent = counts or (0, 0)
    fields.update(closed_by=by, messages_in=received, messages_out=sent)
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
        extra=fields,
    )


def _peer(client: tuple[str, int] | None) -> str:
    if client is None:
        return "-"  # a unix socket's peer
    if ":" in client[0]:
        return f"[{client[0]}]:{client[1]}"
    return f"{client[0]}:{client[1]}"
