# reelfeed: the two commands a newcomer needs are `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := redis-server prometheus prometheus-alertmanager wrk
PYTEST_ARGS ?=

.PHONY: setup up down test check lint typecheck lock clean .apt-checked

## setup: venv + pinned Python packages, Debian packages, Kafka jars (idempotent)
setup: $(VENV)/.installed .apt-checked
	@$(BIN)/reelfeed infra jars >/dev/null

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

.apt-checked: # a phony check, cheap when all is there
	@missing=""; for cmd in redis-server promtool prometheus wrk; do \
	  command -v $$cmd >/dev/null || missing="$$missing $$cmd"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages (missing:$$missing)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

## up: Kafka, Redis and the workers of the local stack, in the background
up: setup
	$(BIN)/reelfeed up

## down: stop everything `make up` started
down:
	@if [ -x $(BIN)/reelfeed ]; then $(BIN)/reelfeed down; else echo "nothing to stop"; fi

## test: the whole test suite against a real Kafka and Redis on test ports
test: setup
	$(BIN)/python -m pytest --cov --cov-report=term --cov-report=xml $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

## check: lint, format, types, then the tests
check: lint typecheck test

## lock: re-pin constraints.txt from a clean resolve of pyproject.toml
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q '.[dev]'
	( echo '# Exact versions that `make setup` and CI install (pip install -c constraints.txt).'; \
	  echo '# Regenerate with `make lock` after changing dependencies in pyproject.toml.'; \
	  .lock-venv/bin/pip freeze --exclude reelfeed ) > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache coverage.xml .coverage
