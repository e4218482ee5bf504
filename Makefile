# knobflow: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.knobflow-installed
export KNOBFLOW_HOME ?= $(CURDIR)/.knobflow

.PHONY: demo test test-fast lint venv system services clean overhead

venv: $(STAMP)

# Installs every Python dependency at the versions pinned in constraints.txt (Airflow's own
# constraints host is not reachable from here), plus knobflow itself in editable mode.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: venv
	$(BIN)/knobflow run experiments/sqlite-demo.yaml

# Debian packages the tests need (system-packages.txt): installed with apt-get when missing.
system:
	scripts/system-deps.sh

# PostgreSQL and Redis up and answering on 127.0.0.1 (started when they are not): the tests of real
# Airflow deployments (tests/e2e/test_airflow_*) use them.
services: system
	scripts/services.sh

test: venv system services
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

lint: venv
	$(BIN)/ruff check src tests dags benchmarks roles
	$(BIN)/ruff format --check src tests dags benchmarks roles
	$(BIN)/mypy
	cd roles && ../$(BIN)/ansible-lint --offline --profile production .
	cd examples/custom-layer/roles && ../../../$(BIN)/ansible-lint --offline --profile production .
	ANSIBLE_ROLES_PATH=$(CURDIR)/roles $(BIN)/ansible-lint --offline --profile production playbooks

overhead: venv
	$(BIN)/python benchmarks/overhead/run.py

clean:
	rm -rf .knobflow .pytest_cache
