"""``layer-bench``: how many messages a channel layer fans out per second, and how late.

Examples::

    layer-bench --layer memory:// --group-sizes 1,10,100,1000
    layer-bench --layer redis://127.0.0.1:6379/0 --processes 4 --group-sizes 1000 \\
        --backend channels_redis.core.RedisChannelLayer \\
        --config '{"hosts": ["redis://127.0.0.1:6379/0"]}' --json out.json --plot out.png

Several ``--layer``/``--backend`` run interleaved, round by round, and the table gives ratios
against the first. ``--config`` belongs to the ``--backend`` before it. ``--history [SIZE]``
measures every one of them twice, interleaved: as given, and with history on the benchmark's
groups (``{"bench.*": {"size": SIZE}}``, 100 by default), named ``<name> +history``::

    layer-bench --layer redis://127.0.0.1:6379/0 --history --processes 4 --group-sizes 1,100,1000
 A bad URL, backend or
option, or an unreachable Redis, ends with one ``layer-bench: error:`` line: status 2 for a
usage mistake, 1 when something could not be reached or failed while running.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

from . import report
from .board import Board
from .redis_stats import RedisProbe, ceiling
from .scenarios import SCENARIOS, Pool, Settings, measure, plan
from .targets import BenchError, Target, from_backend, from_layer, unique_names, with_history

PACKAGES = ("roomcast", "redis", "hiredis", "msgpack", "uvloop", "channels", "channels_redis")


class _TargetAction(argparse.Action):
    """Keeps ``--layer`` and ``--backend`` in command-line order in ``namespace.targets``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        targets = list(getattr(namespace, "targets", None) or [])
        targets.append([self.dest, values, None])
        namespace.targets = targets


