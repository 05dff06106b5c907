"""RIS's LLM lane on a Hugging Face model beside `transformers serve`, on the same device (issue 22).

Both serve the same folder: a Qwen2.5-shape model with random weights (seed 0, saved once
with `save_pretrained`) and a byte-level tokenizer with a chat template, so timings are real
and the text is noise. Both run transformers' continuous-batching engine; what differs is the
serving around it (RIS: a worker process per lane, per-request sampling, its scheduler).

- the peer: `transformers serve FOLDER --continuous-batching --host 127.0.0.1 --port P`
  (its defaults otherwise: device auto, dtype auto), plus `--cb-num-blocks N` giving it the
  same KV cache as RIS's (its default takes 90% of a GPU's free memory, which would leave
  nothing for RIS's server while both are up; on a CPU, 60% of RAM);
- RIS: only its LLM lane, the model with `source: FOLDER`, `parallel` = the largest level
  (--ris-parallel overrides; the shipped 8 would queue 24 of 32 users, which the peer, batching
  up to 1,024, does not: that would compare settings, not serving), on the GPU or every core;
- the engine called directly (its manager started once, one request at a time, its own
  sampling at temperature 0.7 / top_p 0.95): the single-user ceiling.

Workload: a burst of N streamed chat completions (a different question each; temperature 0.7,
top_p 0.95, `max_tokens` M) for N in --levels; figures: aggregate tokens/s, TTFT p50/p99 and
inter-token p99. Every figure is measured for both within a repeat, the order alternating; the
ratios (RIS / peer) are taken within a repeat, then their median and range.

    python bench/hf_serve_compare.py                     # GPU if there is one: 0.5B shape, 1/8/32 users
    python bench/hf_serve_compare.py --quick             # CPU smoke run: tiny shape, 1/4 users
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_concurrency import Stream, Target, cell, new_client, pct, stop_process, wait_http_ok  # noqa: E402

from ris.benchmark.run import machine_summary  # noqa: E402
from ris.benchmark.summary import ratio, spread  # noqa: E402
from ris.launch import ServiceProcess, free_port  # noqa: E402

RIS, PEER = "ris", "transformers-serve"
SYSTEMS = (RIS, PEER)
PAGE = 256
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def log(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------------------------
# The model folder both serve


def make_folder(shape: str, dtype: str, folder: Path, device: str = "cpu") -> None:
    """A random-weight Qwen2 of `shape` and a byte-level tokenizer as large as its vocabulary
    (the extra entries: three-letter tokens, so any id the random model picks decodes)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from ris.backends.llm_transformers import DUMMY_SHAPES

    dims = DUMMY_SHAPES[shape]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab: dict[str, int] = {}
    for ch in pre_tokenizers.ByteLevel.alphabet():
        vocab[ch] = len(vocab)
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    need = dims["vocab_size"] - len(specials)
    for a in letters:
        for b in letters:
            for c in letters:
                if len(vocab) >= need:
                    break
                vocab.setdefault(a + b + c, len(vocab))
    for s in specials:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )
    fast.save_pretrained(folder)
    cfg = Qwen2Config(
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        eos_token_id=vocab["<|im_end|>"],
        torch_dtype=dtype,
        **dims,  # type: ignore[arg-type]
    )
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    model.generation_config.eos_token_id = vocab["<|im_end|>"]
    model.save_pretrained(folder)


# ---------------------------------------------------------------------------------------------
# The servers


@contextmanager
def peer_server(
    folder: Path, device: str, num_blocks: int, cores: str | None, work: Path
) -> Iterator[Target]:
    port = free_port()
    cmd = [
        *(("taskset", "-c", cores) if cores else ()),
        sys.executable,
        "-c",
        "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; main()",
        *("serve", str(folder), "--continuous-batching", "--host", "127.0.0.1", "--port", str(port)),
        *("--cb-num-blocks", str(num_blocks)),
    ]
    log(
        "peer: transformers "
        + " ".join(cmd[cmd.index("serve") :])
        + (f" (taskset -c {cores})" if cores else "")
    )
    log_path = work / "transformers-serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log_path.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", proc, log_path, timeout=600)
        yield Target(PEER, f"http://127.0.0.1:{port}", str(folder))
    finally:
        stop_process(proc)


