PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml tests/plugins/example_plugin/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q -e tests/plugins/example_plugin
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/shortdrama-worker --config config/local.toml serve

test: $(STAMP)
	$(BIN)/ruff check shortdrama_worker tests bench
	$(BIN)/ruff format --check shortdrama_worker
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check --fix shortdrama_worker tests bench
	$(BIN)/ruff format shortdrama_worker

bench: $(STAMP)
	$(BIN)/pip install -q -r bench/requirements.txt  # Celery etc.: the baseline, not our runtime
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
