# The only set-up a newcomer needs: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run demo test clean redis-server

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The chat example on the in-memory layer: http://127.0.0.1:8000
run: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/gateway examples.chat.asgi:application

# Channels meeting in a group, without a server.
demo: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m examples.demo

# Installs what the tests need, then runs lint, types and the whole suite.
test: $(BIN)/python redis-server
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/ruff check gateway layers consumers tests examples
	$(BIN)/ruff format --check gateway layers consumers tests examples
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# The tests start their own redis-server processes; install the binary if it is missing.
redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "redis-server not found: installing it with apt-get"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server; }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
