# Two commands a newcomer needs: `make serve` and `make test` (see README.md).
# `make serve` runs WITHOUT access control (--insecure-dev, on 127.0.0.1 only): for development.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DB ?= sqlite:///./diatabase.db
PORT ?= 8080
# Installs are redone only when pyproject.toml changes (the package is installed editable,
# so code changes need no reinstall).
INSTALLED := $(VENV)/.installed
INSTALLED_TEST := $(VENV)/.installed-test
# FHIR.js, the second independent R4 parser of the test suite's response bodies
# (tests/r4_bodies.py): installed where npm is, skipped cleanly elsewhere.
NODE_DEPS := tests/node/node_modules/.installed

.PHONY: serve test install install-test node-deps lint load-examples bench-small clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(INSTALLED_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@ $(INSTALLED)

$(NODE_DEPS): tests/node/package.json
	@if command -v npm >/dev/null 2>&1; then \
		npm install --prefix tests/node --no-package-lock --no-audit --no-fund --silent && touch $@; \
	else \
		echo "npm not found: response bodies are checked with fhirclient only (no FHIR.js)"; \
	fi

install: $(INSTALLED)

install-test: $(INSTALLED_TEST)

node-deps: $(NODE_DEPS)

serve: $(INSTALLED)
	$(BIN)/diatabase serve --db $(DB) --host 127.0.0.1 --port $(PORT) --insecure-dev

load-examples: $(INSTALLED)
	$(BIN)/diatabase load --db $(DB) examples/patient-story.json

lint: $(INSTALLED_TEST)
	$(BIN)/ruff check .

test: $(INSTALLED_TEST) node-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2

bench-small: $(INSTALLED_TEST)
	$(BIN)/python -m bench.run --size small

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache tests/node/node_modules diatabase.db diatabase.db-wal diatabase.db-shm
