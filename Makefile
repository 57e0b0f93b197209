# authkms — common tasks. Python 3.11+ is the only prerequisite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: all install run test test-fast test-no-e2e lint api api-check migrate-up migrate-down bench clean

all: lint test

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)  ## install the service and its test tools into .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'

run: install  ## run the service (embedded PostgreSQL/Redis when none is configured)
	$(PY) cmd/server/main.py -conf configs

test: install  ## the whole suite: unit, integration (real PostgreSQL/Redis), e2e, hardening
	$(PY) -m pytest

test-fast: install  ## the edit loop, under a minute: unit tests only (no database, no server processes)
	$(PY) -m pytest -m "not integration and not e2e" -q

test-no-e2e: install  ## unit and integration (real PostgreSQL/Redis); skips server processes and hardening
	$(PY) -m pytest -m "not e2e" -q

lint:  ## ruff, mypy, import contracts, buf lint, generated-code freshness
	$(PY) -m ruff check .
	$(PY) -m mypy internal cmd bench
	$(VENV)/bin/lint-imports
	$(PY) -m api.generate --buf-deps
	$(VENV)/bin/buf lint
	$(PY) -m api.generate --check

api:  ## regenerate Python code from api/proto
	$(PY) -m api.generate

migrate-up:
	$(PY) cmd/server/main.py migrate up

migrate-down:
	$(PY) cmd/server/main.py migrate down

bench:  ## print the speed ratios (see bench/README in docs)
	$(PY) -m bench

clean:
	rm -rf build *.egg-info .pytest_cache .mypy_cache .ruff_cache
