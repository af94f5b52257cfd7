"""benchmarks/h2_servers.py: h2load's output read right, failing runs reported as failing."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import h2_servers
from benchmarks.http_servers import ROOT, Results

# h2load 1.52 against hypercorn 0.18 (h2c): every request answered.
OK = """\
starting benchmark...
spawning thread #0: 10 total client(s). 20000 total requests
Application protocol: h2c
progress: 10% done

finished in 7.14s, 2801.91 req/s, 123.49KB/s
requests: 20000 total, 20000 started, 20000 done, 20000 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 20000 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 881.49KB (902650) total, 99.66KB (102050) headers (space savings 94.85%), 253.91KB
                     min         max         mean         sd        +/- sd
time for request:     9.93ms    122.90ms     35.61ms      8.44ms    97.32%
time for connect:       96us       391us       214us        87us    80.00%
time to 1st byte:    33.03ms     37.58ms     36.66ms      1.70ms    80.00%
req/s           :     280.20      280.27      280.23        0.02    70.00%
"""

# The same against a server that speaks only HTTP/1.1 (the preface is not a request).
NO_H2C = """\
starting benchmark...
spawning thread #0: 10 total client(s). 2000 total requests
Application protocol: h2c

finished in 3.17ms, 0.00 req/s, 468.70KB/s
requests: 2000 total, 100 started, 0 done, 0 succeeded, 2000 failed, 2000 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 1.48KB (1520) total, 0B (0) headers (space savings 0.00%), 0B (0) data
                     min         max         mean         sd        +/- sd
time for request:        0us         0us         0us         0us     0.00%
"""

# Over TLS, offering only h2, to a server whose ALPN has no h2.
NO_ALPN = """\
TLS Protocol: TLSv1.3
No protocol negotiated. Fallback behaviour may be activated
No supported protocol was negotiated. Supported protocols were:
h2

finished in 6.57ms, 0.00 req/s, 0B/s
requests: 200 total, 0 started, 0 done, 0 succeeded, 200 failed, 200 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
                     min         max         mean         sd        +/- sd
