# agent-ready: the one entry point. `make run` starts the suite, `make test` tests it.
# Each target installs what it needs first (a virtualenv in .venv, buf in node_modules).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BUF    := node_modules/.bin/buf
PROTOS := $(shell find protos -name '*.proto' | sort)
# The etcd v3 API subset the benchmark drives; stubs generated beside the protos.
BENCH_PROTOS := $(sort $(wildcard tests/bench/etcdv3/*.proto))
HAND_WRITTEN := servicekit tenant_service config_service provisioner sdk/src sdk/examples tests
ORG    ?= demo
ROLE   ?= owner
# The suite forks only to exec (the embedded PostgreSQL's initdb and pg_ctl, run as a
# user of their own). gRPC's fork handlers, on by default in this grpcio, now and then
# crashed such a child before its exec while other threads were inside gRPC.
export GRPC_ENABLE_FORK_SUPPORT ?= false

.PHONY: help install run test lint format proto proto-check bench token clean

help:
	@echo "make run     start TenantService, ConfigService and ProvisionerService (embedded"
	@echo "             PostgreSQL and Redis unless DATABASE_URL / REDIS_URL are set)"
	@echo "make test    run the whole test suite"
	@echo "make lint    ruff, mypy and buf lint"
	@echo "make proto   regenerate the SDK's protobuf and gRPC code from protos/"
	@echo "make token   print a development access token (ORG=demo ROLE=owner)"
	@echo "make bench   run the benchmarks and print their figures"

$(STAMP): requirements.lock pyproject.toml sdk/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
		-e ./sdk -e .
	@touch $@

$(BUF): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

install: $(STAMP)

run: $(STAMP)
	$(PY) -m servicekit.devstack run

test: $(STAMP) $(BUF)
	$(PY) -m pytest

lint: $(STAMP) $(BUF)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(HAND_WRITTEN)
	$(BUF) lint

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

proto: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iprotos --python_out=sdk/src --grpc_python_out=sdk/src \
		--mypy_out=sdk/src --mypy_grpc_out=sdk/src $(PROTOS)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. \
		--mypy_out=. --mypy_grpc_out=. $(BENCH_PROTOS)

bench: $(STAMP)
	$(PY) -m tests.bench

token: $(STAMP)
	@$(PY) -m servicekit.devstack token --org $(ORG) --role $(ROLE)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
