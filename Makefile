# Customer management service. GNU make.
#   make run      start everything (embedded PostgreSQL/NATS when DATABASE_URL/NATS_URL unset)
#   make test     the whole suite against real PostgreSQL and NATS
#   make lint     ruff + mypy
#   make bench    benchmarks
#   make fuzz     schemathesis, every check, 50 examples per operation (not in make test)
#   make chaos    load-and-fault suite on a private PostgreSQL and NATS: kills each process,
#                 restarts the servers, proves nothing acknowledged is lost (not in make test)
#   make drill    backup-and-restore drill on a private PostgreSQL and NATS: restores to a
#                 time before an erasure, proves nothing acknowledged is lost and the erased
#                 customer stays erased (not in make test; DRILL_ARGS: see --help)
#   make migrate  apply the database schema
#   make openapi  write the REST contract to api/openapi/customers-api.v1.yaml
#   make proto    compile api/proto/customers.proto into grpc_api/gen (checked in)
#   make lock     re-resolve requirements/*.txt from pyproject.toml, keeping current pins
#                 (UPGRADE=1: move every package to its newest release); review the diff

VENV ?= .venv
# First python3 on PATH that is >= 3.11.
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	  if command -v $$p >/dev/null 2>&1 && \
	     $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	    command -v $$p; break; fi; done)
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed
PACKAGES := domain eventstore write_api projections read_api service grpc_api

.DEFAULT_GOAL := help
.PHONY: help install lock run test lint format bench chaos drill fuzz migrate openapi proto clean distclean

help:
	@echo "targets: run test lint format bench chaos drill migrate openapi proto lock install clean"

# The lock decides every version: each package pinned with its hashes, nothing resolved at
# install time. A changed lock rebuilds the venv from scratch so that it holds exactly the lock.
LOCK := requirements/dev.txt
LOCK_INPUTS := pyproject.toml requirements/build.in
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --universal --generate-hashes \
	--python-version 3.11 --no-header $(if $(UPGRADE),--upgrade)

$(STAMP): $(LOCK) pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: need python3 >= 3.11 on PATH" >&2; exit 1; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(VENV)/bin/python -m pip check
	@touch $@

install: $(STAMP)

# Needs only uv (locked in the dev extra), not an install that matches pyproject.toml.
lock:
	@test -x $(VENV)/bin/uv || { $(PYTHON) -m venv $(VENV) && \
	  $(VENV)/bin/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK); }
	$(UV_COMPILE) $(LOCK_INPUTS) -o requirements/runtime.txt
	$(UV_COMPILE) --extra dev --extra embedded $(LOCK_INPUTS) -o $(LOCK)

run: install
	$(VENV)/bin/customers serve

migrate: install
	$(VENV)/bin/customers migrate

openapi: install
	$(VENV)/bin/customers openapi > api/openapi/customers-api.v1.yaml

proto: install
	$(VENV)/bin/python -m grpc_api.codegen

test: install
	$(VENV)/bin/pytest -n 2 -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(PACKAGES)
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	@command -v wrk >/dev/null || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || true
	$(VENV)/bin/python -m bench
	$(VENV)/bin/python -m bench.segments
	$(VENV)/bin/python -m bench.privacy
	$(VENV)/bin/python -m bench.security
	$(VENV)/bin/python -m bench.tracking
	$(VENV)/bin/python -m bench.analytics
	$(VENV)/bin/python -m bench.transfers
	$(VENV)/bin/python -m bench.mixed
	$(VENV)/bin/python -m bench.serving
	$(VENV)/bin/python -m bench.replicas

# Not part of `make test`: a few minutes of load with faults (CHAOS_ARGS: see --help).
chaos: install
	$(VENV)/bin/python -m bench.chaos $(CHAOS_ARGS)

# Not part of `make test`: a few minutes (DRILL_ARGS: --customers N, --phase-seconds S).
drill: install
	$(VENV)/bin/python -m bench.drill $(DRILL_ARGS)

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info

distclean: clean
	rm -rf $(VENV)

# Not part of `make test` (which runs a CI-sized pass): schemathesis with every check and the
# stateful phase, 50 examples per operation, against the whole service over HTTP.
fuzz: install
	CONTRACT_EXAMPLES=50 CONTRACT_PHASES=all CONTRACT_SEED= $(VENV)/bin/pytest -q -p no:cacheprovider tests/e2e/test_contract.py
