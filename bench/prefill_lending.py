"""Prefill of a fresh ~1,000-token prompt on the LLM lane with the TTS lane idle: the lane on
its own core 0 (no lending), on core 0 borrowing TTS's idle core 1 (config.json's
`borrow_idle_cores`), and owning both cores (the ceiling). Goal: lending within 1.15x of
owning both cores (issue 26; without lending it was 1.64x).

Each configuration is a worker-like process bound as a lane's worker is (ris.runtime.binding),
running the lane's real runner (LLMRunner) on SmolLM2-135M (llama.cpp) with `parallel` 1; the
lending one reads a real activity board on which the TTS lane is idle, so its runner widens
through ris.runtime.lending before the first decode. The three processes are started once and
take turns, one prompt at a time, rotating which goes first each round; each prompt is new
(a different first sentence), so no prefix cache helps. Time: the runner's whole task with
max_tokens 1 (prefill and one sampled token). Ratios per round against "owns both"; median
and range.

    python bench/prefill_lending.py [--rounds 5] [--out bench/results/prefill_lending.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS: dict[str, dict[str, Any]] = {
    "own core 0": {"cores": (0,), "threads": 1, "lend": False},
    "core 0 + lent core 1": {"cores": (0,), "threads": 1, "lend": True},
    "owns cores 0,1": {"cores": (0, 1), "threads": 2, "lend": False},
}
SENTENCE = "The keeper of the lighthouse wrote down every ship that passed the rocks that night. "


def prompt(round_no: int, name: str) -> str:
    return f"Log {round_no} of {name}, page {round_no * 7 + len(name)}. " + SENTENCE * 60


def child(name: str, conn: Connection, wait_policy: str | None) -> None:
    spec = CONFIGS[name]
    from ris.runtime.binding import Binding, apply_binding

    apply_binding(Binding(cores=spec["cores"], threads=spec["threads"], nice=0, gpu=None))
    if wait_policy is not None:  # libgomp reads it when llama.cpp loads, below
        os.environ["OMP_WAIT_POLICY"] = wait_policy
    from ris.backends.llm_llama_cpp import LlamaCppLLM
    from ris.lanes.base import BackendContext, WorkerEnv
    from ris.lanes.llm import LANE, LLMRequest, LLMRunner
    from ris.preemption.board import ActivityBoard
    from ris.preemption.lending import Borrower, Lender, LendingPolicy
    from ris.runtime.lending import CoreLending, thread_affinities

    lending = None
    if spec["lend"]:
        board = ActivityBoard(["llm", "tts"])  # the TTS slot stays IDLE: its core is lent
        policy = LendingPolicy(spec["cores"], (Lender("tts", (1,)),))
        lending = CoreLending(Borrower(policy, board.reader(["tts"]), time.monotonic), spec["threads"])
    model = LANE.embedded_models["smollm2"].model_copy(update={"options": {"n_ctx": 2048}})
    ctx = BackendContext(device="cpu", threads=spec["threads"], data_dir=Path("/tmp"), parallel=1)
    backend = LlamaCppLLM(model, ctx)
    env = WorkerEnv("llm", lambda _msg: None, lambda _a: None, lambda: None, None, 1, lending)
    runner = LLMRunner(env)
    conn.send("ready")
    while (round_no := conn.recv()) is not None:
        req = LLMRequest(prompt=prompt(round_no, name), max_tokens=1, temperature=0.0)
        tokens = len(backend.batch()._tokenize(req)[0])  # noqa: SLF001 - the prompt's size, reported
        start = time.perf_counter()
        runner.run(backend, f"r{round_no}", req, lambda: False)
        elapsed = time.perf_counter() - start
        cores = sorted({c for cs in thread_affinities(os.getpid()).values() for c in cs})
        conn.send(
            {
                "seconds": elapsed,
                "prompt_tokens": tokens,
                "threads_now": lending.threads if lending else spec["threads"],
                "cores_after": cores,
            }
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--omp-wait-policy",
        choices=["PASSIVE", "ACTIVE"],
        default=None,
        help="override the binding's OMP_WAIT_POLICY in all three (default: as the binding sets it)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prefill_lending.json")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    conns: dict[str, Connection] = {}
    procs = []
    for name in CONFIGS:
        parent, mine = ctx.Pipe()
        p = ctx.Process(target=child, args=(name, mine, args.omp_wait_policy), daemon=True)
        p.start()
        procs.append(p)
        conns[name] = parent
    for c in conns.values():
        assert c.recv() == "ready"
    names = list(CONFIGS)
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % 3 :] + names[: r % 3]
        for name in order:
            conns[name].send(r)
            rows[name].append(conns[name].recv())
        print(f"round {r}: " + ", ".join(f"{n} {rows[n][-1]['seconds']:.2f}s" for n in names), flush=True)
    for c in conns.values():
        c.send(None)
    for p in procs:
        p.join(30)
    ceiling = "owns cores 0,1"
    summary: dict[str, Any] = {}
    for name in names:
        secs = [x["seconds"] for x in rows[name]]
        ratios = [x["seconds"] / y["seconds"] for x, y in zip(rows[name], rows[ceiling], strict=True)]
        summary[name] = {
            "prefill_s_median": statistics.median(secs),
            "prefill_s_range": [min(secs), max(secs)],
            "vs_owning_both_median": statistics.median(ratios),
            "vs_owning_both_range": [min(ratios), max(ratios)],
            "prompt_tokens": rows[name][0]["prompt_tokens"],
            "threads_now": rows[name][-1]["threads_now"],
        }
    result = {
        "benchmark": "prefill of a fresh ~1,000-token prompt, TTS idle (issue 26 item 3)",
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, shared with "
        "other engineers' test runs (load average above 10 during the run)",
        "load_average_at_end": os.getloadavg(),
        "rounds": args.rounds,
        "omp_wait_policy": args.omp_wait_policy or "as ris.runtime.binding sets it",
        "goal": "core 0 + lent core 1 within 1.15x of owning cores 0,1",
        "summary": summary,
        "runs": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, s in summary.items():
        print(
            f"{name:22s} {s['prefill_s_median']:.2f}s  {s['vs_owning_both_median']:.2f}x of owning both "
            f"(range {s['vs_owning_both_range'][0]:.2f}-{s['vs_owning_both_range'][1]:.2f})"
        )


if __name__ == "__main__":
    main()
