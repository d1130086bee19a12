PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint bench clean

# `make run` installs what running needs (the local extra: moto, the detector);
# `make test` adds the test tool chain. Each has its own stamp.
$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[local]'
	touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml tests/plugins/example_plugin/pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q -e tests/plugins/example_plugin
	touch $(TEST_STAMP)

run: $(RUN_STAMP)
	$(BIN)/shortdrama-worker --config config/local.toml serve

test: $(TEST_STAMP)
	$(BIN)/ruff check shortdrama_worker tests bench
	$(BIN)/ruff format --check shortdrama_worker
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(TEST_STAMP)
	$(BIN)/ruff check --fix shortdrama_worker tests bench
	$(BIN)/ruff format shortdrama_worker

bench: $(TEST_STAMP)
	$(BIN)/pip install -q -r bench/requirements.txt  # Celery etc.: the baseline, not our runtime
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
