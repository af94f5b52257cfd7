"""Where a gateway listens: Daphne's ``-e/--endpoint`` strings, and the sockets they describe.

Daphne hands ``-e`` strings to Twisted; we read the common ones ourselves, with Twisted's
syntax (``:`` separates arguments, ``key=value`` names one, a backslash escapes the next
character, so ``interface=\\:\\:1`` is ``::1``):

==========================================================  ==================================
``tcp:8000`` / ``tcp:port=8000:interface=0.0.0.0``            TCP (``backlog=N`` too)
``tcp6:port=8000:interface=\\:\\:1``                          TCP over IPv6
``unix:/run/app.sock`` / ``unix:path=/run/app.sock``          a unix socket (``mode=660``,
                                                              ``backlog=N``; ``address=`` as
                                                              in Twisted)
``ssl:443:privateKey=key.pem:certKey=cert.pem``               TLS over TCP (``interface=``,
                                                              ``backlog=``; ``certKey``
                                                              defaults to ``privateKey``)
``fd:fileno=3``                                               an inherited listening socket
                                                              (``domain=`` is accepted; the
                                                              family is read from the socket)
==========================================================  ==================================

Anything else is a :class:`~roomcast.gateway.config.ConfigError` naming these forms. As in
Daphne, the server listens on every endpoint given (several ``-e``, plus ``-u``/``--fd``, plus
``-b``/``-p`` when those are given or nothing else is); if one cannot be opened, those opened
before it are closed again and the start fails with one line.

Faults: with ``--workers`` or ``--reload`` the sockets are opened once by the supervisor, so a
worker's restart never drops them (clients wait in the backlog). A unix socket file is removed
at a clean exit; after a kill -9 it stays, and the next start removes it if nobody answers on
it (a live server there is an error, not a takeover). An ``fd`` socket belongs to whoever
passed it: it is never unlinked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SUPPORTED = (
    "tcp:PORT[:interface=HOST], tcp:port=PORT:interface=HOST, tcp6:..., "
    "unix:PATH, unix:path=PATH, ssl:PORT:privateKey=KEY.pem:certKey=CERT.pem[:interface=HOST], "
    "fd:fileno=N"
)
DEFAULT_UNIX_MODE = 0o666  # like Daphne (Twisted's default), uvicorn and gunicorn


class EndpointError(ValueError):
    """An endpoint string we cannot serve; the message names the supported forms."""


@dataclass(frozen=True)
class TLSFiles:
    """What a TLS listener loads: certificate chain, private key, the key's password."""

    certfile: str
    keyfile: str
    password: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """One listening socket to open (or, for ``fd``, to adopt)."""

    kind: Literal["tcp", "unix", "fd"]
    host: str = ""  # tcp: the address to bind, without brackets
    port: int = 0  # tcp
    path: str = ""  # unix
    fileno: int = -1  # fd
    tls: TLSFiles | None = None
    backlog: int | None = None  # None: Config.backlog
    mode: int = DEFAULT_UNIX_MODE  # unix: permissions of the socket file
    source: str = ""  # the -e string it came from, "" for -b/-p, -u, --fd

    def describe(self) -> str:
        """``http://127.0.0.1:8000``, ``https://[::1]:8443``, ``unix:/run/app.sock``, ``fd://3``."""
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fileno}"
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """Daphne's (Twisted's) endpoint string → Endpoint; EndpointError for anything else."""
    kind, positional, named = _tokens(text)
    try:
        if kind in ("tcp", "tcp6", "ssl"):
            return _tcp(text, kind, positional, named)
        if kind == "unix":
            return _unix(text, positional, named)
        if kind == "fd":
            return _fd(text, positional, named)
    except EndpointError as exc:
        raise EndpointError(f"{exc} (supported: {SUPPORTED})") from None
    raise EndpointError(f"endpoint {text!r} is not supported: use {SUPPORTED}")


def _int(text: str, name: str, value: str, base: int = 10) -> int:
    try:
        return int(value, base)
    except ValueError:
        raise EndpointError(f"endpoint {text!r}: {name} {value!r} is not a number") from None


