# syntax=docker/dockerfile:1
# The gateway serving the chat example: docker-compose.yml runs three of these behind nginx.
#   docker build -t roomcast .
#   docker run -p 8000:8000 roomcast                                    # in-memory layer
#   docker run -p 8000:8000 -e ROOMCAST_LAYER_URL=redis://HOST:6379/0 roomcast
# Any gateway flag can also be set as ROOMCAST_<FLAG> (ROOMCAST_GRACEFUL_TIMEOUT=20); another app
# is served by naming it: docker run roomcast roomcast serve myproject.asgi:application -b 0.0.0.0

# Wheels of roomcast and everything it needs with the "fast" extra (uvloop, hiredis,
# setproctitle) and the "metrics" extra (prometheus-client, for --metrics-port).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY roomcast/ roomcast/
COPY gateway/ gateway/
COPY layers/ layers/
COPY consumers/ consumers/
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels ".[fast,metrics]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Exactly the build stage's wheels, offline; they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index /wheels/*.whl
RUN groupadd --system --gid 10001 roomcast \
    && useradd --system --uid 10001 --gid roomcast --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin roomcast
WORKDIR /app
# The example is not part of the package: it is imported from the working directory, read-only
# for the user the gateway runs as.
COPY examples/ examples/
USER 10001:10001
# 8000: the app; 9100: Prometheus metrics (/metrics), never on the app's port.
EXPOSE 8000 9100
# The gateway's own readiness probe, answered before the app: 503 during start-up, while
# draining after SIGTERM, and while the channel layer cannot reach Redis (the layer reports it
# to roomcast.readiness), with no message sent through Redis per check. The example's own
# /healthz (one message through the layer) stays for a deeper look by hand.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
# SIGTERM (docker stop) drains: /readyz says 503, WebSockets close with 1001, then exit 0.
# SIGHUP reopens log files (with --access-log/--log-file); logs go to stdout/stderr here.
STOPSIGNAL SIGTERM
CMD ["roomcast", "serve", "examples.chat.asgi:application", "-b", "0.0.0.0", "-p", "8000", "--proxy-headers", "--forwarded-allow-ips", "*", "--health-path", "/livez", "--ready-path", "/readyz", "--metrics-port", "9100", "--metrics-host", "0.0.0.0", "--log-format", "json"]
