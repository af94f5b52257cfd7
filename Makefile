# The only set-up a newcomer needs: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The demo: channels meeting in a group on the in-memory layer.
run: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m examples.demo

# Installs what the tests need, then runs lint, types and the whole suite.
test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/ruff check gateway layers consumers tests examples
	$(BIN)/ruff format --check gateway layers consumers tests examples
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
