# Two commands do everything on a fresh machine (see README.md):
#   make demo   -- set up, make sure Fashion-MNIST is present, run `refconv demo --profile quick`
#   make test   -- set up, run the default test suite
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_ARGS ?=
DEMO_ARGS ?= --profile quick --out demo-out

.PHONY: setup data demo test test-slow bench clean

setup:
	$(PIP) install -q -e '.[test]'

test: setup
	$(PYTHON) -m pytest -n 2 $(PYTEST_ARGS)

test-slow: setup
	$(PYTHON) -m pytest -n 2 -m slow $(PYTEST_ARGS)

clean:
	rm -rf build dist src/*.egg-info .pytest_cache demo-out
