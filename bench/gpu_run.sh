#!/usr/bin/env bash
# Every GPU check and benchmark in one go, for a machine with one NVIDIA GPU (H100/H200 class).
#
#   WHEELS=/path/to/wheels bash bench/gpu_run.sh     # offline: install from a folder of wheels
#   bash bench/gpu_run.sh                            # with a package index reachable
#
# Writes into $OUT (default bench/results): gpu_tests.txt (pytest tests/gpu),
# gpu_image_sharing.json (LLM latency vs image throughput per preemption policy) and
# ris_bench_gpu.{json,md,png} (traditional vs shared vs isolated under the mixed workload:
# Qwen2.5-7B-shape LLM and SD 1.5-shape images with random weights, Piper TTS on CPU cores).
set -euo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
PIP_ARGS=()
if [ -n "${WHEELS:-}" ]; then PIP_ARGS=(--no-index --find-links "$WHEELS"); fi

# A CUDA build of torch: the system's if it has one, else from the wheels / index.
python3 -m venv --system-site-packages .venv-gpu
. .venv-gpu/bin/activate
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    pip install "${PIP_ARGS[@]}" torch
fi
pip install "${PIP_ARGS[@]}" -e ".[tts,image,transformers,bench,test]" nvidia-ml-py
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_machine.txt"

python -m pytest tests/gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.txt" || true
python bench/gpu_image_sharing.py --out "$OUT/gpu_image_sharing.json" 2>&1 | tail -20
ris bench --gpu --repetitions "${REPETITIONS:-2}" --duration "${DURATION:-20}" --out "$OUT"
