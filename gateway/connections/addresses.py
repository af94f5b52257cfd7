"""Who is on each end of a connection, for the scope: the socket's addresses and scheme, or
what a trusted proxy's X-Forwarded-* headers (or the ones configured) say, and the mount point
its ``Daphne-Root-Path`` header gives; shared by HTTP/1.1 and HTTP/2 (WebSockets included)."""

from __future__ import annotations

import asyncio
from typing import NamedTuple
from urllib.parse import unquote

from ..config import Config

Address = tuple[str, int]
ROOT_PATH_HEADER = b"daphne-root-path"


class ProxyView(NamedTuple):
    """The request as the proxy saw it."""

    client: Address | None
    scheme: str
    root_path: str | None  # from Daphne-Root-Path, None when the proxy sent none
    headers: list[tuple[bytes, bytes]]  # without Daphne-Root-Path


def socket_addresses(
    transport: asyncio.BaseTransport,
) -> tuple[Address | None, tuple[str, int | None] | None, str]:
    """``(client, server, scheme)`` of a transport: (host, port) pairs, a unix socket's path."""
    peer = transport.get_extra_info("peername")
    sock = transport.get_extra_info("sockname")
    client: Address | None = None
    server: tuple[str, int | None] | None = None
    if isinstance(peer, (tuple, list)) and len(peer) >= 2:
        client = (str(peer[0]), int(peer[1]))
    if isinstance(sock, (tuple, list)) and len(sock) >= 2:
        server = (str(sock[0]), int(sock[1]))
    elif isinstance(sock, str) and sock:
        server = (sock, None)
    scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
    return client, server, scheme


def from_proxy(
    config: Config,
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    scheme: str,
) -> ProxyView:
    """Client, scheme and root path as a trusted proxy's headers tell them, else the socket's.

    The address comes from ``--proxy-headers-host`` (X-Forwarded-For), the port from
    ``--proxy-headers-port`` (X-Forwarded-Port) when that holds one number, as in Daphne; the
    port is only taken along with an address from the proxy, and is 0 when it sends none.
    ``Daphne-Root-Path`` (percent-decoded, as Daphne does) becomes the scope's ``root_path``
    and is taken out of the headers. Unlike Daphne, which believes it from anyone, it counts
    only from a trusted proxy (``--proxy-headers`` and ``--forwarded-allow-ips``); from any
    other peer it is an ordinary header and the app sees it.
    """
    if not config.proxy_headers or not config.trusts_proxy(client[0] if client else None):
        return ProxyView(client, scheme, None, headers)
    host_header, port_header = config.proxy_host_header, config.proxy_port_header
    forwarded: str | None = None
    root_path: str | None = None
    port = 0
    for name, value in headers:
        if name == ROOT_PATH_HEADER:
            root_path = unquote(value.decode("latin-1")).rstrip("/")
        elif name == host_header:
            hops = [hop.strip() for hop in value.decode("latin-1").split(",") if hop.strip()]
            # The right-most hop that is not one of our trusted proxies is the client.
            for hop in reversed(hops):
                if not config.trusts_proxy(hop) or hop == hops[0]:
                    forwarded = hop
                    break
        elif name == port_header:
            text = value.decode("latin-1").strip()
            if text.isascii() and text.isdigit() and int(text) <= 65535:
                port = int(text)
        elif name == b"x-forwarded-proto":
            proto = value.decode("latin-1").split(",")[-1].strip().lower()
            if proto in ("http", "https", "ws", "wss"):
                scheme = {"ws": "http", "wss": "https"}.get(proto, proto)
    if forwarded is not None:
        client = (forwarded, port)
    if root_path is not None:
        headers = [pair for pair in headers if pair[0] != ROOT_PATH_HEADER]
    return ProxyView(client, scheme, root_path, headers)
