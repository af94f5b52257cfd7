"""The fields of an ASGI ``http``/``websocket`` scope that both HTTP versions fill the same way."""

from __future__ import annotations

from urllib.parse import unquote

from ..config import Config, Scope
from ..state import ServerState
from .addresses import from_proxy


def request_scope(
    config: Config,
    state: ServerState,
    *,
    http_version: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    server: tuple[str, int | None] | None,
    scheme: str,
) -> Scope:
    """A scope without its ``type`` (and ``method``): the connection adds what it knows.

    ``target`` is the origin-form path with its query (``/a%20b?x=1``); the path is
    percent-decoded, ``root_path`` prepended, and a trusted proxy's headers decide ``client``,
    ``scheme`` and ``root_path`` (``Daphne-Root-Path``, which the app then does not see).
    ``state`` is a shallow copy of the lifespan's, per the ASGI spec.
    """
    raw_path, _, query = target.partition(b"?")
    client, scheme, proxy_root, headers = from_proxy(config, headers, client, scheme)
    root = config.root_path if proxy_root is None else proxy_root
    return {
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": http_version,
        "scheme": scheme,
        "path": root + unquote(raw_path.decode("ascii", "replace")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root,
        "headers": headers,
        "client": client,
        "server": server,
        "state": dict(state.app_state),
    }
