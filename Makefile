# The two commands (README): `make demo` runs the whole job on the embedded
# MovieLens-100K data; `make test` runs the test suite. Each bootstraps the venv.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
CONFIG ?= configs/movielens_100k.yaml
PYTEST_ARGS ?=

.PHONY: install demo test test-fast data compile clean

install: $(STAMP)

$(STAMP): requirements.lock.txt requirements-extra.lock.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==0.5.11
	$(UV) pip install --python $(PY) --no-deps -r requirements.lock.txt -r requirements-extra.lock.txt
	$(UV) pip install --python $(PY) --no-deps --no-build-isolation -e .
	touch $(STAMP)

data: $(STAMP)
	$(VENV)/bin/recsys data fetch

demo: $(STAMP)
	$(VENV)/bin/recsys demo --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e" $(PYTEST_ARGS)

compile: $(STAMP)
	$(VENV)/bin/recsys pipeline compile --config $(CONFIG)

clean:
	rm -rf runs
