#!/usr/bin/env bash
# Every GPU check and benchmark, for a machine with one NVIDIA GPU (H100/H200 class) whose
# Python already has a CUDA build of torch (and transformers).
#
#   bash bench/gpu_run.sh                      # a package index is reachable: pip installs the rest
#   WHEELS=.whl bash bench/gpu_run.sh          # offline: wheels of only what is missing, from a folder
#   PARTS=tests,sharing bash bench/gpu_run.sh  # a subset of: tests, sharing, bench (default: all)
#
# Writes into $OUT (default bench/results): gpu_machine.txt, gpu_tests.txt (pytest tests/gpu),
# gpu_image_sharing.json (LLM latency vs image throughput per preemption policy) and
# ris_bench_gpu.{json,md,png} (traditional vs shared vs isolated under the mixed workload:
# Qwen2.5-7B-shape LLM and SD 1.5-shape images with random weights, espeak TTS on CPU cores).
# Each part has its own time limit (T_TESTS, T_SHARING, T_BENCH seconds), so one that hangs
# cannot take the time of the others.
set -uo pipefail
OUT=${OUT:-bench/results}
PARTS=${PARTS:-tests,sharing,bench}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

if [ -n "${WHEELS:-}" ]; then
    # --target and PYTHONPATH rather than a venv: the system Python's CUDA torch stays visible.
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/ris-site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH="/tmp/ris-site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
    $PY -m pip install -q -e ".[image,transformers,bench,test]" espeakng-loader nvidia-ml-py || exit 1
fi
$PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() else 1)" || exit 1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import sys, torch, transformers, diffusers; print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
  nproc; free -g | head -2; } 2>&1 | tee "$OUT/gpu_machine.txt"

case ",$PARTS," in *,tests,*)
    # Warnings stay visible but do not fail the run: this machine's library versions differ
    # from the ones CI pins, and a deprecation notice is not a GPU defect.
    timeout "${T_TESTS:-180}" $PY -m pytest tests/gpu -v -p no:cacheprovider \
        -W default::DeprecationWarning -W default::FutureWarning -W default::UserWarning \
        2>&1 | tee "$OUT/gpu_tests.txt"
esac
case ",$PARTS," in *,sharing,*)
    timeout "${T_SHARING:-300}" $PY bench/gpu_image_sharing.py --window-s "${WINDOW_S:-12}" \
        --extra-policies "${EXTRA_POLICIES:-}" --out "$OUT/gpu_image_sharing.json" 2>&1 \
        | tee "$OUT/gpu_image_sharing.log" | tail -25
esac
case ",$PARTS," in *,bench,*)
    timeout "${T_BENCH:-300}" $PY -m ris bench --gpu --tts-model espeak \
        --repetitions "${REPETITIONS:-1}" --duration "${DURATION:-10}" ${BENCH_CONFIGS:+--configs "$BENCH_CONFIGS"} \
        --out "$OUT" 2>&1 | tail -40
esac
exit 0
