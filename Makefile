# Recur: make demo | make test | make lint | make protos
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow lint format protos clean

setup: $(STAMP)

# Idempotent: reruns only when the dependency files change. Exact versions come from constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[all]'
	@touch $@

demo: setup
	$(PY) scripts/demo.py

test: setup
	$(PY) -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[cluster]'
	$(PY) -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

protos: setup
	$(PY) scripts/gen_protos.py

clean:
	rm -rf models runs .pytest_cache .mypy_cache .ruff_cache
