# Two commands do all the set-up on a fresh machine:
#   make run    install into .venv, then run the whole study (plid.study) on the embedded synthetic data
#   make test   install into .venv (with test extras), then run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-slow test-all lint docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so the rest of the install does not pull another build
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test,docs]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m plid.study

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# the heavy tests (several trainings, subprocess launches, the study): CI runs them after make test
test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# ruff, configured in pyproject.toml (CI runs it first)
lint: $(STAMP)
	$(PY) -m ruff check plid tests benchmarks

# the documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link or a page missing from nav fails
# (not with -q: mkdocs 1.6 drops the warnings strict counts)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf logs data site
