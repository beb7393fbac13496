# FinSecure Nexus — the two commands a new machine needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed

.PHONY: help run test lint typecheck services bench fuzz soak clean frontend frontend-test

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
	  || { echo "FinSecure needs Python 3.11 (found: $$($(PYTHON) --version 2>&1)). Install python3.11." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,train]'
	@touch $@ $(RUNTIME_STAMP)

run: $(RUNTIME_STAMP) ## Install, build the dashboard, migrate, create the first admin and serve on http://127.0.0.1:8000
	bash scripts/frontend.sh build
	FINSECURE_ENV=$${FINSECURE_ENV:-development} $(BIN)/finsecure serve

frontend: ## Build the dashboard into frontend/dist (npm ci + vite build, skipped when up to date)
	bash scripts/frontend.sh build

services: $(DEV_STAMP) ## Make sure the services the tests need answer (installs/starts them if not)
	@bash scripts/services.sh

lint: $(DEV_STAMP) ## ruff (lint and format check)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(DEV_STAMP) ## mypy --strict over src
	$(BIN)/mypy src

test: $(DEV_STAMP) services lint typecheck frontend-test ## Everything: lint, types, the whole suite on SQLite and PostgreSQL, the dashboard
	FINSECURE_REQUIRE_SERVICES=1 $(BIN)/pytest src tests

frontend-test: $(DEV_STAMP) ## Dashboard: Vitest unit tests, then the e2e run in Chromium (installed if absent)
	bash scripts/frontend.sh test

bench: $(DEV_STAMP) ## Benchmarks on the shared datasets: prints tables, writes bench/results/*.json
	$(BIN)/python bench/simulator.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/features.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/deep.py
	$(BIN)/python bench/scoring.py
	$(BIN)/python bench/rules.py
	$(BIN)/python bench/scaleout.py
	$(BIN)/python bench/graph.py

fuzz: $(DEV_STAMP) services ## 10,000 schemathesis cases (FINSECURE_FUZZ_CASES) over every operation, role and database
	FINSECURE_FUZZ_CASES=$${FINSECURE_FUZZ_CASES:-11000} FINSECURE_FUZZ_REPORT=bench/results/fuzz.json \
		FINSECURE_REQUIRE_SERVICES=1 $(BIN)/pytest tests/security/test_fuzz_api.py -p no:cacheprovider

soak: $(DEV_STAMP) ## Platform + API for 10 min (SOAK_DURATION=s) under dashboard load, then the pipeline's memory replay
	$(BIN)/python bench/soak.py --duration $${SOAK_DURATION:-600}
	$(BIN)/python bench/pipeline.py --memory-replay $${SOAK_DURATION:-600}

clean: ## Remove the virtualenv, caches and local data
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
