# FinSecure Nexus — the two commands a new machine needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed

.PHONY: help run test lint typecheck services bench fuzz clean

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

run: $(RUNTIME_STAMP) ## Install, migrate, create the first admin and serve on http://127.0.0.1:8000
	FINSECURE_ENV=$${FINSECURE_ENV:-development} $(BIN)/finsecure serve

services: $(DEV_STAMP) ## Make sure the services the tests need answer (installs/starts them if not)
	@bash scripts/services.sh

lint: $(DEV_STAMP) ## ruff (lint and format check)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(DEV_STAMP) ## mypy --strict over src
	$(BIN)/mypy src

test: $(DEV_STAMP) services lint typecheck ## Everything: lint, types, and the whole suite on SQLite and PostgreSQL
	FINSECURE_REQUIRE_SERVICES=1 $(BIN)/pytest src tests

bench: $(DEV_STAMP) ## Benchmarks on the shared datasets: prints tables, writes bench/results/*.json
	$(BIN)/python bench/simulator.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/features.py
	$(BIN)/python bench/pipeline.py

fuzz: $(DEV_STAMP) services ## A longer schemathesis run over every API operation and role
	FINSECURE_FUZZ_EXAMPLES=$${FINSECURE_FUZZ_EXAMPLES:-200} FINSECURE_REQUIRE_SERVICES=1 $(BIN)/pytest tests/security/test_fuzz_api.py

clean: ## Remove the virtualenv, caches and local data
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
