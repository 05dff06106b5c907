"""What a model switch costs in an LLM lane: evict one model and load another, against a cold
load into an empty lane. Goal (issue 21): a switch costs at most 1.5x a cold load.

Two views, each repeated with the two kinds of measurement alternated, medians and ranges:

* worker: the worker's own ModelCache (ris.runtime.model_cache) with the real llama.cpp
  backend, in one process pinned to core 0 with one thread, as the LLM lane's worker is. A cold
  load fills an empty cache; a switch asks for model B while A is resident under a budget that
  holds one (A is closed, then B loads). The embedded SmolLM2 GGUF under two names.
* service: a real server with that lane; a 1-token request to the resident model, and one to
  the other model (the request waits for the switch). Their difference is what a client pays.

    python bench/model_switch.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ris.lanes.llm import SMOLLM2_SOURCE
from ris.launch import ServiceProcess

ROOT = Path(__file__).resolve().parents[1]
N_CTX = 2048
PARALLEL = 4  # the LLM lane's default
BUDGET_MB = 400  # one model: 92 MiB weights + 180 MiB KV (4 x 2048) + 48 MiB margin = 320 MiB


def _model() -> dict[str, Any]:
    return {"backend": "llama_cpp", "source": SMOLLM2_SOURCE, "options": {"n_ctx": N_CTX}}


def _lane() -> dict[str, Any]:
    return {
        "cores": [0],
        "threads": 1,
        "parallel": PARALLEL,
        "memory_limit_mb": 2048,
        "memory_budget_mb": BUDGET_MB,
        "default_model": "a",
        "models": {"a": _model(), "b": _model()},
    }


def _worker_side(conn: Any, repeats: int) -> None:
    """In its own process, bound as the lane's worker: cold loads and switches, alternated."""
    os.sched_setaffinity(0, {0})
    from ris.config import LaneConfig
    from ris.lanes.base import BackendContext, load_backend
    from ris.lanes.llm import LANE
    from ris.runtime.model_cache import ModelCache

    cfg = LaneConfig.model_validate(_lane())
    ctx = BackendContext(device="cpu", threads=1, data_dir=Path(tempfile.gettempdir()), parallel=PARALLEL)

    def construct(name: str) -> Any:
        return load_backend(LANE.backend_target("llama_cpp"), "llama_cpp")(cfg.models[name], ctx)

    def rss() -> int:
        status = Path(f"/proc/{os.getpid()}/status").read_text()
        return int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS")).split()[1]) * 1024

    sent: list[object] = []
    cold, switch = [], []
    margin: dict[str, float] = {}
    for i in range(repeats + 1):  # the first round warms the page cache and the library
        for kind in ("cold", "switch") if i % 2 == 0 else ("switch", "cold"):
            cache = ModelCache(cfg, "cpu", None, construct, sent.append)
            if kind == "cold":
                before = rss()
                t0 = time.perf_counter()
                cache.get("a")
                took = time.perf_counter() - t0
                if not margin:  # the process's first load: what loading adds to its memory,
                    # less weights and KV cache, is the working margin GGUF_MARGIN_BYTES keeps
                    from ris.memory.footprint import model_footprint

                    fp = model_footprint(cfg.models["a"], PARALLEL)
                    assert fp is not None
                    grown = rss() - before
                    margin = {
                        "rss_growth_mib": grown / 2**20,
                        "margin_mib": (grown - fp.weights - fp.kv) / 2**20,
                    }
            else:
                cache.get("a")
                t0 = time.perf_counter()
                cache.get("b")  # evicts a, then loads b
                took = time.perf_counter() - t0
                assert list(cache.models) == ["b"]
            cache.close()
            if i:
                (cold if kind == "cold" else switch).append(took)
    conn.send({"cold_s": cold, "switch_s": switch, "first_load": margin})


def _one_token(http: httpx.Client, model: str) -> float:
    body = {"prompt": "Hello", "model": model, "max_tokens": 1, "temperature": 0}
    t0 = time.perf_counter()
    r = http.post("/api/llm/generate", json=body)
    r.raise_for_status()
    return time.perf_counter() - t0


def _service_side(repeats: int) -> dict[str, list[float]]:
    resident, switched = [], []
    with tempfile.TemporaryDirectory(prefix="ris-switch-") as tmp:
        cfg = {"data_dir": str(Path(tmp) / "data"), "server": {"port": 0}, "lanes": {"llm": _lane()}}
        svc = ServiceProcess(Path(tmp), cfg).start()
        try:
            with httpx.Client(base_url=svc.url, timeout=300) as http:
                current = "a"
                _one_token(http, current)  # warm-up
                for i in range(repeats):
                    for kind in ("resident", "switch") if i % 2 == 0 else ("switch", "resident"):
                        if kind == "switch":
                            current = "b" if current == "a" else "a"
                            switched.append(_one_token(http, current))
                        else:
                            resident.append(_one_token(http, current))
                stats = http.get("/api/stats").json()["lanes"]["llm"]["models"]
                assert stats["evictions"] >= repeats, stats
        finally:
            svc.stop()
    return {"resident_request_s": resident, "switch_request_s": switched}


def _machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.machine(),
    )
    gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{len(os.sched_getaffinity(0))} cores, {cpu}, {gib:.0f} GiB, no GPU"


def _summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=str(ROOT / "bench/results/model_switch.json"))
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker_side, args=(child, args.repeats))
    proc.start()
    worker = parent.recv()
    proc.join(60)
    service = _service_side(args.repeats)
    cold, switch = worker["cold_s"], worker["switch_s"]
    ratios = [s / c for s, c in zip(switch, cold, strict=True)]
    extra = [s - r for s, r in zip(service["switch_request_s"], service["resident_request_s"], strict=True)]
    row = {
        "machine": _machine(),
        "load_average_at_end": os.getloadavg()[0],  # the machine is shared: how busy it was
        "model": "SmolLM2-135M-Instruct Q4_1 (embedded) under two names",
        "n_ctx": N_CTX,
        "parallel": PARALLEL,
        "memory_budget_mb": BUDGET_MB,
        "repeats": args.repeats,
        "worker_cold_load_s": _summary(cold),
        "worker_switch_s": _summary(switch),
        "ratio_switch_over_cold": _summary(ratios),
        # resident memory the first load added, and that less weights and KV cache (the margin)
        "first_load_memory": worker["first_load"],
        "service_request_resident_model_s": _summary(service["resident_request_s"]),
        "service_request_with_switch_s": _summary(service["switch_request_s"]),
        "service_switch_extra_s": _summary(extra),
        "raw": {**worker, **service},
    }
    print(json.dumps({k: v for k, v in row.items() if k != "raw"}, indent=1))
    Path(args.out).write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
