# edge-agent developer / CI entry points (GNU make).
#   make test     system packages + venv, then the default (not slow) test suite
#   make demo     end-to-end demo (tools/demo.py)
#   make faults   slow fault-injection runs;  make fuzz: slow property/fuzz runs
#   make bench    benchmarks (tools/bench), one table -> artifacts/bench.md;  make bench-quick: small sizes
#   make install  tools/install.sh (root)
SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
# reinstalls only when pyproject.toml changes (or the venv is gone)
STAMP  := $(VENV)/.edge-agent-installed
PYTEST_ARGS ?=
# test workers (pytest-xdist): most tests wait on real processes, so 2 workers on 2 cores
# take about 60 % of the serial time; TEST_WORKERS=0 runs in one process
TEST_WORKERS ?= 2

.PHONY: venv deps test demo faults fuzz bench bench-quick install clean

deps:
	@tools/install-deps.sh

venv: $(STAMP)

# pyaudio (extra "audio") builds against portaudio19-dev, hence the order-only dep on deps.
$(STAMP): pyproject.toml | deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,audio]'
	@touch $@

test: deps venv
	$(PYTEST) -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

demo: deps venv
	$(PY) -m tools.demo

# pytest exits 5 when it collected nothing (no slow tests yet): not an error for these targets.
# FAULT_TRIALS (default 200), FAULT_SEED, FAULT_BLOCK: see tests/faults/test_faults_random.py.
# The table is printed (and in artifacts/faults.txt) even when a trial failed; the exit status fails then.
faults: deps venv
	@rc=0; rm -f artifacts/faults.json; \
	if [ -d tests/faults ]; then \
	  FAULT_TRIALS=$${FAULT_TRIALS:-200} $(PYTEST) -m slow tests/faults -q $(PYTEST_ARGS) || rc=$$?; \
	  if [ $$rc -eq 5 ]; then rc=0; fi; \
	else echo "no tests/faults yet"; fi; \
	if [ -f tools/faults_report.py ]; then $(PY) -m tools.faults_report || { r=$$?; [ $$rc -ne 0 ] || rc=$$r; }; fi; \
	exit $$rc

fuzz: deps venv
	@if [ -d tests/fuzz ]; then \
	  HYPOTHESIS_PROFILE=fuzz $(PYTEST) -m "slow or not slow" tests/fuzz -q $(PYTEST_ARGS); \
	else echo "no tests/fuzz yet"; fi

bench: deps venv
	$(PY) -m tools.bench

bench-quick: deps venv
	$(PY) -m tools.bench --quick

install:
	tools/install.sh

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis $(STAMP)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