time for request:        0us         0us         0us         0us     0.00%
"""


def test_a_clean_run_is_read_with_its_units() -> None:
    reading = h2_servers.parse_h2load(OK)
    assert reading["rps"] == pytest.approx(2801.91)
    assert reading["seconds"] == pytest.approx(7.14)
    assert reading["mean_ms"] == pytest.approx(35.61)
    assert reading["max_ms"] == pytest.approx(122.90)
    assert (reading["requests"], reading["succeeded"], reading["failed"]) == (20000, 20000, 0)
    assert reading["protocol"] == "h2c"
    assert reading["non2xx"] == 0
    assert h2_servers.problems(reading) == []


def test_a_server_without_h2_is_a_failing_run() -> None:
    reading = h2_servers.parse_h2load(NO_H2C)
    assert reading["succeeded"] == 0
    assert h2_servers.problems(reading) == ["2,000 failed", "2,000 errored"]


def test_no_alpn_h2_is_named() -> None:
    reading = h2_servers.parse_h2load(NO_ALPN)
    assert reading["protocol"] is None
    assert h2_servers.problems(reading)[0] == "no protocol negotiated"


def test_http1_or_a_bad_exit_does_not_count() -> None:
    reading = {**h2_servers.parse_h2load(OK), "protocol": "http/1.1", "exit_code": 1}
    assert h2_servers.problems(reading) == ["h2load exit 1", "spoke http/1.1, not h2"]


def test_unexpected_output_raises() -> None:
    with pytest.raises(ValueError, match="unexpected h2load output"):
        h2_servers.parse_h2load("could not connect to address 127.0.0.1\n")


def _args(tls: bool) -> argparse.Namespace:
    return argparse.Namespace(tls=tls, clients=10, streams=10, inactivity_timeout=10)


def test_h2load_command_lines() -> None:
    plain = h2_servers.h2load_argv(_args(False), 8000, 100000)
    load = ["h2load", "-n", "100000", "-c", "10", "-m", "10", "-t", "1", "-N", "10"]
    assert plain[-12:] == [*load, "http://127.0.0.1:8000/"]
    tls = h2_servers.h2load_argv(_args(True), 8000, 100)
    assert tls[-2:] == ["--npn-list=h2", "https://127.0.0.1:8000/"]


def test_server_arguments(tmp_path: Path) -> None:
    plain = h2_servers.Setup(tmp_path / "hypercorn.toml")
    tls = h2_servers.Setup(tmp_path / "hypercorn.toml", tmp_path / "c.pem", tmp_path / "k.pem")
    hypercorn = h2_servers.H2_SERVERS["hypercorn"]
    gateway = h2_servers.H2_SERVERS["gateway"]
    assert h2_servers.server_extra(hypercorn, plain, []) == (
        "--config",
        str(plain.hypercorn_config),
    )
    assert h2_servers.server_extra(hypercorn, tls, [])[-4:] == (
        *("--certfile", str(tmp_path / "c.pem"), "--keyfile", str(tmp_path / "k.pem")),
    )
    assert h2_servers.server_extra(gateway, plain, ["--x"]) == ("--x",)
    assert h2_servers.server_extra(gateway, tls, []) == (
        *("--ssl-certfile", str(tmp_path / "c.pem"), "--ssl-keyfile", str(tmp_path / "k.pem")),
    )


def test_the_table_shows_a_failing_server(capsys: pytest.CaptureFixture[str]) -> None:
    args = {"tls": False, "rounds": 2, "requests": 2000, "clients": 10, "streams": 10}
    results = Results("h2_servers", args)

    def reading(output: str) -> dict[str, Any]:
        parsed = h2_servers.parse_h2load(output)
        parsed["problems"] = h2_servers.problems(parsed)
        parsed["clean"] = not parsed["problems"]
        parsed.update(server_cpu=1.0, client_cpu=0.1, cpu0_other=0.0, cpu1_other=0.0)
        parsed["server_cpu_ms_per_1k"] = 300.0 if parsed["clean"] else None
        return parsed

    results.rounds["hypercorn"] = [reading(OK), reading(OK)]
    results.rounds["gateway"] = [reading(NO_H2C), reading(NO_H2C)]
    specs = [h2_servers.H2_SERVERS["gateway"], h2_servers.H2_SERVERS["hypercorn"]]
    h2_servers.report_h2(results, specs, markdown=True)
    out = capsys.readouterr().out
    gateway_row = next(line for line in out.splitlines() if line.startswith("| gateway "))
    assert gateway_row.startswith("| gateway | - | - | - |")
    assert "2/2 rounds: 2,000 failed, 2,000 errored (of 2,000)" in gateway_row
    assert "| hypercorn (asyncio) | 2,802 | 2,802-2,802 | 1.00 | 35.61 | 300.0 |" in out


def test_missing_h2load_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as exited:
        h2_servers.main(["--servers", "hypercorn"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == "h2load not found: apt-get install nghttp2-client"


def test_a_short_run_against_the_gateway(tmp_path: Path) -> None:
    assert shutil.which("h2load"), "h2load not found: apt-get install nghttp2-client"
    out = tmp_path / "h2.json"
    subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.h2_servers", "--servers", "gateway"),
            *("--requests", "500", "--warmup", "0", "--rounds", "1", "--quiet-wait", "0"),
            *("--json", str(out), "--markdown"),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=90,
    )
    document = json.loads(out.read_text())
    [reading] = document["servers"]["gateway"]["rounds"]
    assert reading["clean"], reading["problems"]
    assert reading["succeeded"] == 500
    assert reading["protocol"] == "h2c"
    assert document["machine"]["h2load"].startswith("h2load")
