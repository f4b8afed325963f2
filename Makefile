# `make demo` and `make test` work on a fresh machine: both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all setup bench lint clean constraints

# ARGS: the demo's overrides, e.g. `make demo ARGS=train.threads=1` on a busy machine (its warning says when)
ARGS ?=
demo: setup
	$(BIN)/vslm demo $(ARGS)

# the suite in parallel (pytest-xdist): one worker a core, at most 4; each test still gets one thread (conftest)
XDIST := -n auto --maxprocesses 4

test: setup
	$(BIN)/python -m pytest -q $(XDIST)

test-all: setup  ## includes the tests marked slow
	$(BIN)/python -m pytest -q -m "" $(XDIST)

bench: setup
	$(BIN)/vslm bench train

lint: setup
	$(BIN)/ruff check src tests scripts

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh constraints.txt
	bash scripts/setup.sh "$(VENV)" "$(PYTHON)"
	touch $@

# Re-pins constraints.txt to the newest releases: a fresh venv installed without constraints, the suite
# run in it, and its versions written out only if the suite passed. Review the diff, then commit it.
CVENV := build/constraints-venv
constraints:
	rm -rf $(CVENV)
	VSLM_CONSTRAINTS= bash scripts/setup.sh "$(CVENV)" "$(PYTHON)"
	$(CVENV)/bin/python -m pytest -q $(XDIST)
	{ sed -n '/^#/p' constraints.txt; $(CVENV)/bin/python -m pip freeze --local --exclude-editable \
	  | grep -viE '^(torch|vslm)=='; } > $(CVENV)/constraints.txt
	mv $(CVENV)/constraints.txt constraints.txt
	rm -rf $(CVENV)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
