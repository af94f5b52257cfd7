"""roomcast.metrics: sources, the naming rules, the collector and the /metrics endpoint.

The endpoint is scraped over a real socket with httpx (and a raw socket for malformed
requests); the exposition is parsed back with prometheus-client's parser. The last tests run
Python in a subprocess where prometheus-client cannot be imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from roomcast import metrics
from roomcast.metrics import (
    Family,
    Histogram,
    LabelValues,
    MetricRuleError,
    MetricsError,
    counter,
    gauge,
    histogram,
)
from tests.metrics_support import Scrape

ROOT = Path(__file__).resolve().parents[1]
WAIT = 10.0


class Source:
    """A metric source of the kind the parts keep: plain ints, a histogram. Each test names
    its own (``roomcast_worker_<prefix>_...``), as the registry is the process's."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.jobs = 0
        self.busy = 0
        self.durations = Histogram((0.1, 1.0))

    def collect_metrics(self) -> Iterator[Family]:
        name = f"roomcast_worker_{self.prefix}"
        yield counter(f"{name}_jobs_total", "Jobs done.", {("a",): self.jobs}, ("kind",))
        yield gauge(f"{name}_busy", "Jobs in hand.", self.busy)
        yield histogram(
            f"{name}_job_duration_seconds", "How long jobs take.", self.durations.value()
        )


class Owner:
    """Something with a lifetime that a source belongs to (a layer, in real life)."""


def families() -> dict[str, Family]:
    return {family.name: family for family in metrics.collect()}


def total(name: str, *labels: str) -> float:
    family = families().get(name)
    return 0.0 if family is None else float(family.samples.get(tuple(labels), 0.0))


# Values --------------------------------------------------------------------------------------


def test_histogram_buckets_are_less_or_equal_with_one_bisect() -> None:
    h = Histogram((0.1, 1.0, 10.0))
    for value in (0.05, 0.1, 0.100001, 1.0, 5, 50):
        h.observe(value)
    reading = h.value()
    assert reading.counts == (2, 2, 1, 1)  # 0.1 belongs to le="0.1", as in Prometheus
    assert reading.cumulative() == [(0.1, 2), (1.0, 4), (10.0, 5), (math.inf, 6)]
    assert reading.count == 6
    assert reading.sum == pytest.approx(56.250001)
    assert (reading + reading).counts == (4, 4, 2, 2)
    with pytest.raises(MetricRuleError, match="differ"):
        reading + Histogram((1.0,)).value()


@pytest.mark.parametrize(
    ("bounds", "error"),
    [((), "finite"), ((1.0, math.inf), "finite"), ((1.0, 1.0), "increase"), ((2, 1), "increase")],
)
def test_histogram_bounds_are_checked(bounds: tuple[float, ...], error: str) -> None:
    with pytest.raises(MetricRuleError, match=error):
        Histogram(bounds)


def test_label_values_keep_the_first_ones_and_fold_the_rest_into_other() -> None:
    cap = LabelValues(3)
    seen = [cap(v) for v in ("a", "b", "a", "c", "d", "e", "b")]
    assert seen == ["a", "b", "a", "c", "other", "other", "b"]
    assert cap("x" * 300) == "other"  # too long to be a label value
    with pytest.raises(MetricRuleError):
        LabelValues(0)


# The naming rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name", "labels", "error"),
    [
        ("counter", "myapp_requests_total", (), "roomcast_<gateway"),
        ("counter", "roomcast_http_requests_total", (), "roomcast_<gateway"),
        ("counter", "roomcast_gateway_Requests_total", (), "lower snake case"),
        ("counter", "roomcast_gateway_requests", (), "must end in _total"),
        ("gauge", "roomcast_gateway_open_total", (), "counters only"),
        ("gauge", "roomcast_gateway_requests_count", (), "suffix the exposition adds"),
        ("histogram", "roomcast_gateway_request_duration_ms", (), "base units"),
        ("histogram", "roomcast_gateway_body_kilobytes", (), "base units"),
        ("gauge", "roomcast_gateway_loop_lag", (), "must end in _seconds"),
        ("counter", "roomcast_layer_redis_outage_total", (), "must end in _seconds"),
        ("counter", "roomcast_gateway_requests_total", ("path",), "unbounded"),
        ("counter", "roomcast_layer_sent_total", ("group",), "unbounded"),
        ("counter", "roomcast_layer_sent_total", ("le",), "reserved"),
        ("counter", "roomcast_layer_sent_total", ("Backend",), "invalid"),
        ("counter", "roomcast_layer_sent_total", ("backend", "backend"), "repeat"),
    ],
)
def test_names_and_labels_that_break_a_rule_are_refused(
    kind: Any, name: str, labels: tuple[str, ...], error: str
) -> None:
    with pytest.raises(MetricRuleError, match=error):
        metrics.check_name(name, kind, labels)


