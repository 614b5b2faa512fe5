# `make demo` and `make test` work on a fresh machine: they create .venv, install what is missing, and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstalled whenever pyproject.toml changes.
INSTALLED := $(VENV)/.installed
# The `ser` extra needs torch; installed on its own first so pip takes this (CPU) build instead of pulling
# several GB of CUDA packages as a dependency of transformers.
TORCH ?= torch==2.13.0

.PHONY: demo test lint install system-deps clean

demo: system-deps $(INSTALLED)
	$(BIN)/melt demo

test: system-deps $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

install: system-deps $(INSTALLED)

system-deps:
	@bash scripts/system-deps.sh

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q '$(TORCH)'
	$(BIN)/python -m pip install -q -e '.[local,acoustics,ser,dev]'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
