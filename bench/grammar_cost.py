"""What grammar-constrained decoding costs: tokens/s of a json_schema request vs an unconstrained
one of the same length, through the service (/v1/chat/completions, SmolLM2-135M on its lane).

Same prompt and max_tokens on both sides. The plain side ignores end-of-sequence; the
constrained side's schema is an array of at least 64 objects (nested, with an enum and an
array), which no answer can finish within max_tokens, so both stop at exactly max_tokens
(`finish_reason: length`, checked). Two shapes: one request alone, and `--parallel` requests
at once (the continuous batch, every sequence with its own grammar or none). Rounds alternate
which side goes first; the ratio per round is constrained/plain; median and range reported.
Goal: constrained >= 0.8x plain.

    python bench/grammar_cost.py [--rounds 5] [--tokens 128] [--parallel 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from ris.launch import ServiceProcess

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "List the people who live on Maple Street as JSON, with name, age, job and hobbies."
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer"},
        "job": {"enum": ["baker", "teacher", "nurse", "pilot"]},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["name", "age", "job", "hobbies"],
}
# No answer completes 64 people in max_tokens: the constrained side runs to the same length.
SCHEMA = {"type": "array", "items": PERSON, "minItems": 64}


def body(constrained: bool, tokens: int, seed: int) -> dict[str, Any]:
    b: dict[str, Any] = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0.7,
        "seed": seed,
    }
    if constrained:
        b["response_format"] = {"type": "json_schema", "json_schema": {"name": "street", "schema": SCHEMA}}
    else:
        b["ignore_eos"] = True
    return b


def one(http: httpx.Client, constrained: bool, tokens: int, seed: int) -> int:
    r = http.post("/v1/chat/completions", json=body(constrained, tokens, seed))
    r.raise_for_status()
    out = r.json()
    assert out["choices"][0]["finish_reason"] == "length", out
    n = int(out["usage"]["completion_tokens"])
    assert n == tokens, out["usage"]
    if constrained:  # what came back is the start of the array the grammar allows
        assert out["choices"][0]["message"]["content"].startswith("[")
    return n


def rate(
    http: httpx.Client, pool: ThreadPoolExecutor, constrained: bool, tokens: int, parallel: int
) -> float:
    """Generated tokens per second, all `parallel` requests together."""
    t0 = time.perf_counter()
    counts = list(pool.map(lambda i: one(http, constrained, tokens, seed=i), range(parallel)))
    return sum(counts) / (time.perf_counter() - t0)


def summary(ratios: list[float]) -> dict[str, float]:
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--parallel", type=int, default=4, help="requests at once in the batched shape")
    p.add_argument("--note", default="", help="recorded with the figures (e.g. the machine was shared)")
    p.add_argument("--out", default=str(ROOT / "bench/results/grammar_cost.json"))
    args = p.parse_args()
    cfg = json.loads((ROOT / "config.json").read_text())
    for lane in ("image", "tts"):  # measure the LLM lane, not the machine's other work
        cfg["lanes"][lane]["enabled"] = False
    cfg["lanes"]["llm"]["parallel"] = max(args.parallel, cfg["lanes"]["llm"].get("parallel", 1))
    result: dict[str, Any] = {"tokens": args.tokens, "rounds": args.rounds, "note": args.note}
    with tempfile.TemporaryDirectory(prefix="ris-grammar-") as tmp:
        cfg = {**cfg, "data_dir": str(Path(tmp) / "data"), "server": {"port": 0}}
        svc = ServiceProcess(Path(tmp), cfg).start()
        try:
            with (
                httpx.Client(base_url=svc.url, timeout=600) as http,
                ThreadPoolExecutor(args.parallel) as pool,
            ):
                for shape, n in (("alone", 1), ("batched", args.parallel)):
                    rate(http, pool, True, 16, n)  # warm-up: prompt cache, first grammar
                    rate(http, pool, False, 16, n)
                    plain: list[float] = []
                    constrained: list[float] = []
                    for i in range(args.rounds):
                        for side in (True, False) if i % 2 == 0 else (False, True):
                            (constrained if side else plain).append(rate(http, pool, side, args.tokens, n))
                    ratios = [c / u for c, u in zip(constrained, plain, strict=True)]
                    result[shape] = {
                        "requests_at_once": n,
                        "plain_tok_s": plain,
                        "json_schema_tok_s": constrained,
                        "ratio_json_schema_over_plain": summary(ratios),
                        "goal": 0.8,
                        "met": statistics.median(ratios) >= 0.8,
                    }
                    print(shape, json.dumps(result[shape]["ratio_json_schema_over_plain"]), flush=True)
        finally:
            svc.stop()
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
