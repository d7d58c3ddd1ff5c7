# Two commands a newcomer needs: `make serve` and `make test` (see README.md).
# `make serve` runs WITHOUT access control (--insecure-dev, on 127.0.0.1 only): for development.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DB ?= sqlite:///./diatabase.db
PORT ?= 8080

.PHONY: serve test install install-test lint load-examples bench-small clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"

serve: install
	$(BIN)/diatabase serve --db $(DB) --host 127.0.0.1 --port $(PORT) --insecure-dev

load-examples: install
	$(BIN)/diatabase load --db $(DB) examples/patient-story.json

lint: install-test
	$(BIN)/ruff check .

test: install-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2

bench-small: install-test
	$(BIN)/python -m bench.run --size small

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache diatabase.db diatabase.db-wal diatabase.db-shm
