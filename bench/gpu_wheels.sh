#!/usr/bin/env bash
# The wheels a GPU machine without a package index needs for bench/gpu_run.sh, into .whl/
# (git-ignored; carry it to the machine and run `WHEELS=.whl bash bench/gpu_run.sh`).
#
# The machine lent so far (bench/results/gpu_pip_list.txt: Python 3.12, CUDA torch 2.11,
# transformers 5.17, accelerate, numpy, pillow, psutil, uvloop, jinja2, prometheus_client, rich,
# anyio, httpx, click, typer) lacks RIS's web stack, diffusers, espeak and what
# `transformers serve` imports (openai, which now needs httpx2), and orjson. Only those are fetched, for
# CPython 3.12 on manylinux x86_64, without their dependencies (the machine has the rest):
# about 24 MiB of the 64 MiB a device call carries. PyAV is left out (34 MB): the server
# imports it only to encode mp3/opus/aac/flac, which no GPU part asks for.
set -euo pipefail
DEST=${DEST:-.whl}
PY=${PY:-python3}
mkdir -p "$DEST"
# A folder made afresh: two versions of one package (a newer one fetched on a later day) would
# make the machine's `pip install "$WHEELS"/*.whl` refuse them all.
rm -f "$DEST"/*.whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$DEST" \
    fastapi starlette uvicorn httptools httpx httpcore h11 pydantic pydantic-core \
    typing-inspection annotated-types annotated-doc "fastapi-offline==1.7.7" opentelemetry-api \
    importlib-metadata zipp markupsafe nvidia-ml-py diffusers espeakng-loader openai jiter distro \
    httpx2 httpcore2 typer shellingham markdown-it-py mdurl sniffio idna certifi orjson
du -sh "$DEST"

# RAY=1: also a folder for gpu_run.sh's `ray` part (cluster mode on the machine's 16 cores),
# $RAY_DEST (default .whl-ray), carried alone in its own device call. Ray's wheel is 79 MB, more
# than a call carries, so what RIS's cluster mode never imports is left out (the Java jars,
# RLlib, Tune, Train, Serve, Data, Ray's LLM library, the dashboard's web client) and the rest
# packed with xz: about 20 MB. Beside it: jsonschema's wheels (Ray needs it; that machine lacks
# it) and the wheels above but those only the GPU parts use (diffusers, openai): 35 MiB in all.
if [ -n "${RAY:-}" ]; then
    RAY_DEST=${RAY_DEST:-.whl-ray}
    RAY_VERSION=$($PY -c "import importlib.metadata as m; print(m.version('ray'))" 2>/dev/null || echo 2.60.0)
    mkdir -p "$RAY_DEST"
    rm -f "$RAY_DEST"/*.whl "$RAY_DEST"/*.tar.xz
    for w in "$DEST"/*.whl; do
        case "$(basename "$w")" in diffusers-*|openai-*|jiter-*) ;; *) cp "$w" "$RAY_DEST"/ ;; esac
    done
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 -d "$RAY_DEST" \
        jsonschema jsonschema-specifications referencing rpds-py
    work=$(mktemp -d)
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --abi cp312 --platform manylinux2014_x86_64 -d "$work" "ray==$RAY_VERSION"
    (cd "$work" && unzip -q ray-*.whl && rm ray-*.whl \
        && rm -rf ray/jars ray/rllib ray/tune ray/train ray/serve ray/data ray/llm ray/air \
                  ray/dashboard/client/build \
        && tar cf - ray ray-*.dist-info | xz -T0 -9) > "$RAY_DEST/ray-$RAY_VERSION-cp312-stripped.tar.xz"
    rm -rf "$work"
    du -sh "$RAY_DEST"
fi
