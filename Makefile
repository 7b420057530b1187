# wxlogin: `make demo` runs everything in one process; `make test` is what CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install test lint typecheck unit integration e2e demo bench bench-quick bench-deps rabbitmq chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

rabbitmq:
	@bash scripts/ensure-rabbitmq.sh

chromium:
	@bash scripts/ensure-chromium.sh

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

test: install rabbitmq chromium
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider

unit: install
	$(BIN)/pytest -q tests/unit

integration: install rabbitmq
	$(BIN)/pytest -q tests/integration

e2e: install chromium
	$(BIN)/pytest -q tests/e2e

demo: install
	$(BIN)/python -m services run all

# Benchmarks (not part of `make test`): every service its own process; see docs/benchmarks.md.
bench-deps: install
	@test -x $(BIN)/py-spy || $(BIN)/python -m pip install -q -e '.[dev,bench]'

bench: bench-deps rabbitmq
	$(BIN)/python -m bench

bench-quick: bench-deps rabbitmq
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
