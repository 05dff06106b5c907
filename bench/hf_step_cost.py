"""Where a Hugging Face LLM's decode step goes on a GPU: the LLM lane's transformers backend
(its continuous-batching engine and RIS's per-request sampling) under engine settings, side by
side in one run.

The H200 run of 2026-12-04 decoded a Qwen2.5-1.5B shape at 73-80 ms per token through RIS and
transformers' engine called directly at 32 ms per token for a 0.5B shape: per-step overhead,
not the GPU's arithmetic. This measures, for each setting, one stream's decode tokens/s greedy
and sampled (sampled rows draw RIS's seeded Gumbel noise over the vocabulary) and 8 streams'
aggregate tokens/s:

    setting                         | 1 stream greedy | 1 stream sampled | 8 streams
    engine defaults                 |                 |                  |
    cuda_graphs: true               |                 |                  |
    compile_level: 1                |                 |                  |

Each setting runs in its own process with a time limit (a compile can take minutes), so one
that hangs costs only its own share.

    python bench/hf_step_cost.py                     # on a GPU machine
    python bench/hf_step_cost.py --smoke             # tiny shape on CPU: checks the script
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SETTINGS: dict[str, dict[str, Any]] = {
    "engine defaults": {},
    "cuda_graphs: true": {"cuda_graphs": True},
    "compile_level: 1": {"compile_level": 1},
}


def measure(shape: str, device: str, options: dict[str, Any], tokens: int, conn: Any) -> None:
    """In a child process: load the backend with `options`, then time decodes."""
    from ris.backends import BackendContext, backend_class
    from ris.config import ModelSpec
    from ris.lanes import Lane
    from ris.lanes.llm import LLMRequest, TextCollector

    started = time.perf_counter()
    opts = {"dtype": "bfloat16" if device != "cpu" else "float32", **options}
    spec = ModelSpec(backend="transformers", load_format="dummy", source=shape, options=opts)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = BackendContext(device, 4, Path(tmp), parallel=8)
        llm: Any = backend_class(Lane.LLM, "transformers")(spec, ctx)
        load_s = time.perf_counter() - started
        prompt = "please " * 18  # ~128 tokens with the dummy byte tokenizer

        def one(temperature: float, seed: int) -> float:
            req = LLMRequest(
                prompt=prompt, max_tokens=tokens, ignore_eos=True, temperature=temperature, seed=seed
            )
            t = time.perf_counter()
            res = llm.generate(req, TextCollector())
            return float(res.completion_tokens / (time.perf_counter() - t))

        one(0.0, 0)  # warm-up: kernels, graphs, compiles
        greedy = [one(0.0, i) for i in range(3)]
        sampled = [one(0.7, i) for i in range(3)]
        # 8 at once on the backend's batch, stepped as the lane's runner steps it.
        batch = llm.batch()
        t = time.perf_counter()
        for i in range(8):
            req = LLMRequest(prompt=prompt, max_tokens=tokens, ignore_eos=True, temperature=0.7, seed=100 + i)
            batch.add(f"s{i}", req, TextCollector())
        ended = 0
        while ended < 8:
            ended += len(batch.step())
        aggregate = 8 * tokens / (time.perf_counter() - t)
        llm.close()
    conn.send(
        {
            "load_s": load_s,
            "greedy_tok_s": statistics.median(greedy),
            "sampled_tok_s": statistics.median(sampled),
            "streams8_tok_s": aggregate,
        }
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shape on CPU (checks the script)")
    p.add_argument("--shape", default="qwen2.5-1.5b")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--limit-s", type=float, default=90.0, help="per setting")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--out", default="bench/results/hf_step_cost.json")
    args = p.parse_args()
    device = "cpu" if args.smoke else "cuda:0"
    shape = "tiny" if args.smoke else args.shape
    rows: dict[str, Any] = {}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    for name in args.settings.split(","):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=measure, args=(shape, device, SETTINGS[name], args.tokens, child))
        proc.start()
        row: dict[str, Any] = {"error": f"no answer within {args.limit_s:.0f} s"}
        if parent.poll(args.limit_s):
            try:
                row = parent.recv()
            except EOFError:
                row = {"error": f"the process died (exit {proc.exitcode})"}
        proc.join(5)
        if proc.is_alive():
            proc.kill()
        rows[name] = row
        print(name, json.dumps(row), flush=True)
        out.write_text(
            json.dumps({"shape": shape, "device": device, "tokens": args.tokens, "rows": rows}, indent=1)
        )
    print("\n| setting | 1 stream greedy tok/s | 1 stream sampled tok/s | 8 streams tok/s | load s |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        if "error" in r:
            print(f"| {name} | {r['error']} | | | |")
        else:
            print(
                f"| {name} | {r['greedy_tok_s']:.1f} | {r['sampled_tok_s']:.1f} | "
                f"{r['streams8_tok_s']:.1f} | {r['load_s']:.1f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
