# The README's two commands, and the few around them. Each target is one command; the venv is made on
# first use from pyproject.toml and constraints.txt (the exact versions the suite was run against).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
ARGS ?=

.PHONY: run test lint typecheck unit bench docs clean

$(INSTALLED): pyproject.toml constraints.txt
	@echo "Installing placement-actors and its pinned dependencies into $(VENV) (first use: about a minute)"
	$(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet --upgrade pip && $(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]' && touch $(INSTALLED)

run: $(INSTALLED)
	$(BIN)/placement-actors demo $(ARGS)

test: lint typecheck unit

lint: $(INSTALLED)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(INSTALLED)
	$(BIN)/mypy

unit: $(INSTALLED)
	$(BIN)/pytest

docs: $(INSTALLED)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: $(INSTALLED)
	$(BIN)/python bench/ledger_decisions.py && $(BIN)/python bench/decision_paths.py && $(BIN)/python bench/hostile_requests.py && $(BIN)/python bench/plan_replicas.py && $(BIN)/python bench/live_cluster.py && $(BIN)/python bench/watcher_cost.py && $(BIN)/python bench/remote_place.py && $(BIN)/python bench/resolution.py && $(BIN)/python bench/packing.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis site
