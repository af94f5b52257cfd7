"""What a run measures: ``--layer`` (alias or URL) and ``--backend``/``--config``, resolved.

A target is turned into a spec that a worker process can rebuild the same layer from (aliases
are resolved again in each worker from the same environment, so a ``CHANNEL_LAYERS`` entry
holding objects JSON cannot carry still works). Building is checked once in the coordinator, so
a bad URL, backend path or option fails before any process starts.

Any class with Channels' layer API can be named: it is imported, called with ``CONFIG`` as
keyword arguments, and must then answer ``send``, ``receive``, ``new_channel``, ``group_add``,
``group_discard`` and ``group_send`` (on the instance: channels_redis's pub/sub layer provides
them through ``__getattr__``).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import LayerConfigError
from ..settings import layer_config_from_url, resolve_channel_layers

HISTORY_PATTERN = "bench.*"  # the benchmark's group names: bench.<random>.<size>

LAYER_METHODS = ("send", "receive", "new_channel", "group_add", "group_discard", "group_send")
# Layers whose state lives in one process: their members and senders share one process.
_IN_PROCESS_HINT = "InMemory"


class BenchError(Exception):
    """A user mistake or an unreachable service: reported as one line, non-zero exit."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Target:
    """One layer to measure, as the user named it."""

    name: str
    backend: str
    config: dict[str, Any]
    spec: dict[str, Any]  # what a worker needs to build it: {"alias": ...} or {"entry": ...}
    in_process: bool = False  # all members in one process (in-memory layers)
    redis_hosts: list[Any] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "in_process": self.in_process,
            "redis_hosts": [host_label(host) for host in self.redis_hosts],
            "history": self.spec.get("history"),
        }


def with_history(target: Target, size: int) -> Target:
    """``target`` with history on the benchmark's groups (their last ``size`` messages), named
    ``"<name> +history"``: ``--history`` measures both, interleaved."""
    history = {HISTORY_PATTERN: {"size": size}}
    twin = Target(
        name=f"{target.name} +history",
        backend=target.backend,
        config={**target.config, "history": history},
        spec={**target.spec, "history": history},
        in_process=target.in_process,
        redis_hosts=list(target.redis_hosts),
    )
    layer = build(twin.spec)  # fail now, in one line
    if "history" not in getattr(layer, "extensions", ()):
        raise BenchError(f"--history: {target.backend} keeps no group history", 2)
    return twin


def host_label(host: Any) -> str:
    if isinstance(host, str):
        return host.rpartition("@")[2] if "@" in host else host
    if isinstance(host, (list, tuple)):
        return f"{host[0]}:{host[1]}"
    if isinstance(host, dict):
        address = host.get("address")
        if address is not None:
            return host_label(address)
        return f"{host.get('host', 'localhost')}:{host.get('port', 6379)}"
    return repr(host)


def import_backend(path: str) -> type:
    module_name, dot, name = path.rpartition(".")
    if not dot or not module_name or not name:
        raise BenchError(f"backend {path!r} is not a dotted path to a class (module.Class)", 2)
    try:
        backend = getattr(importlib.import_module(module_name), name)
    except ImportError as exc:
        raise BenchError(f"cannot import backend {path!r}: {exc}", 2) from exc
    except AttributeError:
        raise BenchError(
            f"cannot import backend {path!r}: module {module_name!r} has no {name!r}", 2
        ) from None
    if not isinstance(backend, type):
        raise BenchError(f"backend {path!r} is not a class", 2)
    return backend


