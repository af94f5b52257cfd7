"""layer-bench: small real runs (memory, a spawned redis-server), the JSON schema, error exits.

No timing is asserted: only that the runs complete, count what they sent and received, and
report it in the documented shape.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from roomcast.layers.bench import report
from roomcast.layers.bench.cli import main
from roomcast.layers.bench.scenarios import Settings, plan

from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--rounds", "1", "--duration", "2", "--no-progress"]


def run_bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    status = main([*args, *QUICK, "--json", str(out)])
    assert status == 0
    doc: dict[str, Any] = json.loads(out.read_text())
    assert report.check_document(doc) == []
    return doc


def runs_of(doc: dict[str, Any], target: str, scenario: str) -> list[dict[str, Any]]:
    return [run for run in doc["runs"] if run["target"] == target and run["scenario"] == scenario]


def test_memory_every_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_bench(tmp_path, "--layer", "memory://", "--group-sizes", "1,5", "--messages", "40")
    settings = Settings(group_sizes=[1, 5], rounds=1)
    assert len(doc["runs"]) == len(plan(settings))  # fanout 2 + p2p 1 + latency 1 + 2
    assert doc["targets"][0]["backend"] == "roomcast.layers.memory.InMemoryChannelLayer"
    assert doc["targets"][0]["in_process"] is True
    for run in doc["runs"]:
        assert run["sent"] == 40
        assert run["delivered"] == run["expected"] == 40 * (run["group_size"] or 1)
        assert run["dropped"] == 0
        assert run["processes"] == 1
        assert run["sender"] == "member"
        assert run["redis"] is None
        assert run["latency_ms"]["count"] == 40
        assert run["latency_ms"]["p50"] <= run["latency_ms"]["p99"] <= run["latency_ms"]["max"]
        assert run["deliveries_per_s"] > 0
    latency = [run for run in doc["runs"] if run["scenario"] == "latency"]
    assert {run["window"] for run in latency} == {1}
    assert [row["ratio"] for row in doc["summary"]] == [1.0] * len(doc["summary"])
    table = capsys.readouterr().out
    assert "deliveries/s" in table
    assert "memory://" in table


def test_redis_beside_memory(tmp_path: Path, redis_server: RedisServer, redis_prefix: str) -> None:
    url = f"{redis_server.url}?prefix={redis_prefix}"
    doc = run_bench(
        tmp_path,
        *("--layer", url, "--name", "roomcast redis"),
        *(
            "--backend",
            "roomcast.layers.memory.InMemoryChannelLayer",
            "--config",
            '{"capacity": 200}',
        ),
        *("--processes", "2", "--scenarios", "fanout,p2p", "--group-sizes", "3,6"),
        *("--messages", "30", "--senders", "2"),
    )
    assert [t["name"] for t in doc["targets"]] == [
        "roomcast redis",
        "roomcast.layers.memory.InMemoryChannelLayer",
    ]
    fanout = runs_of(doc, "roomcast redis", "fanout")
    assert [run["group_size"] for run in fanout] == [3, 6]
    for run in fanout:
        assert run["processes"] == 2
        assert run["sender"] == "separate"
        assert run["delivered"] == run["sent"] * run["group_size"]
        redis = run["redis"]
        assert redis["by_command"].get("evalsha", 0) >= run["sent"]  # one script per send
        assert "info" not in redis["by_command"]
        assert redis["per_send"]["commands"] > 0
        assert redis["net_in_bytes"] > 0
        assert len(run["counters"]) == 2  # one per member process
    p2p = runs_of(doc, "roomcast redis", "p2p")[0]
    assert p2p["pairs"] == 2
    assert p2p["sent"] == 60  # --messages per pair
    assert p2p["delivered"] == 60
    memory = runs_of(doc, "roomcast.layers.memory.InMemoryChannelLayer", "fanout")
    assert all(run["processes"] == 1 and run["redis"] is None for run in memory)
    ratios = [row["ratio"] for row in doc["summary"] if row["target"] != "roomcast redis"]
    assert all(ratio is not None and ratio > 0 for ratio in ratios)


def test_redis_without_blmpop(tmp_path: Path) -> None:
    """A server that lacks BLMPOP (Redis 6.2) still carries direct sends: the inbox falls back
    to LPOP/BLPOP."""
    server = RedisServer(extra_args=("--rename-command", "BLMPOP", "")).start()
    try:
        doc = run_bench(
            tmp_path,
            *("--layer", server.url, "--processes", "2", "--scenarios", "p2p"),
            *("--messages", "50"),
        )
    finally:
        server.cleanup()
    run = doc["runs"][0]
    assert run["delivered"] == run["sent"] == 50
    assert "blmpop" not in run["redis"]["by_command"]
    assert run["redis"]["by_command"].keys() & {"lpop", "blpop"}


@pytest.mark.skipif(
    importlib.util.find_spec("channels_redis") is None, reason="channels_redis not installed"
)
def test_channels_redis_backend(
    tmp_path: Path, redis_server: RedisServer, redis_prefix: str
) -> None:
    config = json.dumps({"hosts": [redis_server.url], "prefix": redis_prefix})
    doc = run_bench(
        tmp_path,
        *("--backend", "channels_redis.core.RedisChannelLayer", "--config", config),
        *("--scenarios", "fanout,latency", "--group-sizes", "4", "--messages", "10"),
    )
    for run in doc["runs"]:
        assert run["delivered"] == run["expected"]
        assert run["redis"] is not None


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_plot(tmp_path: Path) -> None:
    png = tmp_path / "bench.png"
    status = main(
        [
            *("--layer", "memory://", "--group-sizes", "2,4", "--messages", "10"),
            *QUICK,
            *("--plot", str(png), "--markdown"),
        ]
    )
    assert status == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_table(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            *("--layer", "memory://", "--scenarios", "p2p", "--messages", "10"),
            *QUICK,
            "--markdown",
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert out.startswith("| scenario | size | layer |")
    assert "| p2p | 1 pair | memory:// | 1 |" in out


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("layer-bench: error: ")
    return err[0]


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (["--layer", "mongodb://x"], 2, "unknown layer URL scheme 'mongodb'"),
        (["--layer", "nosuchalias"], 2, "not an alias in CHANNEL_LAYERS"),
        (["--backend", "no.such.Layer"], 2, "cannot import backend 'no.such.Layer'"),
        (
            [
                "--backend",
                "roomcast.layers.redis.RedisChannelLayer",
                "--config",
                '{"capacity": -1}',
            ],
            2,
            "capacity must be a positive int",
        ),
        (["--backend", "json.JSONDecoder"], 2, "is not a channel layer"),
        (
            ["--backend", "roomcast.layers.memory.InMemoryChannelLayer", "--config", "{"],
            2,
            "not JSON",
        ),
        (
            [
                "--backend",
                "roomcast.layers.memory.InMemoryChannelLayer",
                "--config",
                '{"capasity": 1}',
            ],
            2,
            "rejected its CONFIG",
        ),
    ],
)
def test_bad_target_is_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], status: int, says: str
) -> None:
    assert main([*args, *QUICK]) == status
    assert says in error_line(capsys)


def test_missing_redis_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["--layer", f"redis://127.0.0.1:{port}/0", *QUICK]) == 1
    line = error_line(capsys)
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in line


def test_missing_redis_of_a_backend(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    config = json.dumps({"hosts": [["127.0.0.1", port]]})
    args = ["--backend", "roomcast.layers.redis.RedisChannelLayer", "--config", config, *QUICK]
    assert main(args) == 1
    assert f"cannot reach Redis at 127.0.0.1:{port}" in error_line(capsys)


def test_plot_without_matplotlib(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(report, "plot_available", lambda: False)
    assert main(["--layer", "memory://", "--plot", "x.png", *QUICK]) == 2
    assert "pip install 'roomcast[plot]'" in error_line(capsys)


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--config", "{}"])
    assert exited.value.code == 2
    assert "--config must follow the --backend" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--scenarios", "fanout,nope"])
    assert "unknown scenario 'nope'" in capsys.readouterr().err


def test_command_line_entry_points() -> None:
    for module in ("roomcast.layers.bench", "roomcast.layers.bench.cli"):
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "--group-sizes" in done.stdout
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'layer-bench = "roomcast.layers.bench.cli:main"' in pyproject


def test_schema_checker_finds_problems(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "--layer", "memory://", "--scenarios", "p2p", "--messages", "5")
    broken = json.loads(json.dumps(doc))
    broken["schema"] = "other/9"
    del broken["runs"][0]["deliveries_per_s"]
    broken["runs"][0]["target"] = "ghost"
    broken["summary"][0]["figures"]["latency_p50_ms"] = "fast"
    problems = report.check_document(broken)
    assert any("schema is 'other/9'" in p for p in problems)
    assert any("missing 'deliveries_per_s'" in p for p in problems)
    assert any("target 'ghost' is not in targets" in p for p in problems)
    assert any("latency_p50_ms" in p for p in problems)
    assert report.check_document([]) == ["document: not an object"]


def test_history_measures_each_layer_twice(
    tmp_path: Path, redis_server: RedisServer, redis_prefix: str
) -> None:
    """``--history``: each target as given and with history on the bench's groups, interleaved;
    the history twin's group_sends are still one script each, and every copy is delivered."""
    url = f"{redis_server.url}?prefix={redis_prefix}"
    doc = run_bench(
        tmp_path,
        *("--layer", url, "--name", "redis", "--layer", "memory://", "--history", "20"),
        *("--processes", "2", "--scenarios", "fanout", "--group-sizes", "3"),
        *("--messages", "30"),
    )
    assert [t["name"] for t in doc["targets"]] == [
        "redis",
        "redis +history",
        "memory://",
        "memory:// +history",
    ]
    assert [t["history"] for t in doc["targets"]] == [None, {"bench.*": {"size": 20}}] * 2
    assert doc["settings"]["history"] == 20
    for name in ("redis", "redis +history", "memory://", "memory:// +history"):
        (run,) = runs_of(doc, name, "fanout")
        assert run["delivered"] == run["sent"] * 3 == 90
    plain = runs_of(doc, "redis", "fanout")[0]["redis"]
    history = runs_of(doc, "redis +history", "fanout")[0]["redis"]
    assert plain["by_command"].get("xadd", 0) == 0
    assert history["by_command"]["xadd"] >= 30  # every send kept: one script, one XADD each
    assert history["by_command"]["evalsha"] >= 30


def test_history_on_a_layer_without_history_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["--backend", "channels.layers.InMemoryChannelLayer", "--history", *QUICK])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("layer-bench: error:")
    assert "\n" not in error
    assert "history" in error
