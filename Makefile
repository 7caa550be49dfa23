# The two commands of the README: `make run` and `make test`. Each creates .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test unit lint bench bench-revocation translations clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,fast]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) deploy/devstack.py $(ARGS)

test: $(STAMP)
	bash deploy/ensure-test-tools.sh
	$(VENV)/bin/ruff check gateway portal tests deploy
	$(PY) -m pytest

unit: $(STAMP)
	$(PY) -m pytest tests/unit tests/http

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway portal tests deploy
	$(VENV)/bin/ruff format --check gateway portal tests deploy
	$(PY) -m mypy gateway portal

bench: $(STAMP)
	bash deploy/ensure-test-tools.sh
	$(PY) deploy/bench/run.py $(ARGS)

# Revocation latency between two instances on PostgreSQL (docs/scaling.md).
bench-revocation: $(STAMP)
	bash deploy/ensure-test-tools.sh
	$(PY) deploy/bench/revocation_latency.py $(ARGS)

# Extract the portal's messages into every catalogue, then compile them (docs/translations.md).
translations: $(STAMP)
	$(PY) deploy/translations.py update
	$(PY) deploy/translations.py compile

clean:
	rm -rf $(VENV) .pytest_cache