@pytest.mark.parametrize(
    ("kind", "name", "labels"),
    [
        ("counter", "roomcast_gateway_requests_total", ("method", "status")),
        ("histogram", "roomcast_gateway_request_duration_seconds", ("protocol",)),
        ("counter", "roomcast_layer_redis_outage_seconds_total", ("backend",)),
        ("gauge", "roomcast_gateway_event_loop_lag_seconds", ()),
        ("gauge", "roomcast_consumer_instances", ("consumer",)),
    ],
)
def test_names_that_follow_the_rules_pass(kind: Any, name: str, labels: tuple[str, ...]) -> None:
    metrics.check_name(name, kind, labels)


def test_a_family_needs_help_bounded_series_and_matching_samples() -> None:
    with pytest.raises(MetricRuleError, match="help"):
        metrics.check_family(counter("roomcast_worker_x_total", " ", 1))
    many = {(str(n),): n for n in range(metrics.MAX_SERIES + 1)}
    with pytest.raises(MetricRuleError, match="limit is 1000"):
        metrics.check_family(counter("roomcast_worker_y_total", "Y.", many, ("kind",)))
    with pytest.raises(MetricRuleError, match="label values"):
        metrics.check_family(counter("roomcast_worker_z_total", "Z.", {("a", "b"): 1}, ("kind",)))
    with pytest.raises(MetricRuleError, match="a histogram sample"):
        metrics.check_family(histogram("roomcast_worker_w_seconds", "W.", {(): 1.0}))


# Sources ---------------------------------------------------------------------------------------


def test_sources_of_one_family_are_added_up_and_a_weak_source_vanishes() -> None:
    first, second = Source("sum"), Source("sum")
    metrics.register(first)
    metrics.register(second)
    first.jobs, second.jobs = 2, 3
    first.busy, second.busy = 1, 1
    first.durations.observe(0.05)
    second.durations.observe(5)
    found = families()
    assert found["roomcast_worker_sum_jobs_total"].samples == {("a",): 5}
    assert found["roomcast_worker_sum_busy"].samples == {(): 2}
    reading = found["roomcast_worker_sum_job_duration_seconds"].samples[()]
    assert reading.counts == (1, 0, 1)
    del second
    gc.collect()
    assert total("roomcast_worker_sum_jobs_total", "a") == 2  # no owner: its totals went too
    assert metrics.unregister(first)
    assert not metrics.unregister(first)


def test_an_owned_source_keeps_its_counters_after_its_owner_goes() -> None:
    owner, source = Owner(), Source("owned")
    metrics.register(source, owner=owner)
    source.jobs, source.busy = 7, 4
    source.durations.observe(0.5)
    assert total("roomcast_worker_owned_jobs_total", "a") == 7
    assert total("roomcast_worker_owned_busy") == 4
    del owner, source
    gc.collect()
    found = families()
    assert total("roomcast_worker_owned_jobs_total", "a") == 7  # counters never go down
    assert found["roomcast_worker_owned_job_duration_seconds"].samples[()].count == 1
    assert "roomcast_worker_owned_busy" not in found  # its gauge went with it
    other = Source("owned")
    metrics.register(other)
    other.jobs = 1
    assert total("roomcast_worker_owned_jobs_total", "a") == 8
    assert metrics.unregister(other)  # unregistering keeps its counters too
    assert total("roomcast_worker_owned_jobs_total", "a") == 8


