#!/usr/bin/env bash
# Installs what the server benchmarks need (see benchmarks/README.md), into the Python that
# will run them: PYTHON=.venv/bin/python bash benchmarks/setup.sh (default: python3).
# wrk and h2load (nghttp2-client) from Debian's packages (needs root or sudo); the servers
# compared, the fast extras and the WebSocket client library from PyPI, pinned to the versions
# the README's tables used; roomcast itself (editable) for the gateway's own dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

APT_PACKAGES=()
command -v wrk >/dev/null || APT_PACKAGES+=(wrk)
command -v h2load >/dev/null || APT_PACKAGES+=(nghttp2-client)   # h2load, for h2_servers.py
if [ ${#APT_PACKAGES[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${APT_PACKAGES[@]}"
fi
for tool in taskset prlimit; do   # util-linux: on every Debian machine
  command -v "$tool" >/dev/null || echo "warning: $tool not found; runs will not be pinned" >&2
done

"$PYTHON" -m pip install --quiet -e .
"$PYTHON" -m pip install --quiet \
  uvicorn==0.54.0 \
  daphne==4.2.3 \
  hypercorn==0.18.0 \
  websockets==17.4 \
  httptools==0.9.0 \
  uvloop==0.23.0
"$PYTHON" -c "import uvicorn, daphne, hypercorn, h2, websockets, httptools, uvloop, h11, wsproto"
echo "benchmarks ready: $PYTHON -m benchmarks.http_servers --help"
