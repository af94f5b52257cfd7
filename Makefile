# The only set-up a newcomer needs: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run demo test typecheck clean redis-server test-tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The chat example on the in-memory layer: http://127.0.0.1:8000
run: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/roomcast serve examples.chat.asgi:application

# Channels meeting in a group, without a server.
demo: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m examples.demo

# Installs what the tests need, then runs lint, types and the whole suite.
test: $(BIN)/python redis-server test-tools
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/ruff check roomcast gateway layers consumers tests examples benchmarks
	$(BIN)/ruff format --check roomcast gateway layers consumers tests examples benchmarks
	$(MAKE) --no-print-directory typecheck
	$(BIN)/python -m pytest -q

# mypy checks the package as it is installed (roomcast.gateway, ...): the folders are linked
# into build/typecheck/roomcast/ first, because mypy knows nothing of setuptools' package-dir.
typecheck: $(BIN)/python
	@rm -rf build/typecheck && mkdir -p build/typecheck/roomcast
	@for f in roomcast/*; do [ "$${f##*/}" = __pycache__ ] || ln -s "$(CURDIR)/$$f" build/typecheck/roomcast/; done
	@for d in gateway layers consumers; do ln -s "$(CURDIR)/$$d" build/typecheck/roomcast/$$d; done
	$(BIN)/mypy

# The tests start their own redis-server processes; install the binary if it is missing.
redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "redis-server not found: installing it with apt-get"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server; }

# The deployment tests (tests/e2e/test_deploy.py, test_browser.py) run nginx (the load
# balancer), Debian's chromium (driven by Playwright, whose own browser download is never used)
# and docker-compose (validates docker-compose.yml; no Docker engine is needed), promtool
# (Debian's prometheus package: checks deploy/prometheus.yml; its service is never started);
# the HTTP/2 tests run h2load (nghttp2-client) and curl. Install the
# missing ones; under CI the tests fail rather than skip without them.
test-tools:
	@missing=; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v chromium >/dev/null || missing="$$missing chromium fonts-liberation"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v h2load >/dev/null || missing="$$missing nghttp2-client"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "not found:$$missing: installing with apt-get"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing; \
	fi

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis tests/artifacts
