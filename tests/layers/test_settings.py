"""Tests of ``roomcast.layers.settings``: where CHANNEL_LAYERS comes from and how layers are built.

Django is only ever configured in subprocesses, so this process's Django stays unconfigured.
Redis URLs are checked on the resolved config dict alone: nothing here connects to Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import roomcast.layers.settings as layer_settings
from roomcast.layers.exceptions import LayerConfigError
from roomcast.layers.memory import InMemoryChannelLayer
from roomcast.layers.settings import (
    DEFAULT_CHANNEL_LAYERS,
    ENV_LAYER_URL,
    ENV_SETTINGS_MODULE,
    MEMORY_BACKEND,
    REDIS_BACKEND,
    ChannelLayerManager,
    build_layer,
    channel_layers,
    get_channel_layer,
    layer_config_from_url,
)

ROOT = Path(__file__).resolve().parents[2]
ENV_VARS = ("DJANGO_SETTINGS_MODULE", ENV_SETTINGS_MODULE, ENV_LAYER_URL)


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No settings env vars, a fresh registry before and after each test."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    django_conf = sys.modules.get("django.conf")
    if django_conf is not None and django_conf.settings.configured:
        # Another test configured Django in this process; the Django source is covered by
        # the subprocess tests below, so keep it out of the in-process ones.
        monkeypatch.setattr(layer_settings, "_from_django", lambda: None)
    channel_layers.reset()
    yield
    channel_layers.reset()


@pytest.fixture
def settings_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A factory writing a uniquely named settings module importable from ``tmp_path``."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make(body: str) -> str:
        name = f"roomcast_test_settings_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
        names.append(name)
        return name

    yield make
    for name in names:
        sys.modules.pop(name, None)


def run_python(code: str, *, env: dict[str, str] | None = None) -> Any:
    """Run ``code`` in a fresh interpreter at the repo root; return the JSON it prints."""
    base = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    base.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Resolution order ------------------------------------------------------------------------


def test_default_is_in_memory() -> None:
    layer = get_channel_layer()
    assert type(layer) is InMemoryChannelLayer
    assert channel_layers.configs == DEFAULT_CHANNEL_LAYERS
    assert channel_layers.source == "the built-in default"


async def test_default_layer_is_usable() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "chat.message", "text": "hi"})
    assert await layer.receive(channel) == {"type": "chat.message", "text": "hi"}


def test_settings_module(settings_module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    name = settings_module(
        """
        CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "roomcast.layers.memory.InMemoryChannelLayer",
                "CONFIG": {"capacity": 7, "expiry": 5},
            },
        }
        """
    )
    monkeypatch.setenv(ENV_SETTINGS_MODULE, name)
    monkeypatch.setenv(ENV_LAYER_URL, "memory://?capacity=99")  # loses to the module
    layer = get_channel_layer()
    assert isinstance(layer, InMemoryChannelLayer)
    assert layer.capacity == 7
    assert layer.expiry == 5.0
    assert channel_layers.source == f"{ENV_SETTINGS_MODULE}={name}"


def test_settings_module_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SETTINGS_MODULE, "no_such_pkg_roomcast.settings")
    with pytest.raises(LayerConfigError) as info:
        get_channel_layer()
    message = str(info.value)
    assert ENV_SETTINGS_MODULE in message
    assert "no_such_pkg_roomcast.settings" in message
    assert "cannot import" in message


def test_settings_module_without_channel_layers(
    settings_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = settings_module("DEBUG = True\n")
    monkeypatch.setenv(ENV_SETTINGS_MODULE, name)
    with pytest.raises(LayerConfigError) as info:
        assert channel_layers.configs is None  # never reached: reading it raises
    assert ENV_SETTINGS_MODULE in str(info.value)
    assert name in str(info.value)
    assert "has no CHANNEL_LAYERS" in str(info.value)


def test_settings_module_channel_layers_not_a_dict(
    settings_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = settings_module("CHANNEL_LAYERS = ['default']\n")
    monkeypatch.setenv(ENV_SETTINGS_MODULE, name)
    with pytest.raises(LayerConfigError, match=r"CHANNEL_LAYERS \(from ROOMCAST_SETTINGS=.*dict"):
        get_channel_layer()


def test_layer_url_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_LAYER_URL, "memory://?capacity=3&group_expiry=10")
    layer = get_channel_layer()
    assert isinstance(layer, InMemoryChannelLayer)
    assert layer.capacity == 3
    assert layer.group_expiry == 10.0
    assert channel_layers.source == ENV_LAYER_URL


def test_layer_url_redis_resolves_without_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_LAYER_URL, "redis://cache:6379/2?prefix=chat&expiry=30")
    assert channel_layers.configs == {
        "default": {
            "BACKEND": REDIS_BACKEND,
            "CONFIG": {"hosts": ["redis://cache:6379/2"], "prefix": "chat", "expiry": 30.0},
        }
    }


def test_layer_url_bad_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_LAYER_URL, "amqp://broker:5672")
    with pytest.raises(LayerConfigError) as info:
        get_channel_layer()
    assert ENV_LAYER_URL in str(info.value)
    assert "'amqp'" in str(info.value)


def test_empty_env_vars_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SETTINGS_MODULE, "")
    monkeypatch.setenv(ENV_LAYER_URL, "  ")
    assert channel_layers.configs == DEFAULT_CHANNEL_LAYERS


# Django (in subprocesses) ------------------------------------------------------------------

DJANGO_CONFIGURED = """
    import json, sys
    import django.conf
    django.conf.settings.configure(%s)
    from roomcast.layers.settings import channel_layers, get_channel_layer
    layer = get_channel_layer()
    print(json.dumps({
        "configs": channel_layers.configs,
        "source": channel_layers.source,
        "capacity": layer.capacity,
        "type": type(layer).__name__,
    }))