def test_a_bad_source_is_left_out_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def collect_metrics(self) -> Iterator[Family]:
            raise RuntimeError("cannot count")

    class Misnamed:
        def collect_metrics(self) -> Iterator[Family]:
            yield counter("roomcast_worker_misnamed", "No _total.", 1)
            yield counter("roomcast_worker_fine_total", "Fine.", 1)

    broken, misnamed = Broken(), Misnamed()
    metrics.register(broken)
    metrics.register(misnamed)
    with caplog.at_level(logging.ERROR, "roomcast.metrics"):
        metrics.collect()
        found = families()
    assert "roomcast_worker_misnamed" not in found
    assert found["roomcast_worker_fine_total"].samples == {(): 1}
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot count" in m for m in messages) == 1
    assert sum("must end in _total" in m for m in messages) == 1
    metrics.unregister(broken)
    metrics.unregister(misnamed)


def test_two_sources_disagreeing_on_a_family_keep_the_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class AsGauge:
        def collect_metrics(self) -> Iterator[Family]:
            yield gauge("roomcast_worker_clash", "A gauge.", 1)

    class AsLabelled:
        def collect_metrics(self) -> Iterator[Family]:
            yield gauge("roomcast_worker_clash", "Labelled.", {("x",): 1}, ("kind",))

    a, b = AsGauge(), AsLabelled()
    metrics.register(a)
    metrics.register(b)
    with caplog.at_level(logging.ERROR, "roomcast.metrics"):
        assert families()["roomcast_worker_clash"].labels == ()
    assert any("in another" in r.getMessage() for r in caplog.records)
    metrics.unregister(a)
    metrics.unregister(b)


def test_register_wants_a_source() -> None:
    with pytest.raises(TypeError, match="collect_metrics"):
        metrics.register(object())  # type: ignore[arg-type]


# Exposition ------------------------------------------------------------------------------------


def test_render_exposes_families_with_a_worker_label_as_a_supervisor_would() -> None:
    source = Source("render")
    source.jobs = 3
    source.durations.observe(0.5)
    metrics.register(source)
    snapshot = metrics.snapshot()
    merged = [f.with_label("worker", "0") for f in snapshot] + [
        f.with_label("worker", "1") for f in snapshot
    ]
    body, content_type = metrics.render(merged)
    assert content_type.startswith("text/plain")
    scrape = Scrape.parse(body.decode())
    assert scrape.value("roomcast_worker_render_jobs_total", worker="0") == 3
    assert scrape.value("roomcast_worker_render_jobs_total") == 6
    assert scrape.value("roomcast_worker_render_job_duration_seconds_bucket", le="1.0") == 2
    assert scrape.families["roomcast_worker_render_jobs"] == ("counter", "Jobs done.")
    metrics.unregister(source)


def test_install_is_idempotent_and_exports_into_any_registry() -> None:
    registry = CollectorRegistry()
    metrics.install(registry)
    metrics.install(registry)  # a second install must not raise nor double the series
    source = Source("install")
    source.jobs = 4
    metrics.register(source)
    body, _ = metrics.render(registry=registry)
    scrape = Scrape.parse(body.decode())
    assert scrape.value("roomcast_worker_install_jobs_total") == 4
    assert "process_cpu_seconds_total" not in scrape.names()  # only what this registry has
    metrics.unregister(source)


# The endpoint ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(**kwargs: Any) -> AsyncIterator[metrics.MetricsServer]:
    async with await metrics.serve(0, **kwargs) as server:
        yield server


