# `make demo` and `make test` each build .venv on a fresh machine, then run.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python experiments/main.py --config configs/digits_lstm.py --workdir runs/demo

# pytest in two workers (pytest-xdist): CI has 2 cores, and much of the suite waits on
# subprocesses and disk (9 min -> 7 min here). `.venv/bin/python -m pytest tests/x.py` is serial.
test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2

# The daily tier: everything but the tests marked slow (subprocesses, process pools, Ray,
# whole config runs). `make test` (and CI) runs everything.
test-fast: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 -m "not slow"

lint: $(VENV)/.installed-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(VENV)/.installed-test
	$(BIN)/python experiments/bench.py

clean:
	rm -rf $(VENV) runs
