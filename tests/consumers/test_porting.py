"""docs/porting.md against the code and against the installed Channels 4.3.

- Every name of the doc's module table imports from its roomcast path, and each is one object
  whichever path it is imported from (alias modules re-export, they never define).
- Every public name of Channels (module-level names read from its source, without importing
  it; attributes of its classes read in a subprocess that configures Django) is at our path
  or listed under "Not ported, on purpose", and every name listed there is really missing.

So the doc cannot drift from the code, nor the code from Channels, without a failing test.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "porting.md"


def _section_rows(title: str) -> list[list[str]]:
    """The rows of the first table under ``## title``, as cells (header and rule dropped)."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else len(text)]
    rows: list[list[str]] = []
    for line in body.splitlines():
        if not line.startswith("|"):
            if rows:
                break  # the end of the first table
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if set("".join(cells)) <= set("-: "):
            continue
        rows.append(cells)
    return rows[1:]  # without the header


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


TABLE: list[tuple[str, str, list[str]]] = [
    (_code(channels)[0], _code(ours)[0], _code(names))
    for channels, ours, names in _section_rows("Module paths")
]
EXCLUDED: dict[str, str] = {
    _code(name)[0]: why for name, why in _section_rows("Not ported, on purpose")
}
OURS = {channels: ours for channels, ours, _ in TABLE}


# The doc's table, against our code -----------------------------------------------------------


def test_the_table_is_there_and_lists_each_module_once() -> None:
    assert len(TABLE) >= 15
    assert len(OURS) == len(TABLE)
    for channels, ours, names in TABLE:
        assert channels == "channels" or channels.startswith("channels."), channels
        assert ours == channels.replace("channels", "roomcast.consumers", 1), (channels, ours)
        assert names, channels
        assert len(set(names)) == len(names), channels


@pytest.mark.parametrize(("channels", "ours", "names"), TABLE, ids=[row[0] for row in TABLE])
def test_every_name_of_the_table_imports_from_its_roomcast_path(
    channels: str, ours: str, names: list[str]
) -> None:
    module = importlib.import_module(ours)
    for name in names:
        assert getattr(module, name, None) is not None, f"{ours}.{name}"


def test_each_name_is_one_object_whatever_the_path() -> None:
    seen: dict[str, list[tuple[str, Any]]] = {}
    extra = ["roomcast.consumers", "roomcast.consumers.security", "roomcast.consumers.auth"]
    for _, ours, names in TABLE:
        module = importlib.import_module(ours)
        for name in names:
            seen.setdefault(name, []).append((ours, getattr(module, name)))
    for path in extra:
        module = importlib.import_module(path)
        for name in seen:
            if hasattr(module, name):
                seen[name].append((path, getattr(module, name)))
    for name, places in seen.items():
        first = places[0][1]
        assert all(obj is first for _, obj in places), (name, [p for p, _ in places])
    assert len(seen["AsyncWebsocketConsumer"]) >= 2  # the check above did compare something


def test_roomcast_consumers_keeps_every_name_it_exported() -> None:
    """What ``roomcast.consumers`` exported before the split into Channels' modules."""
    import roomcast.consumers

    before = {
        "AcceptConnection", "AllowedHostsOriginValidator", "AsyncConsumer", "AsyncHttpConsumer",
        "AsyncJsonWebsocketConsumer", "AsyncWebsocketConsumer", "AuthMiddleware",
        "AuthMiddlewareStack", "BaseMiddleware", "ChannelNameRouter", "CookieMiddleware",
        "DenyConnection", "InvalidChannelLayerError", "JsonWebsocketConsumer", "OriginValidator",
        "ProtocolTypeRouter", "RequestAborted", "RequestTimeout", "RouteNotFound",
        "SessionMiddleware", "SessionMiddlewareStack", "StopConsumer", "SyncConsumer",
        "TokenAuthMiddleware", "URLRouter", "UndecodableFrame", "WebsocketConsumer",
        "WebsocketDenier", "get_handler_name", "get_token", "path", "re_path",
        "register_converter",
    }  # fmt: skip
    assert before <= set(roomcast.consumers.__all__)
    for name in roomcast.consumers.__all__:
        assert getattr(roomcast.consumers, name) is not None


