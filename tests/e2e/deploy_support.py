"""The deployment's files, read by the tests, and its topology run without Docker.

The tests take their settings from the files users deploy with, not from copies: the gateway's
command line and health check from the ``Dockerfile``, its environment from
``docker-compose.yml``, and the load balancer from ``deploy/nginx.conf``, of which only the two
lines marked ``roomcast:`` are rewritten (upstream servers, listen address) to point at
gateways on this machine's free ports. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from tests.gateway.apps import GatewayProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
PROMETHEUS_CONF = ROOT / "deploy" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "roomcast.json"
ARTIFACTS = ROOT / "tests" / "artifacts"

UPSTREAM_MARK = "# roomcast:upstream"
LISTEN_MARK = "# roomcast:listen"
IN_CI = bool(os.environ.get("CI"))


def require(tool: str, path: str | None, why: str) -> str:
    """``path`` if the tool is there; else skip, or fail under CI (``make test`` installs it)."""
    if path:
        return path
    message = f"{tool} is not installed ({why}); `make test` installs it"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def find_tool(name: str, *fallbacks: str) -> str | None:
    """``name`` on the PATH, or the first of ``fallbacks`` that exists (/usr/sbin for nginx)."""
    found = shutil.which(name)
    if found:
        return found
    return next((path for path in fallbacks if os.access(path, os.X_OK)), None)


# The Dockerfile ----------------------------------------------------------------------------


def dockerfile_instructions(text: str | None = None) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments dropped."""
    if text is None:
        text = DOCKERFILE.read_text()
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The instructions of the last ``FROM`` on: what the image that runs is made of."""
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) argument list; the tests require exec form (signals reach PID 1)."""
    value = json.loads(arguments)
    assert isinstance(value, list), arguments
    assert all(isinstance(item, str) for item in value), arguments
    return value


def image_command() -> list[str]:
    """The image's ``CMD``."""
    instructions = final_stage(dockerfile_instructions())
    (command,) = [args for keyword, args in instructions if keyword == "CMD"]
    return exec_form(command)


def image_healthcheck() -> tuple[dict[str, str], list[str]]:
    """The image's ``HEALTHCHECK``: its ``--options`` and its ``CMD`` (without ``CMD``)."""
    (check,) = [
        args for keyword, args in final_stage(dockerfile_instructions()) if keyword == "HEALTHCHECK"
    ]
    options: dict[str, str] = {}
    while check.startswith("--"):
        option, _, check = check.partition(" ")
        name, _, value = option[2:].partition("=")
        options[name] = value
        check = check.strip()
    keyword, _, command = check.partition(" ")
    assert keyword == "CMD", check
    return options, exec_form(command)


