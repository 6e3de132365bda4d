# Freshwire: `make up` runs the stack and its demo, `make test` runs every test.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: install up up-bg down clean test test-unit lint bench

install:
	@bash connectors/install.sh

up: install
	@$(PY) -m connectors.stack up

up-bg: install
	@$(PY) -m connectors.stack up --detach

down:
	@$(PY) -m connectors.stack down

clean:
	@$(PY) -m connectors.stack clean

test: install
	@node --test clients/js/test/
	@$(PY) -m pytest -q

test-unit: install
	@node --test clients/js/test/
	@$(PY) -m pytest -q -m "not stack"

lint:
	@.venv/bin/ruff check cdc gateway connectors demo clients bench tests
	@.venv/bin/mypy cdc gateway connectors demo clients bench

# Benchmarks print tables and write bench/results/*.json (the stack is started as needed).
bench: install
	@$(PY) -m bench.latency
	@$(PY) -m bench.consistency