def test_auth_module_keeps_its_old_names() -> None:
    """``roomcast.consumers.auth`` still has the cookie, session and token names it had."""
    from roomcast.consumers import auth, sessions, tokens

    for name in ("CookieMiddleware", "SessionMiddleware", "SessionMiddlewareStack", "parse_cookie"):
        assert getattr(auth, name) is getattr(sessions, name)
    for name in ("AnonymousUser", "TokenAuthMiddleware", "get_token"):
        assert getattr(auth, name) is getattr(tokens, name)


def test_channels_modules_import_neither_django_nor_channels() -> None:
    """The ported modules that need no Django do not load it (nor Channels) when imported."""
    modules = [ours for _, ours, _ in TABLE if not ours.endswith((".apps", ".testing.live"))]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "import roomcast.consumers.sessions, roomcast.consumers.tokens\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'channels')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# Our code, against Channels -----------------------------------------------------------------


def _channels_root() -> Path:
    spec = importlib.util.find_spec("channels")  # finds it without importing it
    reference = "the installed Channels is the reference of this test: pip install -e '.[dev]'"
    assert spec is not None, reference
    assert spec.submodule_search_locations, reference
    return Path(next(iter(spec.submodule_search_locations)))


def _channels_modules() -> dict[str, Path]:
    """Every module of the installed Channels (``channels.generic.websocket`` -> its file)."""
    root = _channels_root()
    found: dict[str, Path] = {}
    for file in sorted(root.rglob("*.py")):
        parts = ["channels", *file.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") for part in parts):
            continue
        found[".".join(parts)] = file
    return found


def _public_names(file: Path) -> dict[str, str]:
    """A module's public names: what it defines at top level, and its ``__all__``; name ->
    ``"class"`` for a class statement, else ``"name"``."""
    tree = ast.parse(file.read_text(encoding="utf-8"))
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names[node.name] = "class"
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names[node.name] = "name"
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    names[target.id] = "name"
    names.pop("__all__", None)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            for item in ast.literal_eval(node.value):
                names.setdefault(item, "name")
    return {name: kind for name, kind in names.items() if not name.startswith("_")}


CHANNELS_MODULES = {
    module: names for module, file in _channels_modules().items() if (names := _public_names(file))
}


def test_the_reference_is_channels_4() -> None:
    assert "channels.generic.websocket" in CHANNELS_MODULES
    assert "DEFAULT_CHANNEL_LAYER" in CHANNELS_MODULES["channels"]


def test_every_channels_module_is_in_the_table_or_excluded() -> None:
    for module in CHANNELS_MODULES:
        assert module in OURS or module in EXCLUDED, (
            f"{module}: add it to the table of docs/porting.md, or to 'Not ported, on purpose'"
        )


@pytest.mark.parametrize(("channels", "ours", "names"), TABLE, ids=[row[0] for row in TABLE])
def test_the_table_lists_every_public_name_of_the_channels_module(
    channels: str, ours: str, names: list[str]
) -> None:
    expected = {n for n in CHANNELS_MODULES[channels] if f"{channels}.{n}" not in EXCLUDED}
    assert expected <= set(names), sorted(expected - set(names))


def _missing_attributes() -> dict[str, list[str]]:
    """For each class statement of a tabled Channels module: its public attributes (defined in
    that class) that the roomcast object of the same name lacks. Run in a subprocess that
    configures Django (Channels' modules read settings) and stands in for ``daphne.testing``,
    which ``channels.testing.live`` imports but is not installed (Channels is only read)."""
    classes = {
        channels: [name for name, kind in CHANNELS_MODULES[channels].items() if kind == "class"]
        for channels in OURS
    }
    code = f"""
import importlib, json, sys, types
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                                   "django.contrib.sessions"])
django.setup()
stand_in = types.ModuleType("daphne.testing")
stand_in.DaphneProcess = object
sys.modules.setdefault("daphne", types.ModuleType("daphne"))
sys.modules.setdefault("daphne.testing", stand_in)
classes, ours = {classes!r}, {OURS!r}
missing = {{}}
for module, names in classes.items():
    theirs, mine = importlib.import_module(module), importlib.import_module(ours[module])
    for name in names:
        cls, our = getattr(theirs, name), getattr(mine, name, None)
        if our is None:
            continue  # a missing name, reported by the module-level check
        lacking = [a for a in vars(cls) if not a.startswith("_") and not hasattr(our, a)]
        if lacking:
            missing[f"{{module}}.{{name}}"] = sorted(lacking)
print(json.dumps(missing))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, list[str]] = json.loads(result.stdout)
    return found


def test_not_ported_lists_exactly_what_is_missing() -> None:
    missing: set[str] = set()
    for module in CHANNELS_MODULES:
        if module not in OURS:
            counterpart = module.replace("channels", "roomcast.consumers", 1)
            try:
                importlib.import_module(counterpart)
            except ImportError:
                missing.add(module)
            else:  # it exists: it belongs in the table
                raise AssertionError(f"{counterpart} exists: list {module} in the table")
            continue
        ours = importlib.import_module(OURS[module])
        missing |= {f"{module}.{n}" for n in CHANNELS_MODULES[module] if not hasattr(ours, n)}
    for cls, attributes in _missing_attributes().items():
        missing |= {f"{cls}.{attribute}" for attribute in attributes}
    assert missing == set(EXCLUDED), (
        f"missing but not listed: {sorted(missing - set(EXCLUDED))}; "
        f"listed but present: {sorted(set(EXCLUDED) - missing)}"
    )


def test_every_exclusion_gives_a_reason() -> None:
    assert EXCLUDED
    for name, why in EXCLUDED.items():
        assert why.strip(), name


# The Django glue: apps.ChannelsConfig and routing.get_default_application ------------------

DJANGO_GLUE = """
import json, sys, types
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=["roomcast.consumers"], ASGI_APPLICATION=sys.argv[1])
django.setup()
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from roomcast.consumers.routing import get_default_application