def _tokens(text: str) -> tuple[str, list[str], dict[str, str]]:
    """Split on unescaped ``:``; arguments with an unescaped ``=`` are named."""
    fields: list[tuple[str, str | None]] = []  # (key or value, value if named)
    current: list[str] = []
    key: str | None = None
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append((key, "".join(current)) if key is not None else ("".join(current), None))
            current, key = [], None
        elif char == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(char)
    fields.append((key, "".join(current)) if key is not None else ("".join(current), None))
    (kind, first_value), *rest = fields
    if first_value is not None or not kind:
        raise EndpointError(f"endpoint {text!r} is not supported: use {SUPPORTED}")
    positional = [name for name, value in rest if value is None]
    named = {name: value for name, value in rest if value is not None}
    return kind.lower(), positional, named


def _take(
    text: str, positional: list[str], named: dict[str, str], order: tuple[str, ...]
) -> dict[str, str]:
    """Positional arguments in ``order``, then the named ones; unknown names are refused."""
    if len(positional) > len(order):
        raise EndpointError(f"endpoint {text!r}: too many arguments")
    values = dict(zip(order, positional, strict=False))
    for name, value in named.items():
        if name in values:
            raise EndpointError(f"endpoint {text!r}: {name} given twice")
        values[name] = value
    return values


def _allowed(text: str, values: dict[str, str], allowed: set[str]) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise EndpointError(
            f"endpoint {text!r}: {', '.join(unknown)} not supported here "
            f"(supported: {', '.join(sorted(allowed))})"
        )


def _tcp(text: str, kind: str, positional: list[str], named: dict[str, str]) -> Endpoint:
    order = ("port", "privateKey") if kind == "ssl" else ("port", "interface")
    values = _take(text, positional, named, order)
    allowed = {"port", "interface", "backlog"}
    if kind == "ssl":
        allowed |= {"privateKey", "certKey"}
    _allowed(text, values, allowed)
    if "port" not in values:
        raise EndpointError(f"endpoint {text!r}: no port")
    port = _int(text, "port", values["port"])
    if not 0 <= port <= 65535:
        raise EndpointError(f"endpoint {text!r}: port {port} is out of range")
    host = values.get("interface", "").strip("[]") or ("::" if kind == "tcp6" else "0.0.0.0")
    tls = None
    if kind == "ssl":
        key = values.get("privateKey", "server.pem")  # Twisted's default
        tls = TLSFiles(certfile=values.get("certKey", key), keyfile=key)
    backlog = _backlog(text, values)
    return Endpoint("tcp", host=host, port=port, tls=tls, backlog=backlog, source=text)


def _unix(text: str, positional: list[str], named: dict[str, str]) -> Endpoint:
    values = _take(text, positional, named, ("path",))
    if "address" in values:  # Twisted's name for it
        if "path" in values:
            raise EndpointError(f"endpoint {text!r}: path given twice")
        values["path"] = values.pop("address")
    _allowed(text, values, {"path", "mode", "backlog", "lockfile"})
    path = values.get("path", "")
    if not path:
        raise EndpointError(f"endpoint {text!r}: no socket path")
    mode = _int(text, "mode", values.get("mode", f"{DEFAULT_UNIX_MODE:o}"), 8)
    return Endpoint(
        "unix", path=path, mode=mode, backlog=_backlog(text, values), source=text
    )  # lockfile: the stale-socket check below does what Twisted's lock file does


def _fd(text: str, positional: list[str], named: dict[str, str]) -> Endpoint:
    values = _take(text, positional, named, ("fileno",))
    _allowed(text, values, {"fileno", "domain"})
    if "fileno" not in values:
        raise EndpointError(f"endpoint {text!r}: no fileno")
    fileno = _int(text, "fileno", values["fileno"])
    if fileno < 0:
        raise EndpointError(f"endpoint {text!r}: fileno must not be negative")
    return Endpoint("fd", fileno=fileno, source=text)


def _backlog(text: str, values: dict[str, str]) -> int | None:
    if "backlog" not in values:
        return None
    backlog = _int(text, "backlog", values["backlog"])
    if backlog < 1:
        raise EndpointError(f"endpoint {text!r}: backlog must be at least 1")
    return backlog