def dockerignored(path: str, patterns: Sequence[str] | None = None) -> bool:
    """Whether the build context leaves out ``path`` (relative, with ``/``), per .dockerignore.

    Docker's rules, simplified: the last matching pattern wins, ``!`` re-includes, and a
    pattern matching a folder matches everything in it.
    """
    if patterns is None:
        patterns = [
            line.strip()
            for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        body = body.rstrip("/")
        if any(fnmatch.fnmatchcase(candidate, body) for candidate in candidates):
            excluded = not negated
    return excluded


# docker-compose.yml ---------------------------------------------------------------------------


def compose_file() -> dict[str, Any]:
    """``docker-compose.yml`` as written (``docker-compose config`` normalises it further)."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def gateway_environment(redis_url: str) -> dict[str, str]:
    """The gateway service's environment, its Redis address swapped for ``redis_url``'s.

    The rest of the layer URL (database, query options) is kept as compose has it.
    """
    environment = {
        str(name): str(value)
        for name, value in compose_file()["services"]["gateway"]["environment"].items()
    }
    composed = urlsplit(environment["ROOMCAST_LAYER_URL"])
    local = urlsplit(redis_url)
    environment["ROOMCAST_LAYER_URL"] = urlunsplit(composed._replace(netloc=local.netloc))
    return environment


def gateway_arguments(port: int, metrics_port: int | None = None) -> list[str]:
    """The image's ``roomcast serve ...`` arguments, on 127.0.0.1:``port``, not 0.0.0.0:8000,
    with its metrics on 127.0.0.1:``metrics_port`` (a free port by default), not 0.0.0.0:9100."""
    command = image_command()
    assert command[:2] == ["roomcast", "serve"], command
    arguments = command[2:]
    metrics = str(metrics_port if metrics_port is not None else free_port())
    replaced = (("-b", "127.0.0.1"), ("-p", str(port)))
    replaced += (("--metrics-port", metrics), ("--metrics-host", "127.0.0.1"))
    for flag, value in replaced:
        arguments[arguments.index(flag) + 1] = value
    return arguments


@contextlib.contextmanager
def gateways(count: int, redis_url: str) -> Iterator[list[tuple[GatewayProcess, int]]]:
    """``count`` gateway processes as compose runs them: (process, port) each, listening."""
    environment = gateway_environment(redis_url)
    with contextlib.ExitStack() as stack:
        started = []
        for _ in range(count):
            port = free_port()
            process = stack.enter_context(GatewayProcess(*gateway_arguments(port), env=environment))
            started.append((process, port))
        for process, _ in started:
            process.wait_listening()
        yield started


# nginx --------------------------------------------------------------------------------------


def render_nginx_conf(template: str, upstream_ports: Sequence[int], listen_port: int) -> str:
    """``deploy/nginx.conf`` for local gateways: one ``server`` line per upstream port.

    The marked upstream line keeps its parameters (``max_fails``...) but ``resolve``, which
    needs a name to look up; the marked listen line binds 127.0.0.1 only.
    """
    lines = template.splitlines()
    upstream = [i for i, line in enumerate(lines) if line.rstrip().endswith(UPSTREAM_MARK)]
    listen = [i for i, line in enumerate(lines) if line.rstrip().endswith(LISTEN_MARK)]
    assert len(upstream) == 1, f"expected one line marked {UPSTREAM_MARK!r}"
    assert len(listen) == 1, f"expected one line marked {LISTEN_MARK!r}"
    rendered: list[str] = []
    for i, line in enumerate(lines):
        indent = line[: len(line) - len(line.lstrip())]
        words = line.split("#", 1)[0].strip().rstrip(";").split()
        if i == upstream[0]:
            assert words[0] == "server", line
            parameters = [word for word in words[2:] if word != "resolve"]
            rendered += [
                f"{indent}server {' '.join([f'127.0.0.1:{port}', *parameters])};"
                for port in upstream_ports
            ]
        elif i == listen[0]:
            assert words[0] == "listen", line
            rendered.append(f"{indent}listen 127.0.0.1:{listen_port};")
        else:
            rendered.append(line)
    return "\n".join(rendered) + "\n"


def nginx_conf_directive(name: str, text: str | None = None) -> list[list[str]]:
    """The arguments of every ``name`` directive in ``deploy/nginx.conf`` (comments dropped)."""
    if text is None:
        text = NGINX_CONF.read_text()
    found = []
    for line in text.splitlines():
        words = shlex.split(line.split("#", 1)[0].replace(";", " ; "))
        if words and words[0] == name and "{" not in words:  # directives, not blocks
            found.append(words[1 : words.index(";")] if ";" in words else words[1:])
    return found


class NginxProcess:
    """Debian's nginx running ``deploy/nginx.conf`` rendered for local gateways, in the foreground.

    Its prefix, pid file and logs live in a temporary folder; at exit it is stopped gracefully
    (SIGQUIT), or killed.
    """

    def __init__(self, binary: str, upstream_ports: Sequence[int]) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="roomcast-nginx-"))
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(render_nginx_conf(NGINX_CONF.read_text(), upstream_ports, self.port))
        self.error_log = self.dir / "error.log"
        self.output = self.dir / "output.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        return [
            self.binary,
            *("-p", f"{self.dir}/", "-c", str(self.conf), "-e", str(self.error_log)),
            *("-g", f"daemon off; pid {self.dir / 'nginx.pid'};"),
            *extra,
        ]

    def check(self) -> str:
        """``nginx -t`` on the rendered configuration; its output (asserted successful)."""
        result = subprocess.run(
            self.command("-t"), capture_output=True, text=True, timeout=30, check=False
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"nginx -t failed:\n{output}\n{self.conf.read_text()}"
        return output

    def start(self, timeout: float = 10.0) -> NginxProcess:
        self.check()
        with self.output.open("wb") as output:
            self.proc = subprocess.Popen(
                self.command(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited ({self.proc.returncode}):\n{self.logs}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            time.sleep(0.05)
        raise AssertionError(f"nginx did not listen on {self.port} in {timeout}s:\n{self.logs}")

    @property
    def logs(self) -> str:
        texts = [path.read_text(errors="replace") for path in (self.error_log, self.output)]
        return "\n".join(text for text in texts if text)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def cleanup(self) -> None:
        """Stop nginx and remove its folder."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NginxProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
