# `make demo`: set up and run the demo. `make test`: set up and run the test suite.
# `make setup` installs once: a stamp keyed on the requirements, constraints, setup.py, the compiled
# sources and the Python interpreter skips it while none of them changed (`make setup FORCE=1` redoes it).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
STAMP := .setup-stamp

.PHONY: setup demo test bench grid build-check

setup:
	@PYTHON="$(PYTHON)" FORCE="$(FORCE)" STAMP="$(STAMP)" bash .ci/setup.sh

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
