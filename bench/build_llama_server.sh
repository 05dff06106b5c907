#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server`, for bench/llm_concurrency.py only (not CI, not the service).
#
# The source is the llama-cpp-python sdist from PyPI at the version installed in .venv: it vendors
# llama.cpp under vendor/llama.cpp, so the server is built from exactly the llama.cpp that RIS's
# LLM lane runs, and only a package registry is needed. CPU build, native instructions less AMX (like
# the installed bindings, compiled on this machine), static, no web UI (it would be fetched online).
#
#     bench/build_llama_server.sh          # prints the path of the binary on its last line
#     FORCE=1 bench/build_llama_server.sh  # rebuild from a fresh sdist
#
# Output goes to bench/.llama-server/ (git-ignored). Runs under `nice -n 19` with 2 jobs at most:
# the build takes ~15-20 minutes on 2 cores and must not starve whatever else runs here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
OUT="$ROOT/bench/.llama-server"
JOBS="${JOBS:-2}"

VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
SRC="$OUT/llama_cpp_python-$VERSION/vendor/llama.cpp"
BUILD="$OUT/build-$VERSION-noamx"

# As the Makefile builds the bindings: -march=native without AMX, whose kernels fault on this
# machine's CPU (see the Makefile); the peer runs the same instructions RIS's lane runs.
if [[ "$(uname -m)" == "x86_64" ]]; then
    export CFLAGS="${CFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    export CXXFLAGS="${CXXFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
BIN="$BUILD/bin/llama-server"

if [[ -x "$BIN" && -z "${FORCE:-}" ]]; then
    echo "$BIN"
    exit 0
fi

mkdir -p "$OUT"
if [[ -n "${FORCE:-}" ]]; then
    rm -rf "$OUT/llama_cpp_python-$VERSION" "$BUILD"
fi

if [[ ! -d "$SRC" ]]; then
    echo "downloading the llama-cpp-python $VERSION sdist" >&2
    "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$OUT"
    tar -xzf "$OUT/llama_cpp_python-$VERSION.tar.gz" -C "$OUT"
fi
if [[ ! -f "$SRC/tools/server/server.cpp" ]]; then
    echo "error: $SRC has no tools/server: this sdist does not vendor llama-server" >&2
    exit 1
fi

# LLAMA_USE_PREBUILT_UI=OFF: the web UI would be downloaded from Hugging Face at build time; the
# benchmark only needs the HTTP API. LLAMA_OPENSSL=OFF: it only listens on localhost.
echo "configuring in $BUILD" >&2
nice -n 19 cmake -S "$SRC" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_CURL=OFF \
    -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF >&2

echo "building llama-server with $JOBS jobs (nice 19)" >&2
start=$SECONDS
nice -n 19 cmake --build "$BUILD" --target llama-server -j "$JOBS" >&2
echo "built in $((SECONDS - start)) s" >&2

"$BIN" --version >&2 || true
echo "$BIN"
