PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Plugin distributions in this repository: each installed into the venv and
# tested by its own pytest run (the host suite never collects them).
PLUGINS := plugins/compose

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml tests/plugins/example_plugin/pyproject.toml $(PLUGINS:%=%/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q -e tests/plugins/example_plugin
	for p in $(PLUGINS); do $(BIN)/pip install -q -e "$$p[test]" || exit 1; done
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/shortdrama-worker --config config/local.toml serve

test: $(STAMP)
	$(BIN)/ruff check shortdrama_worker tests bench
	$(BIN)/ruff format --check shortdrama_worker
	$(BIN)/mypy
	for p in $(PLUGINS); do (cd $$p && ../../$(BIN)/ruff check . && ../../$(BIN)/ruff format --check . && ../../$(BIN)/mypy) || exit 1; done
	$(BIN)/pytest -q
	for p in $(PLUGINS); do (cd $$p && ../../$(BIN)/pytest -q -p no:cacheprovider) || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check --fix shortdrama_worker tests bench
	$(BIN)/ruff format shortdrama_worker
	for p in $(PLUGINS); do (cd $$p && ../../$(BIN)/ruff check --fix . && ../../$(BIN)/ruff format .); done

bench: $(STAMP)
	$(BIN)/pip install -q -r bench/requirements.txt  # Celery etc.: the baseline, not our runtime
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
