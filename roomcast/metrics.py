"""This process's metrics: plain counters kept by each part, read by Prometheus at scrape time.

The gateway, the layers and the consumers each keep what they count in objects they own (plain
``int`` attributes, small dicts, a :class:`Histogram` of fixed buckets) and register those
objects here as *sources*. Nothing is pushed anywhere while the process works: incrementing a
counter costs an attribute add, observing a duration one ``bisect`` and two adds, and no
prometheus-client call runs per message or per request. At scrape time a prometheus-client
custom collector asks every source for its :class:`Family` values (:func:`collect`) and turns
them into Prometheus metric families. This is the same process-registry spirit as
:mod:`roomcast.readiness`: the gateway imports this module and never a layer; a layer or a
consumer imports it and never the gateway.

prometheus-client is the optional extra ``roomcast[metrics]``. Without it everything here still
imports and counts (:func:`collect` works, it is plain Python); only :func:`serve`,
:func:`install` and :func:`render` need it, and they raise :class:`MetricsUnavailable` saying
``pip install 'roomcast[metrics]'``. Call :func:`require` first to fail early (the ``roomcast``
commands do, for ``--metrics-port``).

Sources
-------
A source is any object with ``collect_metrics() -> Iterable[Family]``, called on each scrape
(on the event loop's thread when :func:`serve` answers; it must tolerate being read from
another thread when an app exposes :func:`install`'s registry itself, so copy dicts with
``dict(d)`` rather than iterating them)::

    class LinkStats:                       # owned by the part that counts
        def __init__(self):
            self.reconnects = 0
            self.roundtrip = Histogram()

        def collect_metrics(self):
            yield counter("roomcast_layer_redis_reconnects_total", "Reconnections to Redis.",
                          {("redis",): self.reconnects}, labels=("backend",))
            yield histogram("roomcast_layer_redis_roundtrip_seconds", "Redis round trips.",
                            {("redis",): self.roundtrip.value()}, labels=("backend",))

    metrics.register(stats, owner=layer)   # lives as long as the layer; no leak in tests

``register(source)`` holds the source by weak reference: when it is garbage collected its
series vanish. ``register(source, owner=obj)`` holds the source itself until ``obj`` is
collected, then folds its counters and histograms into the process's retired totals, so
counters never go down when a short-lived part (a layer made by a test, a closed layer) goes;
its gauges vanish with it. :func:`unregister` does the same fold at once. Families of the same
name from several sources are added up (two layers of one backend give one series).

**The Redis layer's hook.** :class:`roomcast.layers.BaseChannelLayer` registers every layer's
:class:`~roomcast.layers.base.LayerCounters` (``roomcast_layer_*{backend, cause}``) and asks
``layer.local_group_counts()`` for the membership gauges; a backend overrides that method to
report its process-local groups. Its own metrics (reconnects, outage seconds, the Redis
round-trip histogram, pub/sub messages received, history recoveries) go in a source it owns,
registered with ``register(stats, owner=self)``, named ``roomcast_layer_redis_*`` and labelled
``backend`` (plus bounded labels such as ``outcome``); ``docs/operations.md`` lists the planned
names.

Naming rules (checked on every scrape by :func:`check_family`, and by ``tests/test_metrics.py``)
------------------------------------------------------------------------------------------------
1. Names are ``roomcast_<part>_<what>`` in lower snake case, ``<part>`` being ``gateway``,
   ``layer``, ``consumer`` or ``worker``.
2. Counters, and only counters, end in ``_total``. No name of ours ends in ``_count``, ``_sum``,
   ``_bucket``, ``_created`` or ``_info`` (the exposition adds those).
3. Base units, in the name: ``_seconds``, ``_bytes``; ratios from 0 to 1 as ``_ratio``. Never
   milliseconds, kilobytes, minutes or percent. A name about time (duration, latency, lag, wait,
   outage, roundtrip, age, uptime) ends in ``_seconds`` (``_seconds_total`` for a counter).
4. Labels are lower snake case, never ``le``, ``quantile``, ``job``, ``instance`` or ``__*``.
   Cardinality is bounded: no label carries a path, URL, query, group, channel, user, client
   address, token, session or id (those names are refused). Every label's values come from a
   set fixed in the code (backend, cause, protocol, method, status class, close code) or pass
   through a :class:`LabelValues` cap (consumer class: 200; message type: 100) that folds the
   rest into ``"other"``. A family holds at most :data:`MAX_SERIES` series, and label values
   are at most :data:`MAX_LABEL_VALUE` characters.
5. Every family has a help sentence.

A family that breaks a rule is left out of the scrape and logged once (``roomcast.metrics``
logger), so one bad source cannot break ``/metrics``.

Serving: :func:`serve`
----------------------
``await serve(port, host)`` answers ``GET /metrics`` on its own port with prometheus-client's
default registry (:data:`prometheus_client.REGISTRY`, into which :func:`install` puts the
roomcast collector): the app's own prometheus-client metrics and the process/GC collectors are
exported too. It is a small asyncio server on the process's event loop rather than
prometheus-client's ``start_http_server`` (a thread): the sources are then read on the thread
that updates them, so no source needs a lock or a copy to give a consistent reading, and the
gateway keeps one event loop and no extra thread. A scrape costs the loop a few milliseconds
per thousand lines of exposition (about 9 ms for 1,900 lines on a busy 2-core machine).
Anything but ``GET``/``HEAD /metrics`` gets 404/405, a malformed request 400, a request head
over 8 KiB 431, a client silent for 10 s is dropped; one request per connection. An app
served by another server (uvicorn, gunicorn) calls :func:`install` and exposes
:data:`prometheus_client.REGISTRY` its own way.

With several worker processes (``roomcast serve --workers N``)
-------------------------------------------------------------
Each worker has its own sources. **The supervisor serves /metrics** (``--metrics-port``; built
in :mod:`roomcast.gateway.workers`): on each scrape it asks every worker, over the pipe it
already keeps to it, for :func:`snapshot` (plain picklable :class:`Family` objects), adds a
``worker="<index>"`` label, 1 to N (:meth:`Family.with_label`), and answers with :func:`render`
of the list :func:`merge` adds up (``serve(..., gather=...)``), plus
``roomcast_gateway_worker_up{worker}``, 0 for a worker that did not answer within a second.
A restarted worker's counters start again from zero, which
Prometheus treats as a counter reset per series. prometheus-client's *multiprocess mode* was
weighed and rejected: it does not support custom collectors (this whole design), it puts a lock
and an mmap write into every increment (the hot-path cost we avoid), and each gauge needs a
multiprocess aggregation mode. The fallback, if the pipe is not built: one metrics port per
worker (``port + index``), each scraped as its own target.

Faults
------
Everything is in the process's memory: a restart or a ``kill -9`` starts every counter at zero
(a counter reset for Prometheus, which ``rate()`` handles) and closes the metrics port with the
process. A Redis reconnect or failover changes no counter here; the layer counts it in its own
source. A scrape that comes while a part is being garbage collected sees that part either
before or after its fold into the retired totals, never twice.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import itertools
import logging
import math
import re
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol, TypeAlias

__all__ = [
    "DEFAULT_BUCKETS",
    "INSTALL_HINT",
    "MAX_LABEL_VALUE",
    "MAX_SERIES",
    "OTHER",
    "Family",
    "Histogram",
    "HistogramValue",
    "LabelValues",
    "MetricRuleError",
    "MetricSource",
    "MetricsError",
    "MetricsServer",
    "MetricsUnavailable",
    "check_family",
    "collect",
    "counter",
    "gauge",
    "histogram",
    "install",
    "merge",
    "register",
    "render",
    "require",
    "serve",
    "snapshot",
    "unregister",
]

logger = logging.getLogger("roomcast.metrics")

INSTALL_HINT = "Prometheus metrics need prometheus-client: pip install 'roomcast[metrics]'"
OTHER = "other"
MAX_SERIES = 1000
MAX_LABEL_VALUE = 256
#: Seconds, from half a millisecond to ten seconds: request durations, round trips, lag.
DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

Kind: TypeAlias = Literal["counter", "gauge", "histogram"]
LabelSet: TypeAlias = tuple[str, ...]


class MetricsError(RuntimeError):
    """Metrics cannot be served as asked (the port is taken, prometheus-client is missing)."""


class MetricsUnavailable(MetricsError):
    """prometheus-client is not installed: ``pip install 'roomcast[metrics]'``."""


class MetricRuleError(ValueError):
    """A metric family breaks a naming or cardinality rule (see the module docstring)."""


# Values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistogramValue:
    """A histogram's reading: per-bucket counts (not cumulative), the last one above
    ``bounds[-1]``, and the sum of what was observed."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` per bucket, ending with ``(inf, count)``."""
        return list(zip((*self.bounds, math.inf), itertools.accumulate(self.counts), strict=True))

    def __add__(self, other: HistogramValue) -> HistogramValue:
        if other.bounds != self.bounds:
            raise MetricRuleError(f"histogram buckets differ: {self.bounds} and {other.bounds}")
        counts = tuple(a + b for a, b in zip(self.counts, other.counts, strict=True))
        return HistogramValue(self.bounds, counts, self.sum + other.sum)


