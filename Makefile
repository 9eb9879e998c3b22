# The DKL toolkit. `make help` lists every target.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PY := $(VENV)/bin/python
# Every installable folder of the monorepo: the library, the shared training package, the recipes.
PROJECTS := $(sort $(patsubst %/pyproject.toml,%,$(wildcard packages/*/pyproject.toml recipes/*/pyproject.toml)))
EDITABLE := $(foreach p,$(PROJECTS),-e $(p)$(if $(filter packages/dkl-core,$(p)),[autoattack]))
STAMP := $(VENV)/.installed

PYTEST_ARGS ?=
ARGS ?=

.PHONY: help install test test-unit lint format bench clean

help: ## List every target with a one-line description
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv and install every package of the repo (editable, pinned); a no-op when nothing changed

$(STAMP): requirements/constraints.txt requirements/dev.txt $(addsuffix /pyproject.toml,$(PROJECTS))
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -r requirements/dev.txt $(EDITABLE)
	@touch $@

test: install ## Run the whole test suite (unit, recipe smoke, distributed, resume)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install ## Run only the fast unit tests (seconds)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: install ## ruff check + format check over the whole repo
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install ## Speed/memory ratios side by side; writes benchmarks/results/*.json and *.md
	$(PY) -m benchmarks $(ARGS)

clean: ## Remove caches (keeps .venv, data/ and runs/)
	find . -name __pycache__ -prune -exec rm -rf {} + ; rm -rf .pytest_cache .ruff_cache

# --- reports --------------------------------------------------------------------------------
RUNS ?= runs
.PHONY: report
report: install ## Aggregate every results.json under RUNS=<folder> into RUNS/REPORT.md + plots (mean ± std over seeds vs paper)
	$(PY) -m dkl_train.report $(RUNS)
