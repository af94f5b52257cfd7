"""roomcast: a real-time messaging backend for Python web applications.

Three parts, each importable on its own, with one direction of dependency::

    roomcast.consumers  ──uses──▶  roomcast.layers        roomcast.gateway (ASGI only)

- :mod:`roomcast.gateway`: the ASGI server (HTTP/1.1, HTTP/2, WebSocket), Daphne's drop-in;
- :mod:`roomcast.layers`: channel layers with Channels' API, in memory and over Redis;
- :mod:`roomcast.consumers`: consumers, routing, middleware, auth and test communicators, with
  Channels' module paths (``channels.X`` → ``roomcast.consumers.X``).

In the source tree the parts are the top-level folders ``gateway/``, ``layers/`` and
``consumers/``; the build maps them under this package (``package-dir`` in pyproject.toml), so
nothing generic lands at the top of site-packages. ``"roomcast"`` in ``INSTALLED_APPS`` is the
Django app that gives ``manage.py runserver`` and ``runworker``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("roomcast")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
