# Recur: make demo | make test | make lint | make protos | make bench [QUICK=1] [GPU=1]
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
RUNTIME_STAMP := $(VENV)/.setup-runtime
DEV_STAMP     := $(VENV)/.setup-dev
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup setup-dev demo test test-slow test-gpu bench lint format protos clean audit images

# Idempotent: reruns only when the dependency files change. Exact versions come from constraints.txt.
# `setup` is what the demo runs (train + serve + client + plots, and Ray's dashboard: its State
# API and job server); `setup-dev` adds the test and lint tools (among them kubernetes-validate,
# 17k schema files: kept out of the demo's set-up).
setup: $(RUNTIME_STAMP)
setup-dev: $(DEV_STAMP)

$(RUNTIME_STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[serve,train,client,plot,cluster]'
	@touch $@

$(DEV_STAMP): $(RUNTIME_STAMP)
	$(PIP) -e '.[all]'
	@touch $@

demo: setup
	$(PY) scripts/demo.py

test: setup-dev
	$(PY) -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

test-slow: setup-dev
	$(PIP) -e '.[exporters]'  # the dynamo exporter, for its canary
	-scripts/images.sh --install-tools  # buildah, podman, debootstrap for the image tests (root)
	$(PY) -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

# Every gpu-marked test and the GPU bench scenario's quick run, in-process, within 9 minutes
# (scripts/gpu-check.sh; exit 3 when there is no CUDA device: nothing was checked).
test-gpu: setup-dev
	PYTHON=$(PY) scripts/gpu-check.sh "" $(PYTEST_ARGS)

# Every scenario of scripts/bench (QUICK=1: the reduced run, GPU=1: the GPU scenario must find CUDA);
# results, plots and SUMMARY.md in bench-results/. Adds Ray Serve for the peer scenario.
bench: setup-dev
	$(PIP) -e '.[bench]'
	$(PY) -m scripts.bench $(if $(filter-out 0,$(QUICK)),--quick) $(if $(filter-out 0,$(GPU)),--gpu) $(BENCH_ARGS)

audit: setup-dev
	scripts/audit.sh

lint: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

protos: setup-dev
	$(PY) scripts/gen_protos.py

# The serving and training images (deploy/docker): Docker where an engine answers, else buildah
# (installed with apt-get when run as root), on a local Debian base (debootstrap) where no registry
# serves the official ones; it says which. IMAGES=serve or IMAGES=train builds one.
images:
	scripts/images.sh $(IMAGES)

clean:
	rm -rf models runs .pytest_cache .mypy_cache .ruff_cache