"""


def test_django_configure_wins_over_env() -> None:
    settings = (
        'CHANNEL_LAYERS={"default": {"BACKEND": "roomcast.layers.memory.InMemoryChannelLayer",'
        ' "CONFIG": {"capacity": 11}}}'
    )
    # Later sources are not even consulted: a broken ROOMCAST_SETTINGS goes unnoticed.
    env = {ENV_SETTINGS_MODULE: "no_such_roomcast_module", ENV_LAYER_URL: "memory://?capacity=5"}
    out = run_python(DJANGO_CONFIGURED % settings, env=env)
    assert out["source"] == "Django settings"
    assert out["capacity"] == 11
    assert out["configs"] == {
        "default": {"BACKEND": MEMORY_BACKEND, "CONFIG": {"capacity": 11}},
    }


def test_django_configured_without_channel_layers_falls_through() -> None:
    out = run_python(DJANGO_CONFIGURED % "DEBUG=True", env={ENV_LAYER_URL: "memory://?capacity=5"})
    assert out["source"] == ENV_LAYER_URL
    assert out["capacity"] == 5


def test_django_settings_module_env(tmp_path: Path) -> None:
    (tmp_path / "roomcast_django_settings.py").write_text(
        "SECRET_KEY = 'x'\n"
        "CHANNEL_LAYERS = {'chat': {'BACKEND': 'roomcast.layers.memory.InMemoryChannelLayer',"
        " 'CONFIG': {'capacity': 13}}}\n"
    )
    code = """
        import json
        from roomcast.layers.settings import channel_layers
        layer = channel_layers.get("chat")
        print(json.dumps({"source": channel_layers.source, "capacity": layer.capacity,
                          "aliases": sorted(channel_layers.configs)}))
    """
    out = run_python(
        code,
        env={
            "DJANGO_SETTINGS_MODULE": "roomcast_django_settings",
            "PYTHONPATH": str(tmp_path),
            ENV_LAYER_URL: "memory://",
        },
    )
    assert out == {"source": "Django settings", "capacity": 13, "aliases": ["chat"]}


def test_django_settings_module_broken(tmp_path: Path) -> None:
    code = """
        import json
        from roomcast.layers.exceptions import LayerConfigError
        from roomcast.layers.settings import channel_layers
        try:
            channel_layers.configs
        except LayerConfigError as exc:
            print(json.dumps(str(exc)))
    """
    out = run_python(code, env={"DJANGO_SETTINGS_MODULE": "no_such_roomcast_django_settings"})
    assert "DJANGO_SETTINGS_MODULE='no_such_roomcast_django_settings'" in out


def test_django_not_imported_when_not_configured() -> None:
    code = """
        import json, sys
        from roomcast.layers.settings import channel_layers
        channel_layers.get()
        print(json.dumps({"source": channel_layers.source, "django": "django" in sys.modules}))
    """
    assert run_python(code) == {"source": "the built-in default", "django": False}


# The registry -------------------------------------------------------------------------------


def test_one_instance_per_alias(settings_module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    name = settings_module(
        """
        CHANNEL_LAYERS = {
            "default": {"BACKEND": "roomcast.layers.memory.InMemoryChannelLayer"},
            "other": {"BACKEND": "roomcast.layers.memory.InMemoryChannelLayer",
                      "CONFIG": {"capacity": 2}},
        }
        """
    )
    monkeypatch.setenv(ENV_SETTINGS_MODULE, name)
    default = get_channel_layer()
    other = get_channel_layer("other")
    assert get_channel_layer() is default
    assert get_channel_layer("default") is default
    assert channel_layers.get("other") is other
    assert channel_layers["other"] is other
    assert other is not default
    assert (default.capacity, other.capacity) == (100, 2)


def test_one_instance_under_threads() -> None:
    manager = ChannelLayerManager()
    seen: list[object] = []
    barrier = threading.Barrier(8)

    def grab() -> None:
        barrier.wait()
        seen.append(manager.get())

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8
    assert all(layer is seen[0] for layer in seen)


def test_reset_forgets_layers_and_rereads_config(monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_channel_layer()
    monkeypatch.setenv(ENV_LAYER_URL, "memory://?capacity=4")
    assert get_channel_layer() is first  # config is read once, until reset
    assert channel_layers.configs == DEFAULT_CHANNEL_LAYERS
    channel_layers.reset()
    second = get_channel_layer()
    assert second is not first
    assert second.capacity == 4
    assert channel_layers.configs["default"]["CONFIG"] == {"capacity": 4}


def test_set_replaces_layer() -> None:
    built = get_channel_layer()
    mine = InMemoryChannelLayer(capacity=1)
    assert channel_layers.set("default", mine) is built
    assert get_channel_layer() is mine
    assert channel_layers.set("spare", InMemoryChannelLayer()) is None
    channel_layers.reset()
    assert get_channel_layer() is not mine


def test_configs_returns_a_copy() -> None:
    channel_layers.configs["default"] = {"BACKEND": "nope.Nope"}
    assert channel_layers.configs == DEFAULT_CHANNEL_LAYERS


def test_unknown_alias_lists_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_LAYER_URL, "memory://")
    with pytest.raises(LayerConfigError) as info:
        get_channel_layer("chat")
    message = str(info.value)
    assert "'chat'" in message
    assert "configured: 'default'" in message
    assert ENV_LAYER_URL in message


def test_failed_build_is_not_cached(settings_module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    name = settings_module(
        """
        from typing import Any
        from roomcast.layers.exceptions import LayerConfigError
        from roomcast.layers.memory import InMemoryChannelLayer

        calls = []

        class FlakyLayer(InMemoryChannelLayer):
            def __init__(self, **options: Any) -> None:
                calls.append(options)
                if len(calls) == 1:
                    raise LayerConfigError("not yet")
                super().__init__(**options)

        CHANNEL_LAYERS = {"default": {"BACKEND": f"{__name__}.FlakyLayer",
                                      "CONFIG": {"capacity": 9}}}
        """
    )
    monkeypatch.setenv(ENV_SETTINGS_MODULE, name)
    with pytest.raises(LayerConfigError) as info:
        get_channel_layer()
    assert str(info.value) == "CHANNEL_LAYERS['default']['CONFIG']: not yet"
    layer = get_channel_layer()
    assert layer.capacity == 9
    assert get_channel_layer() is layer
    assert len(sys.modules[name].calls) == 2


# build_layer --------------------------------------------------------------------------------


def test_build_layer_passes_config() -> None:
    layer = build_layer(
        "x",
        {
            "BACKEND": MEMORY_BACKEND,
            "CONFIG": {"capacity": 5, "channel_capacity": {"http.*": 2}, "expiry": 1.5},
        },
    )
    assert isinstance(layer, InMemoryChannelLayer)
    assert layer.get_capacity("http.request") == 2
    assert layer.get_capacity("chat") == 5
    assert layer.expiry == 1.5


def test_build_layer_gives_the_redis_layer_its_alias() -> None:
    """The Redis layer reports readiness under its CHANNEL_LAYERS alias (no connection made)."""
    from roomcast.layers.redis import RedisChannelLayer

    entry = {"BACKEND": REDIS_BACKEND, "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]}}
    layer = build_layer("chat", entry)
    assert isinstance(layer, RedisChannelLayer)
    assert layer.alias == "chat"
    assert layer.readiness_key == "channel layer 'chat'"
    named = build_layer("chat", {**entry, "CONFIG": {**entry["CONFIG"], "alias": "rooms"}})
    assert isinstance(named, RedisChannelLayer)
    assert named.alias == "rooms"  # the option, when given, wins


class ForeignLayer:
    """Someone else's layer class with Channels' methods, whose ``alias`` may mean anything."""

    def __init__(self, alias: str = "untouched") -> None:
        self.alias = alias

    async def send(self, channel: str, message: dict[str, Any]) -> None: ...
    async def receive(self, channel: str) -> dict[str, Any]: ...
    async def new_channel(self, prefix: str = "specific") -> str: ...
    async def group_add(self, group: str, channel: str) -> None: ...
    async def group_discard(self, group: str, channel: str) -> None: ...
    async def group_send(self, group: str, message: dict[str, Any]) -> None: ...


def test_build_layer_gives_no_alias_to_layers_without_the_option() -> None:
    layer = build_layer("chat", {"BACKEND": f"{__name__}.ForeignLayer"})
    assert isinstance(layer, ForeignLayer)
    assert layer.alias == "untouched"  # not a roomcast layer: its options are its own
    memory = build_layer("chat", {"BACKEND": MEMORY_BACKEND})  # takes no alias: built fine
    assert isinstance(memory, InMemoryChannelLayer)


def test_build_layer_tolerates_test_config_and_missing_config() -> None:
    layer = build_layer("default", {"BACKEND": MEMORY_BACKEND, "TEST_CONFIG": {"expiry": 1}})
    assert isinstance(layer, InMemoryChannelLayer)
    assert layer.expiry == 60.0
    bare = build_layer("default", {"BACKEND": MEMORY_BACKEND, "CONFIG": None})
    assert isinstance(bare, InMemoryChannelLayer)


@pytest.mark.parametrize(
    ("backend", "reason"),
    [
        ("no_such_roomcast_module.Layer", "No module named 'no_such_roomcast_module'"),
        (
            "roomcast.layers.memory.NoSuchLayer",
            "module 'roomcast.layers.memory' has no attribute 'NoSuchLayer'",
        ),
        ("InMemoryChannelLayer", "not a dotted path"),
    ],
)
def test_bad_backend_path(backend: str, reason: str) -> None:
    with pytest.raises(LayerConfigError) as info:
        build_layer("chat", {"BACKEND": backend})
    message = str(info.value)
    assert message.startswith(f"CHANNEL_LAYERS['chat']['BACKEND']: cannot import {backend!r}: ")
    assert reason in message


def test_backend_not_a_layer_class() -> None:
    with pytest.raises(LayerConfigError) as info:
        build_layer("chat", {"BACKEND": "roomcast.layers.base.LayerCounters"})
    assert "CHANNEL_LAYERS['chat']['BACKEND']" in str(info.value)
    assert "not a channel layer class" in str(info.value)


@pytest.mark.parametrize("backend", [None, 42, ""])
def test_backend_not_a_string(backend: Any) -> None:
    with pytest.raises(LayerConfigError, match=r"CHANNEL_LAYERS\['default'\]\['BACKEND'\]"):
        build_layer("default", {"BACKEND": backend})


def test_unknown_config_option() -> None:
    with pytest.raises(LayerConfigError) as info:
        build_layer("default", {"BACKEND": MEMORY_BACKEND, "CONFIG": {"capasity": 10}})
    assert str(info.value) == (
        "CHANNEL_LAYERS['default']['CONFIG']: unknown option 'capasity' for "
        "roomcast.layers.memory.InMemoryChannelLayer (accepted: capacity, channel_capacity, "
        "expiry, group_expiry, history, max_message_size, presence); did you mean 'capacity'?"
    )


def test_config_not_a_dict() -> None:
    with pytest.raises(LayerConfigError) as info:
        build_layer("chat", {"BACKEND": MEMORY_BACKEND, "CONFIG": [("capacity", 1)]})
    assert "CHANNEL_LAYERS['chat']['CONFIG'] must be a dict" in str(info.value)


def test_constructor_error_is_prefixed_with_alias() -> None:
    with pytest.raises(LayerConfigError) as info:
        build_layer("chat", {"BACKEND": MEMORY_BACKEND, "CONFIG": {"capacity": 0}})
    assert str(info.value) == (
        "CHANNEL_LAYERS['chat']['CONFIG']: capacity must be a positive int, got 0"
    )
    assert isinstance(info.value.__cause__, LayerConfigError)


def test_entry_not_a_dict() -> None:
    with pytest.raises(LayerConfigError, match=r"CHANNEL_LAYERS\['chat'\] must be a dict"):
        build_layer("chat", MEMORY_BACKEND)  # type: ignore[arg-type]


def test_entry_unknown_key() -> None:
    with pytest.raises(LayerConfigError) as info:
        build_layer("chat", {"BACKEND": MEMORY_BACKEND, "CONFIGS": {}})
    assert "CHANNEL_LAYERS['chat']: unknown key 'CONFIGS'" in str(info.value)


def test_entry_without_backend() -> None:
    with pytest.raises(LayerConfigError, match=r"CHANNEL_LAYERS\['chat'\] has no 'BACKEND'"):
        build_layer("chat", {"CONFIG": {}})


# layer_config_from_url ----------------------------------------------------------------------


def redis_config(url: str) -> dict[str, Any]:
    result = layer_config_from_url(url)
    assert list(result) == ["default"]
    assert result["default"]["BACKEND"] == REDIS_BACKEND
    config: dict[str, Any] = result["default"]["CONFIG"]
    return config


def test_url_memory_plain() -> None:
    assert layer_config_from_url("memory://") == {
        "default": {"BACKEND": MEMORY_BACKEND, "CONFIG": {}},
    }


def test_url_memory_with_options() -> None:
    config = layer_config_from_url("memory://?capacity=500&expiry=2.5&max_message_size=2048")
    assert config["default"]["CONFIG"] == {
        "capacity": 500,
        "expiry": 2.5,
        "max_message_size": 2048,
    }


@pytest.mark.parametrize(
    "url",
    ["redis://localhost:6379/0", "rediss://:pw@cache.example:6380/1", "unix:///tmp/redis.sock"],
)
def test_url_redis_without_options_is_kept_verbatim(url: str) -> None:
    assert redis_config(url) == {"hosts": [url]}


def test_url_options_extracted_and_converted() -> None:
    config = redis_config(
        "redis://h:6379/0?prefix=chat&expiry=30&group_expiry=3600.5&capacity=250"
        "&max_message_size=65536"
    )
    assert config == {
        "hosts": ["redis://h:6379/0"],
        "prefix": "chat",
        "expiry": 30.0,
        "group_expiry": 3600.5,
        "capacity": 250,
        "max_message_size": 65536,
    }
    assert type(config["expiry"]) is float
    assert type(config["capacity"]) is int
    assert type(config["max_message_size"]) is int


def test_url_retry_and_liveness_timeouts_are_layer_options() -> None:
    config = redis_config("redis://h:6379/0?retry_timeout=0.5&liveness_timeout=30&db=1")
    assert config == {
        "hosts": ["redis://h:6379/0?db=1"],
        "retry_timeout": 0.5,
        "liveness_timeout": 30.0,
    }
    assert type(config["liveness_timeout"]) is float
    layer = build_layer("default", layer_config_from_url("redis://h?retry_timeout=0.5")["default"])
    assert layer.retry_timeout == 0.5  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis://h?liveness_timeout=0.1", "liveness_timeout must be a number of seconds"),
        ("redis://h?retry_timeout=7200", "retry_timeout must be a number of seconds between"),
    ],
)
def test_url_timeouts_out_of_range_are_refused_naming_them(url: str, fragment: str) -> None:
    with pytest.raises(LayerConfigError) as info:
        build_layer("default", layer_config_from_url(url)["default"])
    assert fragment in str(info.value)
    assert "CHANNEL_LAYERS['default']['CONFIG']" in str(info.value)


def test_url_other_params_stay_in_redis_url() -> None:
    config = redis_config(
        "rediss://u:p%40ss@h:6380/3?ssl_cert_reqs=none&capacity=5&socket_timeout=2.5#frag"
    )
    assert config == {
        "hosts": ["rediss://u:p%40ss@h:6380/3?ssl_cert_reqs=none&socket_timeout=2.5#frag"],
        "capacity": 5,
    }


def test_url_unix_socket_keeps_path_and_db() -> None:
    config = redis_config("unix:///var/run/redis.sock?db=2&prefix=rc")
    assert config == {"hosts": ["unix:///var/run/redis.sock?db=2"], "prefix": "rc"}


def test_url_several_hosts_are_shards() -> None:
    config = redis_config(
        "redis://a:6379/0?capacity=10, redis://b:6379/0?db=1&capacity=10,unix:///tmp/r.sock"
    )
    assert config == {
        "hosts": ["redis://a:6379/0", "redis://b:6379/0?db=1", "unix:///tmp/r.sock"],
        "capacity": 10,
    }


def test_url_option_given_once_applies_to_all_shards() -> None:
    config = redis_config("redis://a?prefix=p,redis://b")
    assert config == {"hosts": ["redis://a", "redis://b"], "prefix": "p"}


def test_url_conflicting_options_across_shards() -> None:
    with pytest.raises(LayerConfigError, match="'capacity' is given different values"):
        layer_config_from_url("redis://a?capacity=1,redis://b?capacity=2")


def test_url_option_given_twice() -> None:
    with pytest.raises(LayerConfigError, match="'expiry' is given more than once"):
        layer_config_from_url("redis://a?expiry=1&expiry=2")


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("capacity=lots", "capacity='lots' must be an integer"),
        ("capacity=1.5", "capacity='1.5' must be an integer"),
        ("expiry=soon", "expiry='soon' must be a number"),
        ("expiry=nan", "expiry='nan' must be a number"),
        ("group_expiry=inf", "group_expiry='inf' must be a number"),
        ("retry_timeout=soon", "retry_timeout='soon' must be a number"),
        ("liveness_timeout=inf", "liveness_timeout='inf' must be a number"),
    ],
)
def test_url_bad_option_values(query: str, fragment: str) -> None:
    with pytest.raises(LayerConfigError) as info:
        layer_config_from_url(f"redis://h?{query}")
    assert fragment in str(info.value)


@pytest.mark.parametrize("scheme", ["http", "amqp", "postgres"])
def test_url_unknown_scheme(scheme: str) -> None:
    with pytest.raises(LayerConfigError) as info:
        layer_config_from_url(f"{scheme}://host:1234")
    assert f"unknown layer URL scheme {scheme!r}" in str(info.value)


@pytest.mark.parametrize("url", ["localhost:6379", "just-a-host", ""])
def test_url_without_scheme(url: str) -> None:
    with pytest.raises(LayerConfigError):
        layer_config_from_url(url)


def test_url_password_not_in_errors() -> None:
    with pytest.raises(LayerConfigError) as info:
        layer_config_from_url("redis://user:s3cret@h?capacity=x")
    assert "s3cret" not in str(info.value)
    assert "redis://user:***@h" in str(info.value)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("memory://,redis://h", "cannot be combined"),
        ("memory://?prefix=x", "'prefix' is an option of the Redis layer only"),
        ("memory://?retry_timeout=1", "'retry_timeout' is an option of the Redis layer only"),
        ("memory://?liveness_timeout=9", "'liveness_timeout' is an option of the Redis layer"),
        ("memory://somehost", "memory:// takes no host"),
        ("memory://?db=1", "memory:// takes no host"),
    ],
)
def test_url_memory_misuse(url: str, fragment: str) -> None:
    with pytest.raises(LayerConfigError) as info:
        layer_config_from_url(url)
    assert fragment in str(info.value)


def test_url_config_builds_memory_layer() -> None:
    entry = layer_config_from_url("memory://?capacity=8")["default"]
    layer = build_layer("default", entry)
    assert isinstance(layer, InMemoryChannelLayer)
    assert layer.capacity == 8


def test_backend_from_another_package_is_accepted() -> None:
    """A Channels-compatible layer that is not ours (Channels' own) can be the BACKEND."""
    layer = build_layer("other", {"BACKEND": "channels.layers.InMemoryChannelLayer"})
    assert type(layer).__module__ == "channels.layers"


def test_channels_redis_pubsub_layer_is_accepted() -> None:
    """Its methods live on instances (via __getattr__), not on the class."""
    layer = build_layer(
        "pubsub",
        {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        },
    )
    assert type(layer).__name__ == "RedisPubSubChannelLayer"


# Channels' registry API: configs, backends, in, make_backend, make_test_backend ------------

TWO_LAYERS = """
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "roomcast.layers.memory.InMemoryChannelLayer",
            "CONFIG": {"capacity": 7},
            "TEST_CONFIG": {"expiry": 100500},
        },
        "plain": {"BACKEND": "roomcast.layers.memory.InMemoryChannelLayer"},
    }
"""


def test_contains_and_backends(settings_module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SETTINGS_MODULE, settings_module(TWO_LAYERS))
    assert "default" in channel_layers
    assert "plain" in channel_layers
    assert "chat" not in channel_layers
    assert channel_layers.backends == {}
    layer = get_channel_layer()
    assert channel_layers.backends == {"default": layer}
    channel_layers.backends.clear()  # a copy: the registry keeps its layer
    assert get_channel_layer() is layer


def test_make_backend_builds_a_new_unregistered_layer(
    settings_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_SETTINGS_MODULE, settings_module(TWO_LAYERS))
    registered = get_channel_layer()
    made = channel_layers.make_backend("default")
    assert made is not registered
    assert made.capacity == 7
    assert made.expiry == 60  # CONFIG, not TEST_CONFIG
    assert get_channel_layer() is registered
    with pytest.raises(LayerConfigError, match="no channel layer 'chat'"):
        channel_layers.make_backend("chat")


def test_make_test_backend_uses_test_config(
    settings_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_SETTINGS_MODULE, settings_module(TWO_LAYERS))
    layer = channel_layers.make_test_backend("default")
    assert layer.expiry == 100500
    assert layer.capacity == 100  # TEST_CONFIG replaces CONFIG, as in Channels
    assert channel_layers.backends == {}


def test_make_test_backend_without_test_config_is_channels_error(
    settings_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from roomcast.consumers.exceptions import InvalidChannelLayerError

    monkeypatch.setenv(ENV_SETTINGS_MODULE, settings_module(TWO_LAYERS))
    with pytest.raises(InvalidChannelLayerError) as info:
        channel_layers.make_test_backend("plain")
    assert isinstance(info.value, LayerConfigError)
    assert "CHANNEL_LAYERS['plain'] has no 'TEST_CONFIG'" in str(info.value)


def test_test_config_is_checked_like_config() -> None:
    entry = {"BACKEND": MEMORY_BACKEND, "TEST_CONFIG": {"capasity": 1}}
    with pytest.raises(LayerConfigError) as info:
        build_layer("default", entry, config_key="TEST_CONFIG")
    assert "CHANNEL_LAYERS['default']['TEST_CONFIG']: unknown option 'capasity'" in str(info.value)
    assert "did you mean 'capacity'?" in str(info.value)
    assert build_layer("default", entry).capacity == 100  # CONFIG builds ignore TEST_CONFIG


def test_every_config_error_is_channels_invalid_channel_layer_error() -> None:
    from roomcast.consumers.exceptions import InvalidChannelLayerError

    with pytest.raises(InvalidChannelLayerError, match=r"cannot import 'nope\.Nope'"):
        build_layer("default", {"BACKEND": "nope.Nope"})
    assert issubclass(LayerConfigError, ValueError)


# override_settings (Django, in a subprocess) ------------------------------------------------

OVERRIDE_SETTINGS = """
    import json
    import django
    from django.conf import settings
    settings.configure(CHANNEL_LAYERS={
        "default": {"BACKEND": "roomcast.layers.memory.InMemoryChannelLayer",
                    "CONFIG": {"capacity": 3}},
    })
    django.setup()
    from django.test import override_settings
    from roomcast.layers.settings import channel_layers, get_channel_layer

    MEMORY = "roomcast.layers.memory.InMemoryChannelLayer"
    out = {}
    before = get_channel_layer()
    out["before"] = before.capacity
    # Add an alias: visible inside, gone outside.
    with override_settings(CHANNEL_LAYERS={
        "default": {"BACKEND": MEMORY, "CONFIG": {"capacity": 3}},
        "extra": {"BACKEND": MEMORY, "CONFIG": {"capacity": 9}},
    }):
        out["entered_empty"] = channel_layers.backends == {}
        out["extra"] = get_channel_layer("extra").capacity
        out["default_is_new"] = get_channel_layer() is not before
        out["built_inside"] = sorted(channel_layers.backends)
    out["left_empty"] = channel_layers.backends == {}
    out["extra_after"] = "extra" in channel_layers
    out["after"] = get_channel_layer().capacity
    # Swap the Redis layer of a project's settings for the in-memory one, as tests do.
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": MEMORY}}):
        out["swapped"] = type(get_channel_layer()).__name__
        out["swapped_capacity"] = get_channel_layer().capacity
    # Another setting changing leaves the layers alone.
    kept = get_channel_layer()
    with override_settings(DEBUG=True):
        out["other_setting_keeps"] = get_channel_layer() is kept
    print(json.dumps(out))
"""


def test_override_settings_resets_the_registry() -> None:
    out = run_python(OVERRIDE_SETTINGS)
    assert out == {
        "before": 3,
        "entered_empty": True,
        "extra": 9,
        "default_is_new": True,
        "built_inside": ["default", "extra"],
        "left_empty": True,
        "extra_after": False,
        "after": 3,
        "swapped": "InMemoryChannelLayer",
        "swapped_capacity": 100,
        "other_setting_keeps": True,
    }


def test_override_settings_swaps_a_redis_project_to_memory(tmp_path: Path) -> None:
    """A project's settings name the Redis layer (never reached); a TestCase swaps it out."""
    (tmp_path / "redis_project_settings.py").write_text(
        "SECRET_KEY = 'x'\n"
        "INSTALLED_APPS = []\n"
        "DATABASES = {}\n"
        "CHANNEL_LAYERS = {'default': {'BACKEND': 'roomcast.layers.redis.RedisChannelLayer',"
        " 'CONFIG': {'hosts': ['redis://127.0.0.1:1/0']}}}\n"
    )
    (tmp_path / "test_swap.py").write_text(
        textwrap.dedent(
            """
            from django.test import SimpleTestCase, override_settings
            from roomcast.layers.settings import get_channel_layer

            MEMORY = {"default": {"BACKEND": "roomcast.layers.memory.InMemoryChannelLayer"}}


            class Outside(SimpleTestCase):
                def test_project_layer(self):
                    self.assertEqual(type(get_channel_layer()).__name__, "RedisChannelLayer")


            @override_settings(CHANNEL_LAYERS=MEMORY)
            class Swapped(SimpleTestCase):
                def test_memory_layer(self):
                    self.assertEqual(type(get_channel_layer()).__name__, "InMemoryChannelLayer")
            """
        )
    )
    code = """
        import json, sys, unittest
        import django
        django.setup()
        from django.test.utils import get_runner
        from django.conf import settings
        suite = unittest.defaultTestLoader.loadTestsFromNames(
            ["test_swap.Outside", "test_swap.Swapped", "test_swap.Outside"])
        result = unittest.TextTestRunner(stream=sys.stderr, verbosity=2).run(suite)
        print(json.dumps({"run": result.testsRun, "ok": result.wasSuccessful()}))
    """
    env = {"DJANGO_SETTINGS_MODULE": "redis_project_settings", "PYTHONPATH": str(tmp_path)}
    assert run_python(code, env=env) == {"run": 3, "ok": True}


def test_no_signal_without_django() -> None:
    code = """
        import json, sys
        from roomcast.layers.settings import channel_layers, get_channel_layer
        get_channel_layer(); channel_layers.make_backend("default")
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "django")))
    """
    assert run_python(code) == []
