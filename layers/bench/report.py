"""Results: medians over rounds, the table (rich, or Markdown), the JSON file, the plot.

JSON document (``--json FILE``), schema ``roomcast.layer-bench/1``; checked by
:func:`check_document`:

``schema``       ``"roomcast.layer-bench/1"``
``created``      ISO 8601 time of the run (UTC)
``environment``  ``python``, ``platform``, ``cpus``, ``packages`` (name -> version or null)
``settings``     the options: ``scenarios``, ``group_sizes``, ``processes``, ``senders``,
                 ``payload_bytes``, ``messages``, ``duration``, ``rounds``, ``window``,
                 ``sender``, ``loop``, ``hiredis``, ``history`` (``--history`` SIZE or null)
``targets``      one object per ``--layer``/``--backend`` in order (with ``--history``, each
                 followed by its ``+history`` twin): ``name``, ``backend``, ``in_process``,
                 ``redis_hosts``, ``history`` (the ``history`` option its groups got, or
                 null), ``loop``, ``hiredis`` (what the workers used)
``runs``         every measurement: ``target``, ``round``, ``scenario`` (fanout, p2p, latency),
                 ``kind`` (``group_send`` or ``send``), ``group_size`` (group_send) or ``pairs``
                 (send), ``processes``, ``sender``, ``senders``, ``window``, ``sent``,
                 ``expected``, ``delivered``, ``dropped``, ``channel_full``, ``stalls``,
                 ``elapsed_s``, ``deliveries_per_s``, ``sends_per_s``, ``latency_ms`` and
                 ``call_ms`` (``p50``/``p90``/``p99``/``max``/``count`` or null), ``redis``
                 (null, or ``commands``, ``by_command``, ``usec``, ``cpu_usec``,
                 ``net_in_bytes``, ``net_out_bytes`` and ``per_send`` with ``commands``,
                 ``usec``, ``cpu_usec``, ``net_bytes``), ``counters`` (the layer's, per member
                 process, or null), ``loop``, ``hiredis``
``summary``      per scenario, kind, size and target: ``rounds`` and the median of each figure
                 over them (``deliveries_per_s``, ``sends_per_s``, ``latency_p50_ms`` ...
                 ``redis_cpu_usec_per_send``, null where not measured), and ``ratio``: the
                 target's deliveries/s over the first target's (fanout, p2p), or its p50
                 latency over the first target's (latency)
``redis_ceiling`` null, or ``host``, ``requests``, ``clients``, ``set_per_s``, ``publish_per_s``
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCHEMA = "roomcast.layer-bench/1"

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_PCT = ("p50", "p90", "p99", "max", "count")

SUMMARY_FIGURES: dict[str, Any] = {
    "deliveries_per_s": lambda run: run["deliveries_per_s"],
    "sends_per_s": lambda run: run["sends_per_s"],
    "latency_p50_ms": lambda run: _pct(run["latency_ms"], "p50"),
    "latency_p90_ms": lambda run: _pct(run["latency_ms"], "p90"),
    "latency_p99_ms": lambda run: _pct(run["latency_ms"], "p99"),
    "latency_max_ms": lambda run: _pct(run["latency_ms"], "max"),
    "call_p50_ms": lambda run: _pct(run["call_ms"], "p50"),
    "dropped": lambda run: run["dropped"],
    "member_cpu_us_per_delivery": lambda run: run["cpu"]["member_us_per_delivery"],
    "sender_cpu_us_per_send": lambda run: run["cpu"]["sender_us_per_send"],
    "redis_commands_per_send": lambda run: _per_send(run, "commands"),
    "redis_usec_per_send": lambda run: _per_send(run, "usec"),
    "redis_cpu_usec_per_send": lambda run: _per_send(run, "cpu_usec"),
    "redis_net_bytes_per_send": lambda run: _per_send(run, "net_bytes"),
}


def _pct(block: dict[str, float] | None, key: str) -> float | None:
    return None if block is None else block[key]


def _per_send(run: dict[str, Any], key: str) -> float | None:
    redis = run["redis"]
    return None if redis is None else float(redis["per_send"][key])


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _size(run: dict[str, Any]) -> int:
    size = run["group_size"] if run["kind"] == "group_send" else run["pairs"]
    return int(size)


def summarise(runs: list[dict[str, Any]], target_names: list[str]) -> list[dict[str, Any]]:
    """Medians over rounds, in the order steps first ran, targets in the given order."""
    keys: list[tuple[str, str, int]] = []
    grouped: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {}
    for run in runs:
        key = (run["scenario"], run["kind"], _size(run))
        if key not in keys:
            keys.append(key)
        grouped.setdefault((*key, run["target"]), []).append(run)
    summary = []
    for scenario, kind, size in keys:
        first: dict[str, Any] | None = None
        for name in target_names:
            chunk = grouped.get((scenario, kind, size, name))
            if not chunk:
                continue
            medians = {
                figure: _median([get(run) for run in chunk])
                for figure, get in SUMMARY_FIGURES.items()
            }
            row = {
                "scenario": scenario,
                "kind": kind,
                "size": size,
                "target": name,
                "processes": chunk[0]["processes"],
                "rounds": len(chunk),
                "figures": medians,
                "ratio": None,
            }
            if first is None:
                first = row
            row["ratio"] = _ratio(scenario, medians, first["figures"])
            summary.append(row)
    return summary


def _ratio(scenario: str, mine: dict[str, Any], first: dict[str, Any]) -> float | None:
    figure = "latency_p50_ms" if scenario == "latency" else "deliveries_per_s"
    if mine[figure] is None or not first[figure]:
        return None
    return float(mine[figure]) / float(first[figure])


# Table ---------------------------------------------------------------------------------

COLUMNS = (
    "scenario",
    "size",
    "layer",
    "procs",
    "deliveries/s",
    "x first",
    "sends/s",
    "call p50 ms",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "drops",
    "member CPU µs/delivery",
    "sender CPU µs/send",
    "Redis cmds/send",
    "Redis cmd µs/send",
    "Redis CPU µs/send",
    "Redis bytes/send",
)


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:,.1f}"


def table_rows(summary: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for row in summary:
        f = row["figures"]
        size = (
            f"{row['size']} pair{'s' if row['size'] != 1 else ''}"
            if row["kind"] == "send"
            else (f"{row['size']} member{'s' if row['size'] != 1 else ''}")
        )
        scenario = row["scenario"] + (
            " (send)" if row["scenario"] == "latency" and row["kind"] == "send" else ""
        )
        rows.append(
            [
                scenario,
                size,
                row["target"],
                str(row["processes"]),
                _fmt(f["deliveries_per_s"]),
                "-" if row["ratio"] is None else f"{row['ratio']:.2f}",
                _fmt(f["sends_per_s"]),
                _ms(f["call_p50_ms"]),
                _ms(f["latency_p50_ms"]),
                _ms(f["latency_p90_ms"]),
                _ms(f["latency_p99_ms"]),
                _ms(f["latency_max_ms"]),
                _fmt(f["dropped"]),
                _fmt(f["member_cpu_us_per_delivery"], 2),
                _fmt(f["sender_cpu_us_per_send"], 1),
                _fmt(f["redis_commands_per_send"], 1),
                _fmt(f["redis_usec_per_send"], 1),
                _fmt(f["redis_cpu_usec_per_send"], 1),
                _fmt(f["redis_net_bytes_per_send"]),
            ]
        )
    return rows


def markdown(summary: list[dict[str, Any]], ceiling: dict[str, Any] | None) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |"]
    lines.append("|" + "|".join("---" if i < 3 else "---:" for i in range(len(COLUMNS))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    if ceiling:
        lines += ["", ceiling_line(ceiling)]
    return "\n".join(lines)


def ceiling_line(ceiling: dict[str, Any]) -> str:
    return (
        f"redis-benchmark on {ceiling['host']} ({ceiling['clients']} clients): "
        f"SET {_fmt(ceiling.get('set_per_s'))}/s, "
        f"PUBLISH (no subscriber) {_fmt(ceiling.get('publish_per_s'))}/s"
    )


def print_table(
    summary: list[dict[str, Any]], ceiling: dict[str, Any] | None, caption: str
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="layer-bench", caption=caption, show_lines=False)
    for index, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if index < 3 else "right", overflow="fold")
    previous = None
    for row, cells in zip(summary, table_rows(summary), strict=True):
        key = (row["scenario"], row["kind"], row["size"])
        if previous is not None and key != previous:
            table.add_section()
        previous = key
        table.add_row(*cells)
    # Piped or redirected: as wide as the table needs, never folded into an unreadable column.
    console = Console() if sys.stdout.isatty() else Console(width=320)
    console.print(table)
    if ceiling:
        console.print(ceiling_line(ceiling))


# JSON ----------------------------------------------------------------------------------

_RUN_FIELDS: dict[str, Any] = {
    "target": str,
    "round": int,
    "scenario": str,
    "kind": str,
    "group_size": (int, type(None)),
    "pairs": (int, type(None)),
    "processes": int,
    "sender": str,
    "senders": int,
    "window": int,
    "sent": int,
    "expected": int,
    "delivered": int,
    "dropped": int,
    "channel_full": int,
    "stalls": int,
    "elapsed_s": _NUM,
    "deliveries_per_s": _NUM,
    "sends_per_s": _NUM,
    "latency_ms": (dict, type(None)),
    "call_ms": (dict, type(None)),
    "redis": (dict, type(None)),
    "counters": list,
    "cpu": dict,
    "loop": (str, type(None)),
    "hiredis": (bool, type(None)),
}
_REDIS_FIELDS: dict[str, Any] = {
    "commands": int,
    "by_command": dict,
    "usec": int,
    "cpu_usec": _NUM,
    "net_in_bytes": int,
    "net_out_bytes": int,
    "per_send": dict,
}
_SETTINGS_FIELDS = (
    "scenarios",
    "group_sizes",
    "processes",
    "senders",
    "payload_bytes",
    "messages",
    "duration",
    "rounds",
    "window",
    "sender",
    "loop",
    "hiredis",
)


def _check_fields(where: str, value: Any, fields: dict[str, Any], problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(f"{where}: not an object")
        return
    for name, kind in fields.items():
        if name not in value:
            problems.append(f"{where}: missing {name!r}")
        elif not isinstance(value[name], kind) or (
            kind in (int, _NUM) and isinstance(value[name], bool)
        ):
            problems.append(f"{where}.{name}: {value[name]!r} has the wrong type")


def check_document(doc: Any) -> list[str]:
    """What is wrong with a ``--json`` document; empty when it follows the schema."""
    problems: list[str] = []
    _check_fields(
        "document",
        doc,
        {
            "schema": str,
            "created": str,
            "environment": dict,
            "settings": dict,
            "targets": list,
            "runs": list,
            "summary": list,
            "redis_ceiling": (dict, type(None)),
        },
        problems,
    )
    if problems:
        return problems
    if doc["schema"] != SCHEMA:
        problems.append(f"schema is {doc['schema']!r}, expected {SCHEMA!r}")
    for name in _SETTINGS_FIELDS:
        if name not in doc["settings"]:
            problems.append(f"settings: missing {name!r}")
    names = []
    for index, target in enumerate(doc["targets"]):
        _check_fields(
            f"targets[{index}]",
            target,
            {"name": str, "backend": str, "in_process": bool, "redis_hosts": list},
            problems,
        )
        if isinstance(target, dict):
            names.append(target.get("name"))
    for index, run in enumerate(doc["runs"]):
        where = f"runs[{index}]"
        _check_fields(where, run, _RUN_FIELDS, problems)
        if not isinstance(run, dict):
            continue
        if run.get("target") not in names:
            problems.append(f"{where}: target {run.get('target')!r} is not in targets")
        if run.get("scenario") not in ("fanout", "p2p", "latency"):
            problems.append(f"{where}: unknown scenario {run.get('scenario')!r}")
        if run.get("kind") not in ("group_send", "send"):
            problems.append(f"{where}: unknown kind {run.get('kind')!r}")
        for block in ("latency_ms", "call_ms"):
            value = run.get(block)
            if isinstance(value, dict):
                _check_fields(f"{where}.{block}", value, dict.fromkeys(_PCT, _NUM), problems)
        redis = run.get("redis")
        if isinstance(redis, dict):
            _check_fields(f"{where}.redis", redis, _REDIS_FIELDS, problems)
            per_send = redis.get("per_send")
            if isinstance(per_send, dict):
                _check_fields(
                    f"{where}.redis.per_send",
                    per_send,
                    dict.fromkeys(("commands", "usec", "cpu_usec", "net_bytes"), _NUM),
                    problems,
                )
    for index, row in enumerate(doc["summary"]):
        where = f"summary[{index}]"
        _check_fields(
            where,
            row,
            {
                "scenario": str,
                "kind": str,
                "size": int,
                "target": str,
                "processes": int,
                "rounds": int,
                "figures": dict,
                "ratio": _OPT_NUM,
            },
            problems,
        )
        figures = row.get("figures") if isinstance(row, dict) else None
        if isinstance(figures, dict):
            _check_fields(
                f"{where}.figures", figures, dict.fromkeys(SUMMARY_FIGURES, _OPT_NUM), problems
            )
    return problems


def write_json(path: str, doc: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


# Plot ----------------------------------------------------------------------------------


def plot_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot(path: str, summary: list[dict[str, Any]], target_names: list[str]) -> None:
    """Deliveries/s (fanout) and p99 latency (latency, else fanout) against group size."""
    matplotlib: Any = importlib.import_module("matplotlib")  # an optional extra: untyped here
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    latency_scenario = (
        "latency"
        if any(r["scenario"] == "latency" and r["kind"] == "group_send" for r in summary)
        else "fanout"
    )
    for name in target_names:
        fanout = [r for r in summary if r["target"] == name and r["scenario"] == "fanout"]
        if fanout:
            left.plot(
                [r["size"] for r in fanout],
                [r["figures"]["deliveries_per_s"] for r in fanout],
                marker="o",
                label=name,
            )
        latency = [
            r
            for r in summary
            if r["target"] == name
            and r["scenario"] == latency_scenario
            and r["kind"] == "group_send"
            and r["figures"]["latency_p99_ms"] is not None
        ]
        if latency:
            right.plot(
                [r["size"] for r in latency],
                [r["figures"]["latency_p99_ms"] for r in latency],
                marker="o",
                label=name,
            )
    left.set(
        xscale="log",
        yscale="log",
        xlabel="group size",
        ylabel="deliveries/s",
        title="fanout throughput",
    )
    right.set(
        xscale="log",
        yscale="log",
        xlabel="group size",
        ylabel="p99 ms, group_send → last delivery",
        title=f"{latency_scenario} p99",
    )
    for axes in (left, right):
        axes.grid(True, which="both", alpha=0.3)
        if axes.lines:
            axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
