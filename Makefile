# Two commands do everything on a fresh machine (see README.md):
#   make demo   -- set up, make sure Fashion-MNIST is present, run `refconv demo --profile quick`
#   make test   -- set up, make sure Fashion-MNIST is present, run the default test suite
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_ARGS ?=
DEMO_ARGS ?= --profile quick --out demo-out
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test test-slow test-slurm bench clean

setup:
	$(PIP) install -q -e '.[test]'

# Fashion-MNIST: Debian's package where apt works (as root); otherwise torchvision's download into the default
# location (~/.cache/refconv/data/fashion-mnist), where refconv and the tests find it without any option.
data: setup
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) \
		|| echo "apt-get could not install dataset-fashion-mnist: downloading it with torchvision"; \
	fi
	@$(PYTHON) tools/get_fashion_mnist.py

demo: setup data
	$(PYTHON) -m refconv.cli demo $(DEMO_ARGS)

# The suite generates the small data most tests read; the shipped models' accuracy checks need the real test set.
test: setup data
	$(PYTHON) -m pytest -n 2 $(PYTEST_ARGS)

test-slow: setup
	# one process: two of the largest zoo models side by side exceed 24 GiB
	$(PYTHON) -m pytest -p no:xdist -m slow $(PYTEST_ARGS)

# A one-node Slurm on this machine (Debian's slurm-wlm, as root), the `slurm` tests against it, then stopped.
test-slurm: setup
	tools/slurm-local.sh install
	tools/slurm-local.sh start
	$(PYTHON) -m pytest -p no:xdist -m slurm tests/test_launch_slurm.py $(PYTEST_ARGS); rc=$$?; tools/slurm-local.sh stop; exit $$rc

bench: setup
	$(PYTHON) benchmarks/bench_core.py --out benchmarks/RESULTS.md
	$(PYTHON) benchmarks/bench_engine.py
	$(PYTHON) benchmarks/bench_throughput.py --in-chans 1

clean:
	rm -rf build dist src/*.egg-info .pytest_cache demo-out
