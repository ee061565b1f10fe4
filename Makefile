# AlgoTerm: `make run` serves the whole stack, `make test` runs the whole suite, `make bench` the benchmarks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Tests always run against real PostgreSQL and Redis; these defaults are the local servers.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/algoterm
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
# Parallel test workers (pytest-xdist): each has its own test database and Redis key prefix.
TEST_WORKERS ?= 2

.PHONY: run test lint bench drill fuzz migrate seed clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The brokers' SDKs go in without their declared pins (stale, with published advisories): requirements.txt pins what
# they really import at patched releases, then requirements-sdk.txt adds the SDKs themselves with --no-deps.
# --no-warn-conflicts: on an update pip would otherwise list the SDKs' own pins that those releases replace.
$(VENV)/.installed: requirements.txt requirements-sdk.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-warn-conflicts -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-sdk.txt
	@# a venv built before this split still holds what only the SDKs' pins brought in
	$(BIN)/python -m pip uninstall -qq --yes asyncio aws-xray-sdk boto3 botocore s3transfer \
		pandas wrapt fastjsonschema
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

migrate: $(VENV)/.installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py sync_periodic_tasks

seed: migrate
	$(BIN)/python manage.py seed_demo

run: seed
	HOST=$(HOST) PORT=$(PORT) $(BIN)/python manage.py serve

test: $(VENV)/.dev-installed
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
	REDIS_KEY_PREFIX=algoterm-test-$$$$ DJANGO_ENV=test LOG_LEVEL=$${LOG_LEVEL:-WARNING} \
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --timeout 300 --durations=15 $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Each benchmark makes its own database (or a throw-away SQLite one): never the one DATABASE_URL names.
bench: $(VENV)/.dev-installed
	@for script in bench/bench_*.py; do \
		env -u DATABASE_URL BENCH_QUICK=$(if $(QUICK),1,) $(BIN)/python $$script || exit 1; \
	done

# The fault drill: the distributed stack under retrying clients while a worker, the web process and Redis fail.
# `make drill QUICK=1` is CI's shorter run.
drill: $(VENV)/.dev-installed
	$(BIN)/python bench/drill.py $(if $(QUICK),--quick,)

# Schema-driven fuzzing (Schemathesis) of every operation in /api/schema against the running stack, stateful phase
# included: no 5xx, no undocumented status, no answer outside its schema. `make fuzz QUICK=1` is CI's shorter run.
fuzz: $(VENV)/.dev-installed
	$(BIN)/python bench/fuzz.py $(if $(QUICK),--quick,)

clean-venv:
	rm -rf $(VENV)