class Histogram:
    """Fixed buckets, plain ints: ``observe()`` is one bisect and two adds, no lock."""

    __slots__ = ("_bounds", "_counts", "sum")

    def __init__(self, bounds: Sequence[float] = DEFAULT_BUCKETS) -> None:
        bounds = tuple(float(b) for b in bounds)
        if not bounds or any(not math.isfinite(b) for b in bounds):
            raise MetricRuleError(f"histogram bounds must be finite numbers, got {bounds!r}")
        if any(b >= c for b, c in itertools.pairwise(bounds)):
            raise MetricRuleError(f"histogram bounds must increase, got {bounds!r}")
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound is >= it (Prometheus' ``le``)."""
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self.sum += value

    def value(self) -> HistogramValue:
        return HistogramValue(self._bounds, tuple(self._counts), self.sum)


class LabelValues:
    """Admits at most ``limit`` distinct values of a label; later new ones read ``"other"``.

    For labels whose values the developer chooses (message types, consumer classes): the first
    ``limit`` values seen keep their name for the life of the process.
    """

    __slots__ = ("_seen", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise MetricRuleError(f"a label needs room for at least one value, got {limit}")
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit or len(value) > MAX_LABEL_VALUE:
            return OTHER
        self._seen.add(value)
        return value


# Families ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Family:
    """One metric: its name, kind, help, label names and a value per set of label values."""

    name: str
    kind: Kind
    help: str
    labels: LabelSet = ()
    samples: dict[LabelSet, Any] = field(default_factory=dict)  # float, or HistogramValue

    def with_label(self, name: str, value: str) -> Family:
        """This family with one more label of a fixed value (the supervisor's ``worker``)."""
        return Family(
            self.name,
            self.kind,
            self.help,
            (*self.labels, name),
            {(*values, value): sample for values, sample in self.samples.items()},
        )

    def copy(self) -> Family:
        return Family(self.name, self.kind, self.help, self.labels, dict(self.samples))


def _family(
    kind: Kind, name: str, help: str, samples: Mapping[LabelSet, Any] | Any, labels: LabelSet
) -> Family:
    if not isinstance(samples, Mapping):
        samples = {(): samples}
    return Family(name, kind, help, tuple(labels), dict(samples))


def counter(
    name: str, help: str, samples: Mapping[LabelSet, float] | float, labels: LabelSet = ()
) -> Family:
    """A counter family: ``samples`` maps label values to a total (or is one unlabelled total)."""
    return _family("counter", name, help, samples, labels)


def gauge(
    name: str, help: str, samples: Mapping[LabelSet, float] | float, labels: LabelSet = ()
) -> Family:
    """A gauge family: ``samples`` maps label values to a current value."""
    return _family("gauge", name, help, samples, labels)


def histogram(
    name: str,
    help: str,
    samples: Mapping[LabelSet, HistogramValue] | HistogramValue,
    labels: LabelSet = (),
) -> Family:
    """A histogram family: ``samples`` maps label values to :meth:`Histogram.value` readings."""
    return _family("histogram", name, help, samples, labels)


NAME_RE = re.compile(r"^roomcast_(gateway|layer|consumer|worker)(_[a-z0-9]+)+$")
LABEL_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
RESERVED_SUFFIXES = ("_count", "_sum", "_bucket", "_created", "_info")
RESERVED_LABELS = frozenset({"le", "quantile", "job", "instance"})
#: Label names whose values would be unbounded (one series per path, group, user, ...).
UNBOUNDED_LABELS = frozenset(
    {"path", "url", "uri", "query", "group", "channel", "user", "client", "address", "ip"}
    | {"token", "session", "id", "pid", "room"}
)
NON_BASE_UNITS = frozenset(
    {"milliseconds", "microseconds", "nanoseconds", "ms", "us", "ns", "minutes", "hours"}
    | {"days", "kilobytes", "megabytes", "gigabytes", "kb", "mb", "gb", "bits", "percent"}
)
TIME_WORDS = frozenset({"duration", "latency", "lag", "wait", "outage", "roundtrip", "age"})
TIME_WORDS = TIME_WORDS | {"uptime", "time"}


def check_name(name: str, kind: Kind, labels: LabelSet) -> None:
    """Raise :class:`MetricRuleError` naming the rule ``name``/``labels`` break (rules 1-4)."""
    if not NAME_RE.match(name):
        raise MetricRuleError(
            f"metric name {name!r} must be roomcast_<gateway|layer|consumer|worker>_<what> "
            f"in lower snake case"
        )
    words = name.split("_")
    if kind == "counter" and words[-1] != "total":
        raise MetricRuleError(f"counter {name!r} must end in _total")
    if kind != "counter" and words[-1] == "total":
        raise MetricRuleError(f"{kind} {name!r} must not end in _total (counters only)")
    if name.endswith(RESERVED_SUFFIXES):
        raise MetricRuleError(f"metric name {name!r} ends in a suffix the exposition adds")
    if NON_BASE_UNITS.intersection(words):
        raise MetricRuleError(f"metric name {name!r} must use base units (seconds, bytes)")
    unit = words[-2] if words[-1] == "total" else words[-1]
    if TIME_WORDS.intersection(words) and unit != "seconds":
        raise MetricRuleError(f"metric name {name!r} is about time: it must end in _seconds")
    for label in labels:
        if not LABEL_RE.match(label) or label in RESERVED_LABELS:
            raise MetricRuleError(f"{name}: label name {label!r} is invalid or reserved")
        if label in UNBOUNDED_LABELS:
            raise MetricRuleError(
                f"{name}: label {label!r} would have unbounded values; count without it"
            )
    if len(set(labels)) != len(labels):
        raise MetricRuleError(f"{name}: label names repeat: {labels!r}")


_checked: set[tuple[str, Kind, LabelSet]] = set()


def check_family(family: Family) -> None:
    """Raise :class:`MetricRuleError` if ``family`` breaks a rule of the module docstring."""
    key = (family.name, family.kind, family.labels)
    if key not in _checked:
        check_name(*key)
        if not family.help.strip():
            raise MetricRuleError(f"{family.name} needs a help sentence")
        _checked.add(key)
    if len(family.samples) > MAX_SERIES:
        raise MetricRuleError(
            f"{family.name} has {len(family.samples)} series; the limit is {MAX_SERIES}"
        )
    for values, sample in family.samples.items():
        if len(values) != len(family.labels) or not all(isinstance(v, str) for v in values):
            raise MetricRuleError(f"{family.name}: label values {values!r} for {family.labels}")
        if any(len(v) > MAX_LABEL_VALUE for v in values):
            raise MetricRuleError(f"{family.name}: a label value is over {MAX_LABEL_VALUE} chars")
        if isinstance(sample, HistogramValue) != (family.kind == "histogram"):
            raise MetricRuleError(f"{family.name}: a {family.kind} sample of {sample!r}")


def _merge(into: dict[str, Family], family: Family) -> None:
    """Add ``family``'s samples to the family of the same name in ``into``."""
    mine = into.get(family.name)
    if mine is None:
        into[family.name] = family.copy()
        return
    if mine.kind != family.kind or mine.labels != family.labels:
        raise MetricRuleError(
            f"{family.name} is a {family.kind} labelled {family.labels} in one source and a "
            f"{mine.kind} labelled {mine.labels} in another"
        )
    samples = mine.samples
    for values, sample in family.samples.items():
        samples[values] = samples[values] + sample if values in samples else sample


# The process's sources ----------------------------------------------------------------------


class MetricSource(Protocol):
    """What :func:`register` takes: an object that reports its families when scraped."""

    def collect_metrics(self) -> Iterable[Family]: ...


_lock = threading.RLock()
# key -> (the source when held strongly, else None; a weak reference to its owner or itself)
_entries: dict[int, tuple[MetricSource | None, weakref.ref[Any]]] = {}
_dead: list[int] = []  # keys whose referent died; appended by weakref callbacks, reaped later
_retired: dict[str, Family] = {}  # the counters and histograms of sources that are gone
_keys = itertools.count()
_reported: set[str] = set()  # problems already logged, once each


def _log_once(what: str, exc: BaseException) -> None:
    if what not in _reported:
        _reported.add(what)
        trace = None if isinstance(exc, MetricRuleError) else exc
        logger.error("metrics: %s: %s (left out of every scrape)", what, exc, exc_info=trace)


def _families_of(source: MetricSource) -> list[Family]:
    """The source's valid families; a failing source or a bad family is logged and left out."""
    try:
        families = list(source.collect_metrics())
    except Exception as exc:
        _log_once(f"source {type(source).__qualname__} failed", exc)
        return []
    good = []
    for family in families:
        try:
            check_family(family)
        except MetricRuleError as exc:
            _log_once(f"family {family.name!r} of {type(source).__qualname__}", exc)
            continue
        good.append(family)
    return good


def _retire(source: MetricSource) -> None:
    for family in _families_of(source):
        if family.kind != "gauge":
            try:
                _merge(_retired, family)
            except MetricRuleError as exc:
                _log_once(f"retiring {family.name!r}", exc)


def _reap() -> None:
    while _dead:
        entry = _entries.pop(_dead.pop(), None)
        if entry is not None and entry[0] is not None:
            _retire(entry[0])


def register(source: MetricSource, *, owner: object | None = None) -> None:
    """Report ``source``'s families on every scrape, until it (or ``owner``) is collected.

    Without ``owner`` the source is held weakly and its series vanish with it. With ``owner``
    the source is held until the owner is garbage collected, then its counters and histograms
    are kept in the retired totals (counters never go down); see the module docstring.
    """
    if not callable(getattr(source, "collect_metrics", None)):
        raise TypeError(f"a metric source needs collect_metrics(), {source!r} has none")
    key = next(_keys)

    def died(_ref: weakref.ref[Any], key: int = key) -> None:
        _dead.append(key)  # atomic; the lock is never taken inside a garbage collection

    with _lock:
        _reap()
        if owner is None:
            _entries[key] = (None, weakref.ref(source, died))
        else:
            _entries[key] = (source, weakref.ref(owner, died))


def unregister(source: MetricSource) -> bool:
    """Stop reporting ``source``; its counters move to the retired totals. False if unknown."""
    with _lock:
        _reap()
        for key, (strong, ref) in list(_entries.items()):
            if strong is source or (strong is None and ref() is source):
                del _entries[key]
                _retire(source)
                return True
    return False


def collect() -> list[Family]:
    """Every registered source's families, added up by name, plus the retired totals."""
    with _lock:
        _reap()
        merged = {name: family.copy() for name, family in _retired.items()}
        for strong, ref in list(_entries.values()):
            source = strong if strong is not None else ref()
            if source is None:
                continue
            for family in _families_of(source):
                try:
                    _merge(merged, family)
                except MetricRuleError as exc:
                    _log_once(f"family {family.name!r} of {type(source).__qualname__}", exc)
    return [merged[name] for name in sorted(merged)]


def snapshot() -> list[Family]:
    """:func:`collect`, as plain picklable data: what a worker sends its supervisor."""
    return collect()


def merge(families: Iterable[Family]) -> list[Family]:
    """``families`` added up by name (as :func:`collect` adds up its sources), sorted by name;
    a family that clashes with an earlier one of its name (kind, labels) is logged and left
    out."""
    merged: dict[str, Family] = {}
    for family in families:
        try:
            check_family(family)
            _merge(merged, family)
        except MetricRuleError as exc:
            _log_once(f"merging {family.name!r}", exc)
    return [merged[name] for name in sorted(merged)]


# prometheus-client ------------------------------------------------------------------------------


def require() -> None:
    """Raise :class:`MetricsUnavailable` unless prometheus-client can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise MetricsUnavailable(INSTALL_HINT) from exc


def _bound(value: float) -> str:
    return "+Inf" if value == math.inf else repr(float(value))


def _to_prometheus(family: Family) -> Any:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    labels = list(family.labels)
    metric: Any
    if family.kind == "histogram":
        metric = HistogramMetricFamily(family.name, family.help, labels=labels)
        for values, sample in family.samples.items():
            buckets = [(_bound(bound), count) for bound, count in sample.cumulative()]
            metric.add_metric(list(values), buckets, sample.sum)
        return metric
    cls = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
    metric = cls(family.name, family.help, labels=labels)
    for values, sample in family.samples.items():
        metric.add_metric(list(values), sample)
    return metric


class _Collector:
    """prometheus-client's view of roomcast's families (read at scrape time)."""

    def __init__(self, families: Callable[[], list[Family]]) -> None:
        self._families = families

    def collect(self) -> Iterable[Any]:
        return [_to_prometheus(family) for family in self._families()]

    def describe(self) -> Iterable[Any]:
        return []  # registering must not scrape; roomcast_ names clash with nobody's


_installed: list[Any] = []  # registries holding the roomcast collector


def install(registry: Any = None) -> None:
    """Put the roomcast collector into ``registry`` (default: prometheus-client's ``REGISTRY``),
    once; then anything exporting that registry exports roomcast's metrics too."""
    require()
    from prometheus_client import REGISTRY
    from prometheus_client.registry import Collector

    registry = REGISTRY if registry is None else registry
    with _lock:
        if any(r is registry for r in _installed):
            return
        collector: Collector = _Collector(collect)
        registry.register(collector)
        _installed.append(registry)


def render(
    families: Iterable[Family] | None = None, accept: str = "", registry: Any = None
) -> tuple[bytes, str]:
    """The exposition (body, content type) for an ``Accept`` header: of ``registry`` (default:
    prometheus-client's, with roomcast installed), or of ``families`` alone (a supervisor's
    merged snapshots)."""
    require()
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    if families is not None:
        fixed = list(families)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(lambda: fixed))
    elif registry is None:
        install()
        from prometheus_client import REGISTRY

        registry = REGISTRY
    else:
        install(registry)
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


# The /metrics endpoint ------------------------------------------------------------------------

MAX_HEAD = 8192
READ_TIMEOUT = 10.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS[431] = "Request Header Fields Too Large"


class MetricsServer:
    """A running :func:`serve`: ``url``, ``port`` (the real one when asked for 0), ``close()``."""

    def __init__(self, server: asyncio.Server) -> None:
        self._server = server
        sockname = server.sockets[0].getsockname()
        self.host: str = sockname[0]
        self.port: int = sockname[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.close()

    async def wait_closed(self) -> None:
        await self._server.wait_closed()

    async def __aenter__(self) -> MetricsServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()


Gather: TypeAlias = Callable[[], Awaitable[list[Family]]]


async def _answer(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    registry: Any,
    gather: Gather | None = None,
) -> None:
    """One connection, one request: read its head (bounded in size and time), answer, close."""
    try:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except (asyncio.LimitOverrunError, ValueError):
            await _respond(writer, 431, b"request head too large\n")
            return
        except (asyncio.IncompleteReadError, TimeoutError):
            return
        await _answer_request(head, writer, registry, gather)
    except ConnectionError:
        pass  # the scraper went away
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _answer_request(
    head: bytes, writer: asyncio.StreamWriter, registry: Any, gather: Gather | None = None
) -> None:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        await _respond(writer, 400, b"malformed request line\n")
        return
    method, target, _ = parts
    accept = ""
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() == "accept":
            accept = value.strip()
    if target.partition("?")[0] != "/metrics":
        await _respond(writer, 404, b"metrics are at /metrics\n")
        return
    if method not in ("GET", "HEAD"):
        await _respond(writer, 405, b"GET or HEAD\n", [("Allow", "GET, HEAD")])
        return
    if gather is not None:
        body, content_type = render(await gather(), accept=accept)
    else:
        body, content_type = render(accept=accept, registry=registry)
    headers = [("Content-Type", content_type)]
    await _respond(writer, 200, body, headers, head_only=method == "HEAD")


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
    *,
    head_only: bool = False,
) -> None:
    fields = headers or [("Content-Type", "text/plain; charset=utf-8")]
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}", *(f"{k}: {v}" for k, v in fields)]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    writer.write("\r\n".join(lines).encode("latin-1") + (b"" if head_only else body))
    await writer.drain()


async def serve(
    port: int, host: str = "127.0.0.1", *, registry: Any = None, gather: Gather | None = None
) -> MetricsServer:
    """Answer ``GET http://host:port/metrics`` on the running loop (port 0: a free one).

    ``registry`` defaults to prometheus-client's ``REGISTRY``; the roomcast collector is
    installed into it. With ``gather``, each scrape awaits ``gather()`` instead and answers
    with :func:`render` of the families it returns (the ``--workers`` supervisor's merged
    snapshots). Raises :class:`MetricsUnavailable` without prometheus-client and
    :class:`MetricsError` for a port out of range or one that cannot be bound.
    """
    require()
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise MetricsError(f"the metrics port must be an int from 0 to 65535, got {port!r}")
    from prometheus_client import REGISTRY

    registry = REGISTRY if registry is None else registry
    install(registry)
    answer = functools.partial(_answer, registry=registry, gather=gather)
    try:
        server = await asyncio.start_server(answer, host, port, limit=MAX_HEAD)
    except OSError as exc:
        raise MetricsError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
    return MetricsServer(server)
