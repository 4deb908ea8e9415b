# trawl: `make up` runs the cluster on this machine, `make test` runs the test suite. Both start from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: up test browser lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

# Playwright's own Chromium when it can be downloaded, else a system Chromium (see `trawl browser`).
browser: $(VENV)/.installed
	@$(BIN)/trawl browser >/dev/null 2>&1 || $(BIN)/playwright install chromium || true
	@echo "browser: $$($(BIN)/trawl browser)"

up: browser
	$(BIN)/trawl up

test: $(VENV)/.installed-dev
	$(BIN)/pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check services shared tests bench
	$(BIN)/ruff format --check services shared tests bench
	$(BIN)/mypy

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .trawl .pytest_cache .mypy_cache .ruff_cache
