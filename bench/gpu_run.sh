#!/usr/bin/env bash
# Every GPU check and benchmark, for a machine with one NVIDIA GPU (H100/H200 class) whose
# Python already has a CUDA build of torch (and transformers).
#
#   bash bench/gpu_run.sh                      # a package index is reachable: pip installs the rest
#   WHEELS=.whl bash bench/gpu_run.sh          # offline: wheels of only what is missing, from a folder
#   PARTS=tests,sharing bash bench/gpu_run.sh  # a subset of: tests, small, plans, step, hf, sharing, bench (default: all), ray
#   WHEELS=.whl-ray PARTS=ray bash bench/gpu_run.sh  # cluster mode on the machine's cores (RAY=1 bash bench/gpu_wheels.sh)
#
# Writes into $OUT (default bench/results): gpu_machine.txt, gpu_tests.txt (pytest tests/gpu),
# gpu_hf_serve.{json,md} (RIS's LLM lane beside `transformers serve` on the same card, 1/8/32
# users, bench/hf_serve_compare.py), gpu_image_sharing_rN.json (LLM latency vs image throughput
# per preemption policy, REPS_SHARING repetitions), gpu_small_card.json (an 8 GB card emulated
# by lane budgets: 1.5B-shape LLM and SD 1.5-shape images side by side, and a model switch;
# bench/gpu_small_card.py), gpu_fit_plans.json (SD 1.5 resident, with model offload and with
# sequential offload: load and seconds per image; bench/gpu_fit_plans.py), hf_step_cost.json
# (a transformers LLM's decode under engine settings: defaults, CUDA graphs, compile;
# bench/hf_step_cost.py), gpu_test_figures.jsonl (what tests/gpu measured) and
# ris_bench_gpu.{json,md,png} (traditional vs shared vs isolated under the mixed workload:
# Qwen2.5-7B-shape LLM and SD 1.5-shape images with random weights, espeak TTS on CPU cores);
# the `ray` part, not in the default set (its own call: Ray is carried apart), writes
# ray_replicas_gpu_machine.{json,log} (bench/ray_replicas.py with espeak).
# Each part has its own time limit (T_TESTS, T_SMALL, T_PLANS, T_STEP, T_HF, T_SHARING, T_BENCH
# seconds: 120 + 150 + 150 + 200 + 150 + 210 + 120 = 1,100 s by default; T_RAY 300 for `ray`), more than one 600 s
# device call: choose PARTS or lower the limits to fit the call), so one that hangs cannot take
# the time of the others; each writes what it has even when it fails or runs out of time.
set -uo pipefail
OUT=${OUT:-bench/results}
PARTS=${PARTS:-tests,small,plans,step,hf,sharing,bench}
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
  $PY -c "import sys, importlib.util as u, importlib.metadata as m; print('python', sys.version.split()[0], *(f'{p} {m.version(p)}' if u.find_spec(p) else f'{p} absent' for p in ('torch', 'transformers', 'diffusers', 'ray')))"
  nproc; free -g | head -2; } 2>&1 | tee "$OUT/gpu_machine.txt"

case ",$PARTS," in *,tests,*)
    # Warnings stay visible but do not fail the run: this machine's library versions differ
    # from the ones CI pins, and a deprecation notice is not a GPU defect.
    RIS_GPU_FIGURES="$OUT/gpu_test_figures.jsonl" timeout "${T_TESTS:-120}" $PY -m pytest ${GPU_TESTS:-tests/gpu} -v -p no:cacheprovider \
        -W default::DeprecationWarning -W default::FutureWarning -W default::UserWarning \
        2>&1 | tee "$OUT/gpu_tests.txt"
esac
case ",$PARTS," in *,plans,*)
    # Each image fit plan's cost: SD 1.5 resident, with model offload, with sequential offload.
    # A third each of what the script's own start (imports, the meta build) leaves.
    timeout "${T_PLANS:-150}" $PY bench/gpu_fit_plans.py --limit-s "$(( (${T_PLANS:-150} - 20) / 3 ))" \
        --out "$OUT/gpu_fit_plans.json" 2>&1 | tee "$OUT/gpu_fit_plans.log" | tail -8
esac
case ",$PARTS," in *,step,*)
    timeout "${T_STEP:-200}" $PY bench/hf_step_cost.py --limit-s "$(( ${T_STEP:-200} / 3 ))" \
        --out "$OUT/hf_step_cost.json" 2>&1 | tee "$OUT/hf_step_cost.log" | tail -8
esac
case ",$PARTS," in *,hf,*)
    # Same random-weight 0.5B-shape folder for both; 3 repeats, order alternating.
    timeout "${T_HF:-150}" $PY bench/hf_serve_compare.py --repeats "${REPS_HF:-3}" \
        --max-tokens "${HF_TOKENS:-64}" ${HF_PARALLEL:+--ris-parallel "$HF_PARALLEL"} \
        --out "$OUT/gpu_hf_serve.json" 2>&1 | tee "$OUT/gpu_hf_serve.log" | tail -20
esac
case ",$PARTS," in *,small,*)
    timeout "${T_SMALL:-150}" $PY bench/gpu_small_card.py --window-s "${WINDOW_SMALL:-10}" \
        --out "$OUT/gpu_small_card.json" 2>&1 | tee "$OUT/gpu_small_card.log" | tail -14
esac
case ",$PARTS," in *,sharing,*)
    # Repetitions as separate runs, each bounded: a slow one costs its own share only.
    REPS=${REPS_SHARING:-3}
    for r in $(seq 1 "$REPS"); do
        timeout "$(( ${T_SHARING:-210} / REPS ))" $PY bench/gpu_image_sharing.py --window-s "${WINDOW_S:-6}" \
            --extra-policies "${EXTRA_POLICIES:-}" --out "$OUT/gpu_image_sharing_r$r.json" 2>&1 \
            | tee "$OUT/gpu_image_sharing_r$r.log" | tail -12
    done
esac
case ",$PARTS," in *,ray,*)
    # Cluster mode on this machine's cores (issue 25): 2 TTS replicas vs 1 on nodes whose
    # workers each find a core of their own, and the latency the Ray path adds. Ray from the
    # stripped bundle bench/gpu_wheels.sh makes with RAY=1 when this Python has none.
    if ! $PY -c "import ray" 2>/dev/null; then
        bundle=$(ls "${WHEELS:-.whl-ray}"/ray-*-stripped.tar.xz 2>/dev/null | head -1)
        if [ -n "$bundle" ]; then
            mkdir -p /tmp/ris-ray && tar -xJf "$bundle" -C /tmp/ris-ray
            export PYTHONPATH="/tmp/ris-ray${PYTHONPATH:+:$PYTHONPATH}"
        fi
    fi
    timeout "${T_RAY:-300}" $PY bench/ray_replicas.py --tts-model espeak --rounds "${REPS_RAY:-3}" \
        --requests "${RAY_REQUESTS:-32}" --clients "${RAY_CLIENTS:-4}" \
        --out "$OUT/ray_replicas_gpu_machine.json" 2>&1 | tee "$OUT/ray_replicas_gpu_machine.log" | tail -12
esac
case ",$PARTS," in *,bench,*)
    timeout "${T_BENCH:-120}" $PY -m ris bench --gpu --tts-model espeak \
        --repetitions "${REPETITIONS:-1}" --duration "${DURATION:-10}" ${BENCH_CONFIGS:+--configs "$BENCH_CONFIGS"} \
        --out "$OUT" 2>&1 | tail -40
esac
exit 0