async def raw_request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        writer.write_eof()  # the client has said all it will say
        await writer.drain()
        return await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_the_endpoint_serves_metrics_over_http() -> None:
    source = Source("http")
    metrics.register(source)
    async with serving() as server, httpx.AsyncClient(timeout=WAIT) as client:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        source.jobs = 5
        first = await client.get(server.url)
        source.jobs = 6
        second = await client.get(server.url + "?name[]=ignored")
        head = await client.head(server.url)
        openmetrics = await client.get(
            server.url, headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
        missing = await client.get(f"http://127.0.0.1:{server.port}/")
        post = await client.post(server.url, content=b"x")
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert Scrape.parse(first.text).value("roomcast_worker_http_jobs_total") == 5
    assert Scrape.parse(second.text).value("roomcast_worker_http_jobs_total") == 6
    assert "process_cpu_seconds_total" in Scrape.parse(second.text).names()  # the default registry
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 0
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")
    assert (missing.status_code, missing.text) == (404, "metrics are at /metrics\n")
    assert (post.status_code, post.headers["allow"]) == (405, "GET, HEAD")
    metrics.unregister(source)


async def test_the_endpoint_answers_bad_requests_and_serves_on() -> None:
    async with serving() as server:
        assert (await raw_request(server.port, b"NONSENSE\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        huge = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 10_000 + b"\r\n\r\n"
        assert (await raw_request(server.port, huge)).startswith(b"HTTP/1.1 431 ")
        assert await raw_request(server.port, b"GET /met") == b""  # gone mid-request: no answer
        ok = await raw_request(server.port, b"GET /metrics HTTP/1.0\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Connection: close" in ok


async def test_a_port_that_cannot_be_served_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError, match=f"cannot serve metrics on 127.0.0.1:{port}: "):
            await metrics.serve(port)
    for bad in (-1, 65536, True, "9100"):
        with pytest.raises(MetricsError, match="from 0 to 65535"):
            await metrics.serve(bad)  # type: ignore[arg-type]


# Without prometheus-client -------------------------------------------------------------------

WITHOUT_PROMETHEUS = """
import asyncio, json, sys
sys.modules["prometheus_client"] = None  # every import of it raises ImportError

import roomcast.metrics as metrics
import roomcast.gateway, roomcast.layers, roomcast.consumers
from roomcast.consumers import AsyncWebsocketConsumer
from roomcast.consumers.testing import WebsocketCommunicator
from roomcast.layers import InMemoryChannelLayer
from roomcast.layers.settings import channel_layers


class Echo(AsyncWebsocketConsumer):
    groups = ["room"]

    async def receive(self, text_data=None, bytes_data=None):
        await self.channel_layer.group_send("room", {"type": "echo", "text": text_data})

    async def echo(self, event):
        await self.send(text_data=event["text"])


async def main():
    channel_layers.set("default", InMemoryChannelLayer())
    client = WebsocketCommunicator(Echo.as_asgi(), "/ws/")
    assert (await client.connect())[0]
    await client.send_to(text_data="hi")
    assert await client.receive_from() == "hi"
    await client.disconnect()
    counted = {f.name: sum(f.samples.values()) for f in metrics.collect() if f.kind != "histogram"}
    errors = []
    for call in (metrics.require, lambda: metrics.render(), lambda: metrics.install()):
        try:
            call()
        except metrics.MetricsUnavailable as exc:
            errors.append(str(exc))
    try:
        await metrics.serve(0)
    except metrics.MetricsUnavailable as exc:
        errors.append(str(exc))
    print(json.dumps({"counted": counted, "errors": errors}))

asyncio.run(main())
"""


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_everything_runs_without_prometheus_client() -> None:
    result = run_python(WITHOUT_PROMETHEUS)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["counted"]["roomcast_consumer_websocket_accepted_total"] == 1
    assert out["counted"]["roomcast_layer_group_sent_total"] == 1
    assert out["counted"]["roomcast_consumer_messages_total"] == 4  # connect, receive, echo, bye
    assert out["errors"] == [metrics.INSTALL_HINT] * 4
    assert "pip install 'roomcast[metrics]'" in metrics.INSTALL_HINT


def test_the_worker_metrics_port_without_prometheus_client_is_one_clear_error() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from roomcast.consumers.worker import main\n"
        "main(sys.argv[1:], prog_name='roomcast worker')\n"
    )
    result = run_python(
        code, "--metrics-port", "9100", "examples.thumbnails.app:application", "thumbnails"
    )
    assert result.returncode == 1
    assert result.stderr == (
        "roomcast: error: Prometheus metrics need prometheus-client: "
        "pip install 'roomcast[metrics]'\n"
    )
