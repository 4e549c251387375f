# The two commands a new machine needs. Both set it up first (scripts/setup.sh, idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-cluster test-drills test-slow demo lint bench

setup:
	bash scripts/setup.sh

test: setup  ## unit + Ray integration tests (default suite: about 17 min on 2 cores)
	$(PY) -m pytest -q --durations=10

test-cluster: setup  ## ray job submit to a head + 3 loopback nodes; Ray's own autoscaler under a run (~15 min)
	$(PY) -m pytest -q -m cluster --durations=10

test-drills: setup  ## spot drills: a drained node, three lost nodes, an elastic run shrinking and growing, a sweep losing a node, S3 outages, a sweep's driver killed (~19 min)
	$(PY) -m pytest -q -m drills --durations=10

test-slow: setup  ## the CPU learning recipes on CIFAR-10 from ../shared/data/cifar10 (~20 min)
	$(PY) -m pytest -q -m slow -s

demo: setup  ## short pretrain + evaluation on Fashion-MNIST on an embedded local Ray
	$(PY) jobs/pretrain.py experiment=demo

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy --warn-unused-ignores empssl_ray jobs bench tests

bench: setup  ## the CPU benchmarks of docs/benchmarks.md
	$(PY) bench/tcr.py && $(PY) bench/patches.py && $(PY) bench/pipeline.py
