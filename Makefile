# `make demo` and `make test` work on a fresh machine: both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all setup bench lint clean

demo: setup
	$(BIN)/vslm demo

test: setup
	$(BIN)/python -m pytest -q

test-all: setup  ## includes the tests marked slow
	$(BIN)/python -m pytest -q -m ""

bench: setup
	$(BIN)/vslm bench

lint: setup
	$(BIN)/ruff check src tests

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh "$(VENV)" "$(PYTHON)"
	touch $@

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