sys.modules["glue_app"] = types.ModuleType("glue_app")
sys.modules["glue_app"].application = "the application"
config = apps.get_app_config("roomcast_consumers")
out = {"app": [config.name, type(config).__name__, config.verbose_name]}
try:
    out["got"] = get_default_application()
except ImproperlyConfigured as exc:
    out["error"] = str(exc)
    out["cause"] = type(exc.__cause__).__name__ if exc.__cause__ else None
print(json.dumps(out))
"""


def _glue(asgi_application: str, tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "glue_broken_asgi.py").write_text("import no_such_module_in_the_asgi_file\n")
    result = subprocess.run(
        [sys.executable, "-c", DJANGO_GLUE, asgi_application],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    assert out.pop("app") == ["roomcast.consumers", "ChannelsConfig", "roomcast consumers"]
    return out


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("glue_app.application", {"got": "the application"}),
        (
            "",
            {"error": "Cannot find ASGI_APPLICATION setting (a dotted path such as "
             "'mysite.asgi.application'; got '').", "cause": None},
        ),
        (
            "no_such_project.asgi.application",
            {"error": "Cannot import ASGI_APPLICATION module 'no_such_project.asgi': "
             "No module named 'no_such_project'", "cause": "ModuleNotFoundError"},
        ),
        (
            "glue_broken_asgi.application",
            {"error": "Cannot import ASGI_APPLICATION module 'glue_broken_asgi': "
             "No module named 'no_such_module_in_the_asgi_file'", "cause": "ModuleNotFoundError"},
        ),
        (
            "glue_app.app",
            {"error": "Cannot find 'app' in ASGI_APPLICATION module 'glue_app'", "cause": None},
        ),
    ],
    ids=["ok", "unset", "no-module", "error-inside", "no-attribute"],
)  # fmt: skip
def test_get_default_application(setting: str, expected: dict[str, Any], tmp_path: Path) -> None:
    assert _glue(setting, tmp_path) == expected