class _ConfigAction(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        targets = getattr(namespace, "targets", None) or []
        if not targets or targets[-1][0] != "backend" or targets[-1][2] is not None:
            parser.error("--config must follow the --backend it configures (one each)")
        targets[-1][2] = values


class _NameAction(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        targets = getattr(namespace, "targets", None) or []
        if not targets or len(targets[-1]) > 3:
            parser.error("--name must follow the --layer or --backend it names (one each)")
        targets[-1].append(values)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _non_negative_int(text: str) -> int:
    value = _positive_int(text) if text.strip() != "0" else 0
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _sizes(text: str) -> list[int]:
    return [_positive_int(part) for part in text.split(",") if part.strip()]


def _scenarios(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in SCENARIOS:
            raise argparse.ArgumentTypeError(
                f"unknown scenario {name!r} (choose from {', '.join(SCENARIOS)})"
            )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layer-bench",
        description="Fan-out, point-to-point and latency benchmarks of Channels-compatible "
        "channel layers, side by side.",
        epilog="Without --layer or --backend, the 'default' alias of CHANNEL_LAYERS is measured.",
    )
    what = parser.add_argument_group("what to measure (repeatable, run interleaved)")
    what.add_argument(
        "--layer",
        action=_TargetAction,
        metavar="ALIAS|URL",
        help="a CHANNEL_LAYERS alias, or memory://, redis://host:port/db (layer options as "
        "query parameters)",
    )
    what.add_argument(
        "--backend",
        action=_TargetAction,
        metavar="DOTTED.CLASS",
        help="any Channels-compatible layer class, e.g. channels_redis.core.RedisChannelLayer",
    )
    what.add_argument(
        "--config",
        action=_ConfigAction,
        metavar="JSON",
        help="the CONFIG (JSON object) of the --backend before it",
    )
    what.add_argument(
        "--name",
        action=_NameAction,
        metavar="LABEL",
        help="what the table calls the --layer or --backend before it",
    )
    what.add_argument(
        "--history",
        type=_positive_int,
        nargs="?",
        const=100,
        default=None,
        metavar="SIZE",
        help="measure every layer also with history on the benchmark's groups (their last "
        "SIZE messages, default 100), interleaved, as '<name> +history'",
    )
    how = parser.add_argument_group("workload")
    how.add_argument(
        "--scenarios",
        type=_scenarios,
        default=list(SCENARIOS),
        help="comma-separated: fanout, p2p, latency (default: all)",
    )
    how.add_argument(
        "--group-sizes",
        type=_sizes,
        default=[1, 10, 100, 1000],
        help="fan-out group sizes (default 1,10,100,1000)",
    )
    how.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        help="member processes, each with its own layer instance (default 1)",
    )
    how.add_argument(
        "--sender",
        choices=("separate", "member"),
        default="separate",
        help="send from a process of its own (default) or from the first member process",
    )
    how.add_argument(
        "--senders",
        type=_positive_int,
        default=1,
        help="concurrent senders; in p2p, sender/receiver pairs (default 1)",
    )
    how.add_argument(
        "--payload-bytes",
        type=_non_negative_int,
        default=64,
        help="text carried by each message (default 64)",
    )
    how.add_argument(
        "--messages",
        type=_positive_int,
        default=None,
        help="stop each measurement after this many sends",
    )
    how.add_argument(
        "--duration",
        type=_positive_float,
        default=5.0,
        help="seconds of sending per measurement (default 5)",
    )
    how.add_argument(
        "--rounds",
        type=_positive_int,
        default=3,
        help="interleaved rounds; the table shows medians (default 3)",
    )
    how.add_argument(
        "--window",
        type=_positive_int,
        default=50,
        help="messages in flight, not yet delivered to every member (default 50)",
    )
    how.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of the bench processes (default asyncio)",
    )
    how.add_argument(
        "--no-hiredis",
        action="store_true",
        help="make redis-py use its pure-Python parser even if hiredis is installed",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write every reading and the medians")
    out.add_argument(
        "--plot",
        metavar="FILE.png",
        help="deliveries/s and p99 latency against group size (needs matplotlib: "
        "pip install 'roomcast[plot]')",
    )
    out.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    out.add_argument(
        "--redis-ceiling",
        action="store_true",
        help="also run redis-benchmark SET and PUBLISH against the first Redis",
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _environment() -> dict[str, Any]:
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "packages": packages,
    }


class _Progress:
    """The rich progress bar on stderr, or nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._progress: Any = None
        self._task: Any = None
        self._prefix = ""
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._task = self._progress.add_task("starting", total=total)

    def __enter__(self) -> _Progress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def begin(self, text: str) -> None:
        self._prefix = text
        self.status("starting")

    def status(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=f"{self._prefix} · {text}")

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)


async def run_all(
    targets: list[Target],
    settings: Settings,
    probes: dict[str, RedisProbe | None],
    progress: _Progress,
) -> list[dict[str, Any]]:
    steps = plan(settings)
    runs: list[dict[str, Any]] = []
    board = Board.create()
    try:
        for round_index in range(settings.rounds):
            shift = round_index % len(targets)
            for target in targets[shift:] + targets[:shift]:  # rotate: no target always first
                progress.begin(f"round {round_index + 1}/{settings.rounds} · {target.name}")
                progress.status("starting processes")
                pool = Pool(target, settings, board)
                try:
                    await pool.open()
                    for step in steps:
                        progress.begin(
                            f"round {round_index + 1}/{settings.rounds} · {target.name} · "
                            f"{step.label()}"
                        )
                        record = await measure(pool, step, probes[target.name], progress.status)
                        record["round"] = round_index + 1
                        runs.append(record)
                        progress.advance()
                finally:
                    await pool.close()
    finally:
        board.close(unlink=True)
    return runs


def _caption(settings: Settings, runs: list[dict[str, Any]]) -> str:
    loops = sorted({str(run["loop"]) for run in runs})
    parsers = {run["hiredis"] for run in runs if run["hiredis"] is not None}
    hiredis = sorted({"hiredis" if parser else "pure-Python parser" for parser in parsers})
    return (
        f"medians of {settings.rounds} round(s) of {settings.duration:g} s"
        f"{f' or {settings.messages} sends' if settings.messages else ''}; "
        f"{settings.payload_bytes}-byte text; window {settings.window}; "
        f"loop {', '.join(loops)}"
        f"{'; redis-py with ' + ', '.join(hiredis) if hiredis else ''}. "
        f"x first: deliveries/s over the first layer's (latency rows: p50 over the first's). "
        f"Latency: send → receive, or group_send → last member's delivery."
    )


def run(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    raw_targets = getattr(args, "targets", None) or [["layer", "default", None]]
    if args.plot and not report.plot_available():
        raise BenchError("--plot needs matplotlib: pip install 'roomcast[plot]'", 2)
    targets = []
    for kind, value, config, *name in raw_targets:
        target = from_layer(value) if kind == "layer" else from_backend(value, config)
        if name:
            target.name = name[0]
        targets.append(target)
    if args.history is not None:
        targets = [
            twin for target in targets for twin in (target, with_history(target, args.history))
        ]
    unique_names(targets)
    settings = Settings(
        scenarios=args.scenarios,
        group_sizes=args.group_sizes,
        processes=args.processes,
        senders=args.senders,
        payload_bytes=args.payload_bytes,
        messages=args.messages,
        duration=args.duration,
        rounds=args.rounds,
        window=args.window,
        sender=args.sender,
        loop=args.loop,
        hiredis=not args.no_hiredis,
        history=args.history,
    )
    if settings.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise BenchError(
                "--loop uvloop needs uvloop: pip install 'roomcast[fast]'", 2
            ) from None
    probes: dict[str, RedisProbe | None] = {}
    try:
        for target in targets:
            probe = RedisProbe(target.redis_hosts) if target.redis_hosts else None
            if probe is not None:
                probe.check()
            probes[target.name] = probe
        total = len(plan(settings)) * len(targets) * settings.rounds
        show = not args.no_progress
        with _Progress(total, show) as progress:
            runs = asyncio.run(run_all(targets, settings, probes, progress))
        ceiling_result = None
        if args.redis_ceiling:
            first = next((t for t in targets if t.redis_hosts), None)
            if first is not None:
                ceiling_result = ceiling(first.redis_hosts[0])
    finally:
        for probe in probes.values():
            if probe is not None:
                probe.close()
    names = [target.name for target in targets]
    summary = report.summarise(runs, names)
    caption = _caption(settings, runs)
    if args.markdown:
        print(report.markdown(summary, ceiling_result))
        print()
        print(caption)
    else:
        report.print_table(summary, ceiling_result, caption)
    if args.json:
        infos = {run["target"]: run for run in runs}
        doc = {
            "schema": report.SCHEMA,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "environment": _environment(),
            "settings": settings.as_dict(),
            "targets": [
                {
                    **target.describe(),
                    "loop": infos.get(target.name, {}).get("loop"),
                    "hiredis": infos.get(target.name, {}).get("hiredis"),
                }
                for target in targets
            ],
            "runs": runs,
            "summary": summary,
            "redis_ceiling": ceiling_result,
        }
        report.write_json(args.json, doc)
    if args.plot:
        report.plot(args.plot, summary, names)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except BenchError as exc:
        print(f"layer-bench: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("layer-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
