# The few verbs people type. Everything installs into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench dist clean

$(VENV)/.installed: setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/lanchat serve

lint: $(VENV)/.installed-test
	$(BIN)/ruff check node tests bench
	$(BIN)/ruff format --check node tests bench
	$(BIN)/mypy node

test: lint
	$(BIN)/pytest

bench: $(VENV)/.installed-test
	$(BIN)/python bench/run.py

dist: $(VENV)/.installed-test
	$(BIN)/pip install -q build
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf $(VENV) build dist *.egg-info