def build(spec: dict[str, Any]) -> Any:
    """A fresh layer instance from a spec made by :func:`resolve`."""
    if "alias" in spec:
        configs, source = resolve_channel_layers()
        entry = configs.get(spec["alias"])
        if entry is None:
            configured = ", ".join(repr(alias) for alias in configs) or "none"
            raise BenchError(
                f"no channel layer {spec['alias']!r} in CHANNEL_LAYERS (from {source}); "
                f"configured: {configured}",
                2,
            )
    else:
        entry = spec["entry"]
    if not isinstance(entry, dict) or not isinstance(entry.get("BACKEND"), str):
        raise BenchError(f"a layer entry needs a 'BACKEND' dotted path, got {entry!r}", 2)
    backend = import_backend(entry["BACKEND"])
    config = entry.get("CONFIG") or {}
    if not isinstance(config, dict):
        raise BenchError(f"CONFIG of {entry['BACKEND']} must be a JSON object", 2)
    if spec.get("history") is not None:  # --history: the benchmark's groups keep history
        config = {**config, "history": spec["history"]}
    try:
        layer = backend(**config)
    except (TypeError, ValueError) as exc:  # unknown option, bad value (LayerConfigError)
        raise BenchError(f"{entry['BACKEND']} rejected its CONFIG: {exc}", 2) from exc
    missing = [method for method in LAYER_METHODS if not callable(getattr(layer, method, None))]
    if missing:
        raise BenchError(
            f"{entry['BACKEND']} is not a channel layer (it lacks {', '.join(missing)})", 2
        )
    return layer


def _redis_hosts(backend: str, config: dict[str, Any]) -> list[Any]:
    """The Redis servers a layer talks to, for INFO readings (none for other backends)."""
    if "redis" not in backend.lower():
        return []
    hosts = config.get("hosts")
    if not hosts:
        return [("localhost", 6379)]
    return [host for host in hosts if not (isinstance(host, dict) and "sentinels" in host)]


def _target(name: str, entry: dict[str, Any], spec: dict[str, Any]) -> Target:
    build(spec)  # fail now, in one line, rather than in every worker
    backend = entry["BACKEND"]
    config = dict(entry.get("CONFIG") or {})
    return Target(
        name=name,
        backend=backend,
        config=config,
        spec=spec,
        in_process=_IN_PROCESS_HINT in backend.rpartition(".")[2],
        redis_hosts=_redis_hosts(backend, config),
    )


def from_layer(text: str) -> Target:
    """``--layer``: a ``CHANNEL_LAYERS`` alias, or a layer URL (``memory://``, ``redis://``)."""
    if "://" in text:
        try:
            entry = layer_config_from_url(text)["default"]
        except LayerConfigError as exc:
            raise BenchError(f"--layer {text!r}: {exc}", 2) from exc
        return _target(host_label(text), entry, {"entry": entry})
    try:
        configs, _ = resolve_channel_layers()
    except LayerConfigError as exc:
        raise BenchError(f"--layer {text!r}: {exc}", 2) from exc
    if text not in configs:
        raise BenchError(
            f"--layer {text!r}: not a URL (memory://, redis://host:port/db) and not an alias "
            f"in CHANNEL_LAYERS (configured: {', '.join(map(repr, configs)) or 'none'})",
            2,
        )
    entry = configs[text]
    if not isinstance(entry, dict) or "BACKEND" not in entry:
        raise BenchError(f"CHANNEL_LAYERS[{text!r}] has no 'BACKEND'", 2)
    return _target(text, entry, {"alias": text})


def from_backend(path: str, config_json: str | None) -> Target:
    """``--backend dotted.Class`` with its ``--config`` JSON object."""
    config: Any = {}
    if config_json is not None:
        try:
            config = json.loads(config_json)
        except json.JSONDecodeError as exc:
            raise BenchError(f"--config for {path}: not JSON ({exc})", 2) from None
        if not isinstance(config, dict):
            raise BenchError(f"--config for {path}: must be a JSON object", 2)
    entry = {"BACKEND": path, "CONFIG": config}
    return _target(path, entry, {"entry": entry})


def unique_names(targets: list[Target]) -> None:
    """Give targets that share a name a ``#2``, ``#3`` suffix."""
    seen: dict[str, int] = {}
    for target in targets:
        count = seen.get(target.name, 0) + 1
        seen[target.name] = count
        if count > 1:
            target.name = f"{target.name} #{count}"
