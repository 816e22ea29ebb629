# p2pexec developer entry points. Each target creates and uses its own
# virtualenv (.venv), so a fresh clone with only python3 needs nothing else.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-installed

.PHONY: install demo lint test test-pytest bench bench-compare clean

$(STAMP): setup.cfg setup.py pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "twisted[tls]>=23.10" "attrs>=22.2" "rich>=13" "prometheus_client>=0.20" \
		"pytest>=7" "pytest-twisted>=1.14" "jsonschema>=4.18" "openapi-spec-validator>=0.7" "selenium>=4.20" "hypothesis>=6.100" \
		"mypy>=1.10" "mypy-zope>=1.0" "ruff>=0.6" "towncrier>=23.10" \
		"pyyaml>=6" "kubernetes-validate>=1.30" "docutils>=0.19"
	touch $(STAMP)

## install: build and install p2pexec (a normal, non-editable install) into .venv
install: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall .

## demo: the original example: a1 (master of a1,a2,b1,c1,a3), b1 and c1 on loopback
demo: install
	$(BIN)/python examples/demo.py

## lint: type-check (mypy) and lint (ruff check, ruff format --check); the newsfragments must parse
lint: $(STAMP)
	$(BIN)/mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/towncrier build --draft --version next > /dev/null

## test: lint first, then the whole suite under trial
test: install lint
	$(BIN)/python -m twisted.trial tests

## test-pytest: the same suite under pytest
test-pytest: install
	$(BIN)/python -m pytest tests

## bench: the benchmark suite W1-W10 on loopback (docs/performance.rst)
bench: install
	$(BIN)/python benchmarks/run.py

## bench-compare: W1, W2, W3, W5 side by side with Dask, Ray, Celery (.venv-compare) and xargs -P2
bench-compare: install
	$(BIN)/python benchmarks/compare.py

clean:
	rm -rf $(VENV) build dist *.egg-info _trial_temp .pytest_cache
	find . -name dropin.cache -delete
