#!/usr/bin/env bash
# The wheels a GPU machine without a package index needs for bench/gpu_run.sh, into .whl/
# (git-ignored; carry it to the machine and run `WHEELS=.whl bash bench/gpu_run.sh`).
#
# The machine lent so far (bench/results/gpu_pip_list.txt: Python 3.12, CUDA torch 2.11,
# transformers 5.17, accelerate, numpy, pillow, psutil, uvloop, jinja2, prometheus_client, rich,
# anyio, httpx, click, typer) lacks RIS's web stack, diffusers, espeak and what
# `transformers serve` imports (openai, which now needs httpx2), and orjson. Only those are fetched, for
# CPython 3.12 on manylinux x86_64, without their dependencies (the machine has the rest):
# about 29 MiB of the 64 MiB a device call carries. PyAV is left out (34 MB): the server
# imports it only to encode mp3/opus/aac/flac, which no GPU part asks for.
set -euo pipefail
DEST=${DEST:-.whl}
PY=${PY:-python3}
mkdir -p "$DEST"
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$DEST" \
    fastapi starlette uvicorn httptools httpx httpcore h11 pydantic pydantic-core \
    typing-inspection annotated-types annotated-doc "fastapi-offline==1.7.7" opentelemetry-api \
    importlib-metadata zipp markupsafe nvidia-ml-py diffusers espeakng-loader openai jiter distro \
    httpx2 httpcore2 typer shellingham markdown-it-py mdurl sniffio idna certifi orjson
du -sh "$DEST"
