# datacoop: one Makefile for every role. Targets install what they need on first use:
# .venv from pyproject.toml + requirements.lock, node_modules from package-lock.json (npm ci).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
ONLY ?=

.PHONY: install test test-fast run up bench schemas check-schemas contracts lint lock clean compose-config

install: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

test: install  ## the whole suite, against a real broker and chain started by the tests
	$(PY) -m pytest -q

test-fast: install  ## unit tests only
	$(PY) -m pytest -q tests/unit

run: install  ## broker, chain, every service, the demo scenario; Ctrl-C stops all
	$(VENV)/bin/datacoop up --demo

up: install  ## broker, chain and every service, no scenario
	$(VENV)/bin/datacoop up

bench: install  ## every benchmark (or ONLY=name[,name]); writes var/bench/<name>.json
	$(PY) -m benchmarks $(if $(ONLY),--only $(ONLY))

schemas: install  ## regenerate schemas/ from the event models
	$(PY) -m datacoop.schemas write

check-schemas: install
	$(PY) -m datacoop.schemas check

contracts: install  ## rebuild infra/contracts/artifacts byte for byte with the pinned solc
	node infra/contracts/build.mjs

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

lock: install  ## re-pin the Python packages after changing pyproject.toml (name==version only, never a path)
	$(PY) -m pip list --format=freeze --exclude-editable --exclude pip --exclude setuptools | grep -v '^datacoop' > requirements.lock

compose-config:  ## parse docker-compose.yml (Debian's docker-compose; no engine needed), secrets and chain stood in for
	DATACOOP_VAULT_KEK=check DATACOOP_VAULT_SERVICE_TOKEN=check DATACOOP_ANONYMIZER_OPERATOR_TOKEN=check \
	DATACOOP_ANONYMIZER_PSEUDONYM_KEY=check DATACOOP_SETTLEMENT_OPERATOR_TOKEN=check \
	DATACOOP_CHAIN_URL=check DATACOOP_CHAIN_ID=check DATACOOP_MARKET_ADDRESS=check DATACOOP_TOKEN_ADDRESS=check \
	DATACOOP_SETTLER_KEY=check DATACOOP_COOP_ADDRESS=check \
	docker-compose -f docker-compose.yml config --quiet

clean:
	rm -rf var/data var/run var/test-logs
