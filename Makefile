# Two entry points, each doing the whole setup idempotently first:
#   make demo  - set up, fetch the emoji data, run `vlmops demo`
#   make test  - set up, fetch the emoji data, run the test suite
# Setup steps leave stamps in .stamps/ and rerun only when their inputs change.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMPS := .stamps
PYTEST_ARGS ?=

.PHONY: setup demo test lint clean

setup: $(STAMPS)/install $(STAMPS)/system
	@$(BIN)/vlmops data fetch emoji --no-progress

demo: setup
	$(BIN)/vlmops demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMPS)/install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first and pinned, so no dependency can pull another build
$(STAMPS)/torch: | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/install: pyproject.toml $(STAMPS)/torch
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	@mkdir -p $(STAMPS) && touch $@

# libcairo2 for rendering OpenMoji's SVGs (cairosvg)
$(STAMPS)/system: scripts/system-deps.sh
	bash scripts/system-deps.sh
	@mkdir -p $(STAMPS) && touch $@

clean:
	rm -rf $(VENV) $(STAMPS)
