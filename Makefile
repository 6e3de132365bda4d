# Freshwire: `make up` runs the stack and its demo, `make test` runs every test.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: install up up-bg down clean nextjs test test-unit lint bench soak

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

# The Next.js example (examples/nextjs) against a running stack (`make up`), on FRESHWIRE_NEXTJS_PORT (18091).
nextjs: install
	@$(PY) -m connectors.nextjs

test: install
	@node --test clients/js/test/ clients/next/test/
	@$(PY) -m pytest -q

test-unit: install
	@node --test clients/js/test/ clients/next/test/
	@$(PY) -m pytest -q -m "not stack"

# tests/ has no packages and each test directory imports its helpers by bare name (as pytest does), so
# mypy checks it one directory at a time, with that directory (and what it imports) on MYPYPATH.
lint:
	@.venv/bin/ruff check contract cdc gateway connectors demo clients bench tests
	@.venv/bin/mypy contract cdc gateway connectors demo clients bench
	@MYPYPATH=tests/unit .venv/bin/mypy --explicit-package-bases tests/unit
	@MYPYPATH=tests/gateway .venv/bin/mypy --explicit-package-bases tests/gateway
	@MYPYPATH=tests/security:tests/gateway .venv/bin/mypy --explicit-package-bases tests/security
	@.venv/bin/mypy --explicit-package-bases tests/conftest.py tests/test_compose.py tests/e2e
	@cd examples/nextjs && node node_modules/typescript/bin/tsc --noEmit -p .

# Benchmarks print tables and write bench/results/<name>.json and .png (each starts the stack it
# needs and stops what it started). `make bench` runs them all one after the other (~40 minutes,
# 10 of them the sustained-throughput hold); never run two at once: they share the two cores.
bench: bench-latency bench-throughput bench-fanout bench-dbload bench-consistency bench-bigtx bench-redis \
       bench-durability bench-slow-reader

# The 60-minute soak (bench/soak.py): churn of connections and awaits, writes at 200 tx/s, Redis and the
# consumer SIGKILLed part-way; RSS, fds, tasks and Redis keys sampled every 10 s (bench/results/soak.*).
soak: install
	@$(PY) -m bench.soak

# make bench-<name> runs one of them (a pattern rule: the names are not .PHONY, which would skip it).
BENCH_latency := bench.latency
BENCH_throughput := bench.throughput --profile
BENCH_fanout := bench.fanout
BENCH_dbload := bench.dbload_sweep
BENCH_consistency := bench.consistency
BENCH_bigtx := bench.bigtx
BENCH_redis := bench.redis_release
# A Redis Cluster master SIGKILLed under releases, without and with WAIT (~75 s, a cluster of its own).
BENCH_durability := bench.redis_durability
# One client reading slower than its key changes, each write path with and without the unread budget (~2 min).
BENCH_slow-reader := bench.slow_reader

bench-%: install
	@$(if $(BENCH_$*),$(PY) -m $(BENCH_$*),echo "no benchmark bench-$*; see docs/benchmarks.md" >&2; exit 2)