@contextmanager
def ris_server(
    folder: Path, device: str, parallel: int | None, kv_tokens: int, work: Path
) -> Iterator[Target]:
    llm: dict[str, Any] = {
        "max_queue": 256,
        "default_model": "dummy",
        "models": {
            "dummy": {
                "backend": "transformers",
                "source": str(folder),
                "options": {"kv_cache_tokens": kv_tokens},
            }
        },
    }
    if device.startswith("cuda"):
        llm["device"] = "cuda:0"
    else:
        llm["cores"] = sorted(os.sched_getaffinity(0))
        llm["threads"] = len(llm["cores"])
    if parallel is not None:
        llm["parallel"] = parallel
    cfg = {"server": {"port": 0}, "data_dir": str(work / "data"), "lanes": {"llm": llm}}
    svc = ServiceProcess(work, cfg)
    svc.start(timeout=600)
    try:
        yield Target(RIS, svc.url, "dummy")
    finally:
        svc.stop()


# ---------------------------------------------------------------------------------------------
# The workload


def body(target: Target, i: int, tag: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": target.model,
        "messages": [{"role": "user", "content": f"[{tag}-{i}] Tell me about topic number {i}."}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "top_p": 0.95,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def stream_one(client: httpx.AsyncClient, target: Target, payload: dict[str, Any]) -> Stream:
    s = Stream(t_sent=time.perf_counter())
    async with client.stream("POST", f"{target.url}/v1/chat/completions", json=payload) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{target.name}: HTTP {r.status_code}: {(await r.aread())[:500]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            chunk = json.loads(line[5:])
            for choice in chunk.get("choices") or []:
                if text := (choice.get("delta") or {}).get("content"):
                    s.content_times.append(time.perf_counter())
                    s.text += text
            if usage := chunk.get("usage"):
                s.completion_tokens = usage.get("completion_tokens")
    s.t_end = time.perf_counter()
    if s.completion_tokens is None:
        s.completion_tokens = len(s.content_times)  # a server that sends no usage: its chunks
    return s


async def burst(target: Target, n: int, tag: str, max_tokens: int) -> dict[str, float]:
    async with new_client() as client:
        t0 = time.perf_counter()
        streams = await asyncio.gather(
            *(stream_one(client, target, body(target, i, tag, max_tokens)) for i in range(n))
        )
        wall = max(s.t_end for s in streams) - t0
    # A random-weight model may end a stream at once (its end token sampled first: seen once in
    # CI, on RIS's side); a burst with no text at all is a broken server.
    answered = [s for s in streams if s.content_times]
    if not answered:
        raise RuntimeError(f"{target.name}: every stream of the burst ended without text")
    ttfts = [s.ttft for s in answered]
    gaps = [g for s in answered for g in s.gaps] or [0.0]
    return {
        "tok_s": sum(s.completion_tokens or 0 for s in streams) / wall,
        "ttft_p50": pct(ttfts, 50),
        "ttft_p99": pct(ttfts, 99),
        "itl_p99": pct(gaps, 99),
        "tokens": statistics.median(s.completion_tokens or 0 for s in streams),
    }


def direct_engine(folder: Path, device: str, num_blocks: int, max_tokens: int, rounds: int) -> list[float]:
    """tokens/s of one request at a time through transformers' engine in this process (its
    manager started once, as a server keeps it; its own sampling, temperature 0.7, top_p 0.95)."""
    import torch
    from transformers import AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig

    dev = "cuda:0" if device.startswith("cuda") else "cpu"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto", local_files_only=True).to(dev).eval()
    gen = GenerationConfig(
        do_sample=True, temperature=0.7, top_p=0.95, max_new_tokens=max_tokens, eos_token_id=-1
    )
    engine = model.init_continuous_batching(
        generation_config=gen, continuous_batching_config=ContinuousBatchingConfig(num_blocks=num_blocks)
    )
    engine.start()
    out = []
    try:
        for r in range(rounds + 1):
            t0 = time.perf_counter()
            rid = engine.add_request([5 + r, 6, 7, 8, 9, 10], max_new_tokens=max_tokens)
            res = None
            while res is None or not res.is_finished():
                res = engine.get_result(request_id=rid, timeout=60) or res
            dt = time.perf_counter() - t0
            if r:  # the first round warms up
                out.append(len(res.generated_tokens) / dt)
    finally:
        engine.stop(block=True, timeout=30)
    del model
    if dev != "cpu":
        torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", help="DUMMY_SHAPES name (default: qwen2.5-0.5b on a GPU, tiny on CPU)")
    p.add_argument("--levels", default=None, help="concurrent users per burst (default 1,8,32; --quick 1,4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=None, help="default 128 (--quick: 24)")
    p.add_argument(
        "--ris-parallel", type=int, default=None, help="the LLM lane's parallel (default: the top level)"
    )
    p.add_argument("--kv-tokens", type=int, default=None, help="KV cache of both, tokens (default 32 x 2048)")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: 1 repeat, levels 1,4, 24 tokens")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    import torch

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    shape = args.shape or ("qwen2.5-0.5b" if device != "cpu" else "tiny")
    levels = [int(x) for x in (args.levels or ("1,4" if args.quick else "1,8,32")).split(",")]
    repeats = 1 if args.quick else args.repeats
    max_tokens = args.max_tokens or (24 if args.quick else 128)
    dtype = "bfloat16" if device != "cpu" else "float32"
    kv_tokens = args.kv_tokens or 32 * 2048
    num_blocks = -(-kv_tokens // PAGE)
    cores = None if device != "cpu" else ",".join(map(str, sorted(os.sched_getaffinity(0))))
    result: dict[str, Any] = {
        "benchmark": "hf_serve_compare",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_summary(),
        "device": device if device == "cpu" else torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "shape": shape,
        "dtype": dtype,
        "levels": levels,
        "repeats": repeats,
        "max_tokens": max_tokens,
        "kv_cache_tokens": num_blocks * PAGE,
        "ris_parallel": args.ris_parallel or max(levels),
        "repeat_figures": [],
    }
    import transformers

    result["transformers"] = transformers.__version__
    with tempfile.TemporaryDirectory(prefix="ris-hfcmp-") as tmp:
        work = Path(tmp)
        folder = work / "model"
        t0 = time.perf_counter()
        make_folder(shape, dtype, folder)
        log(f"{shape} ({dtype}) written in {time.perf_counter() - t0:.1f} s; device {result['device']}")
        direct = direct_engine(folder, device, num_blocks, max_tokens, rounds=max(2, repeats))
        result["direct_tok_s"] = spread(direct).to_json() if direct else None  # type: ignore[union-attr]
        log(f"engine called directly, 1 request: {statistics.median(direct):.1f} tok/s")
        with (
            peer_server(folder, device, num_blocks, cores, work) as peer,
            ris_server(folder, device, args.ris_parallel or max(levels), num_blocks * PAGE, work) as ris,
        ):
            targets = {RIS: ris, PEER: peer}
            for t in targets.values():
                asyncio.run(burst(t, 2, "warm", 8))
            for rep in range(repeats):
                order = list(SYSTEMS) if rep % 2 == 0 else list(reversed(SYSTEMS))
                figs: dict[str, dict[str, float]] = {name: {} for name in SYSTEMS}
                for n in levels:
                    for name in order:
                        f = asyncio.run(burst(targets[name], n, f"r{rep}c{n}", max_tokens))
                        figs[name].update({f"c{n}.{k}": v for k, v in f.items()})
                        log(
                            f"  repeat {rep + 1} c={n:<2} {name:<18} {f['tok_s']:7.1f} tok/s, "
                            f"TTFT p50 {f['ttft_p50'] * 1000:6.0f} ms, ITL p99 {f['itl_p99'] * 1000:5.0f} ms"
                        )
                result["repeat_figures"].append(
                    {"order": order, "figures": figs, "load_avg_1m": os.getloadavg()[0]}
                )
                if args.out:  # what is measured so far survives a time limit
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(result, indent=2) + "\n")
    keys = [f"c{n}.{k}" for n in levels for k in ("tok_s", "ttft_p50", "ttft_p99", "itl_p99")]
    summary = {}
    reps = result["repeat_figures"]
    for key in keys:
        row = {name: spread(r["figures"][name].get(key) for r in reps) for name in SYSTEMS}
        row["ratio"] = spread(ratio(r["figures"][RIS].get(key), r["figures"][PEER].get(key)) for r in reps)
        summary[key] = {k: (s.to_json() if s else None) for k, s in row.items()}
    result["summary"] = summary
    one = [r["figures"][RIS].get(f"c{levels[0]}.tok_s") for r in reps]
    if direct and levels[0] == 1:
        result["single_user_vs_direct"] = statistics.median(x / statistics.median(direct) for x in one if x)
    lines = [
        f"RIS vs transformers serve {result['transformers']}, {shape} {dtype} on {result['device']}, "
        f"{repeats} repeat(s), {max_tokens} tokens a request",
        "| figure | RIS | transformers serve | RIS / peer |",
        "|---|---|---|---|",
    ]
    for key in keys:
        scale, unit = (1.0, "tok/s") if key.endswith("tok_s") else (1000.0, "ms")
        s = summary[key]
        lines.append(
            f"| {key} ({unit}) | {cell(s[RIS], scale)} | {cell(s[PEER], scale)} "
            f"| {cell(s['ratio'], suffix='x')} |"
        )
    if "single_user_vs_direct" in result:
        lines.append(f"single user, RIS / engine called directly: {result['single_user_vs_direct']:.2f}x")
    log("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
