# Every target sets itself up from nothing: a fresh clone needs only python3 (>= 3.11) and
# a C compiler for the Cython core; the integration tests also need redis-server and either
# Java 17+ with Maven (Apache Kafka runs as a JVM, its jars resolved once into ~/.cache),
# a Docker engine, or STREAMQ_KAFKA_BOOTSTRAP pointing at a cluster.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: demo test test-unit test-integration lint format clean bench bytecode

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=77" wheel

# The base install (what a user gets) is enough for the demo.
$(VENV)/.base: pyproject.toml setup.py ext/_dispatch.pyx | $(BIN)/python
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml setup.py ext/_dispatch.pyx | $(BIN)/python
	$(PIP) install -q -e ".[dev]"
	touch $@ $(VENV)/.base

demo: $(VENV)/.base
	$(BIN)/python -m examples.demo

lint: $(VENV)/.dev
	$(BIN)/ruff format --check streamq tests examples benchmarks scripts setup.py
	$(BIN)/ruff check streamq tests examples benchmarks scripts setup.py
	$(BIN)/mypy streamq

format: $(VENV)/.dev
	$(BIN)/ruff format streamq tests examples benchmarks scripts setup.py
	$(BIN)/ruff check --fix streamq tests examples benchmarks scripts setup.py

# The tests start over a thousand Python processes (workers, CLI calls). Where
# PYTHONDONTWRITEBYTECODE is set (CI's machines set it) none of them caches what it compiles,
# so each compiled every streamq module it imported again (0.85 vs 0.6 CPU-s of imports).
# Compiled once here instead; Python still reads the cache the variable keeps it from writing.
bytecode: $(VENV)/.dev
	$(BIN)/python -m compileall -q -j 0 streamq tests examples benchmarks

# Unit tests run once per dispatch core (compiled, then the pure-Python twin), two test
# processes each (117 s -> 68 s on two cores); integration tests talk to private
# redis-servers and Apache Kafka nodes started by the fixtures.
test-unit: $(VENV)/.dev bytecode
	$(BIN)/pytest -n 2 tests/unit
	STREAMQ_NO_EXTENSIONS=1 $(BIN)/pytest -n 2 tests/unit

# Two test processes (pytest-xdist) per pass: the tests mostly wait on brokers, handlers and
# timeouts (the CPUs sit about 40% idle), each process has its own shared Kafka node. The
# Kafka tests run a second time on the KIP-848 group protocol (broker-side assignment), in
# the background beside the first pass (its output follows the first pass's); those whose
# outcome no group protocol changes (share groups: ``any_protocol``) run in that pass only.
# The background pass ends minutes before the first, so the pure-Python twin of the dispatch
# core follows it there: the Redis fault cases that lean on the core most (a crash at every
# step, kills mid-batch, the failure policy), a subset, for CI's time budget.
PYTEST_BROKERS := $(BIN)/pytest -n 2 --dist worksteal --durations=15
TWIN_FAULTS := tests/fault/test_failpoint_crashes_lose_nothing.py \
	tests/fault/test_kill_mid_batch_redelivers.py tests/fault/test_done_when_failure_policy.py
BACKGROUND_LOG := .pytest-background.log
test-integration: $(VENV)/.dev bytecode
	@( STREAMQ_GROUP_PROTOCOL=consumer $(PYTEST_BROKERS) -p no:cacheprovider -m kafka \
		tests/integration tests/fault; kip=$$?; \
	  echo "== the pure-Python twin (STREAMQ_NO_EXTENSIONS=1 -m 'not kafka' TWIN_FAULTS) =="; \
	  STREAMQ_NO_EXTENSIONS=1 $(PYTEST_BROKERS) -p no:cacheprovider -m "not kafka" \
		$(TWIN_FAULTS); twin=$$?; \
	  test $$kip -eq 0 && test $$twin -eq 0 ) > $(BACKGROUND_LOG) 2>&1 & bg=$$!; \
	trap 'pkill -P $$bg 2>/dev/null; kill $$bg 2>/dev/null' INT TERM; \
	echo "KIP-848 pass, then the twin's fault subset, running in the background (pid $$bg)"; \
	$(PYTEST_BROKERS) -m "not (kafka and any_protocol)" tests/integration tests/fault; first=$$?; \
	wait $$bg; second=$$?; \
	echo "== the KIP-848 pass (STREAMQ_GROUP_PROTOCOL=consumer -m kafka) =="; \
	cat $(BACKGROUND_LOG); rm -f $(BACKGROUND_LOG); \
	test $$first -eq 0 && test $$second -eq 0

test: lint test-unit test-integration

# The standard benchmark set (benchmarks/README.md): raw client loop and streamq in the same
# run, the dispatch micro-benchmark, and the peer frameworks where they install.
$(VENV)/.bench: pyproject.toml setup.py ext/_dispatch.pyx | $(BIN)/python
	$(PIP) install -q -e ".[dev,bench]"
	touch $@ $(VENV)/.dev $(VENV)/.base

# One pip run per peer: resolved together, pip backtracked for over ten minutes here. A peer
# that does not install is reported by the benchmark as not run, with the reason.
PEERS_PIP := timeout 600 .venv-peers/bin/python -m pip install -q
.venv-peers/bin/python:
	$(PYTHON) -m venv .venv-peers
	-$(PEERS_PIP) orjson quixstreams
	-$(PEERS_PIP) sentry-arroyo
	-$(PEERS_PIP) "faststream[confluent]>=0.5"
	-$(PEERS_PIP) faust-streaming

bench: $(VENV)/.bench .venv-peers/bin/python
	$(BIN)/python benchmarks/run.py --peers-python .venv-peers/bin/python

clean:
	rm -rf build dist *.egg-info streamq/*.so ext/*.c ext/*.html .pytest_cache .mypy_cache .ruff_cache \
		.venv-peers
