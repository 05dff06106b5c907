"""What each fit plan of an image pipeline costs on a GPU (issue 21): SD 1.5 (the `dummy` fp16
pipeline, random weights, its real shapes) under three lane budgets, each chosen so the image
backend picks one plan (ris.memory.fit.image_plan), one after the other in this run:

    plan                | budget   | build s | s per 512x512 image, 4 steps | peak allocated
    gpu                 | pipeline + 2 GiB (room for an untiled VAE decode) |
    model_offload       | the largest component with its margin + 64 MiB |
    sequential_offload  | the working margin + 512 MiB |

Each plan runs in a process of its own (torch's allocator cap is per process, and an offloaded
pipeline's hooks stay with it), with a time limit (sequential offload moves every layer for
every step: minutes, not seconds). Every image after the first (kernels, cuDNN's choices) is
timed; median and range.

    python bench/gpu_fit_plans.py                    # on a GPU machine
    python bench/gpu_fit_plans.py --dry-run          # anywhere: the budgets and the plans they give
    python bench/gpu_fit_plans.py --smoke            # the tiny pipeline on the CPU: checks the script
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

MIB = 2**20
PLANS = ("gpu", "model_offload", "sequential_offload")


def budgets(tmp: Path) -> dict[str, int]:
    """The budget that gives each plan, from the pipeline's components as the backend measures
    them (a build on the meta device: no memory, no time)."""
    import torch

    from ris.backends.sd_arch import build_pipeline
    from ris.backends.torch_memory import pipeline_components
    from ris.memory.footprint import torch_footprint

    fp = torch_footprint(pipeline_components(build_pipeline("sd15", tmp / "tok", "meta", torch.float16)))
    largest = max(size for _, size in fp.components)
    return {
        # Resident, the VAE decodes untiled: room for its activations (any budget over the
        # pipeline gives this plan).
        "gpu": fp.total + 2048 * MIB,
        "model_offload": largest + fp.margin + 64 * MIB,
        # Inside its range (the margin up to the largest component with it), not at its edge.
        "sequential_offload": fp.margin + 512 * MIB,
    }


def measure(plan: str, budget: int, images: int, conn: Any, smoke: bool = False) -> None:
    """In a child process: the pipeline under `budget`, built with random weights (timed,
    after diffusers' import and the CUDA context, which every plan pays alike), then one
    untimed image and `images` timed ones. `smoke`: the tiny pipeline on the CPU, no plan."""
    import torch
    from diffusers import AutoPipelineForText2Image  # noqa: F401 - imported before the clock starts

    from ris.backends import BackendContext
    from ris.backends.image_diffusers import DiffusersImage
    from ris.config import ModelSpec
    from ris.lanes.image import DirectRun, ImageRequest

    if not smoke:
        torch.zeros(1, device="cuda")  # the CUDA context, before the clock starts
    with tempfile.TemporaryDirectory() as tmp:
        ctx = BackendContext("cpu" if smoke else "cuda:0", 4, Path(tmp), gpu_budget_bytes=budget)
        started = time.perf_counter()
        spec = ModelSpec(backend="diffusers", load_format="dummy", source="tiny" if smoke else "sd15")
        img = DiffusersImage(spec, ctx)
        build_s = time.perf_counter() - started  # random weights: on the GPU resident, else the host
        placed = img.describe().placement
        if not smoke:
            torch.cuda.reset_peak_memory_stats()
        seconds = []
        for n in range(images + 1):
            t = time.perf_counter()
            img.generate(
                ImageRequest(prompt="a lighthouse", width=512, height=512, steps=4, seed=n), DirectRun()
            )
            if n:  # the first pays for kernels and cuDNN's choices
                seconds.append(time.perf_counter() - t)
            conn.send(
                {"partial": True, "plan": plan, "placed": placed, "build_s": build_s, "seconds": seconds[:]}
            )
        conn.send(
            {
                "plan": plan,
                "placed": placed,
                "budget_mib": budget / MIB,
                "build_s": build_s,
                "seconds": seconds,
                "peak_allocated_mib": 0.0 if smoke else torch.cuda.max_memory_allocated() / MIB,
            }
        )
        img.close()


def run_plan(plan: str, budget: int, images: int, limit_s: float, smoke: bool = False) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=measure, args=(plan, budget, images, child, smoke), daemon=True)
    proc.start()
    last: dict[str, Any] = {"plan": plan, "budget_mib": budget / MIB}
    deadline = time.monotonic() + limit_s
    done = False
    while not done and time.monotonic() < deadline and (proc.is_alive() or parent.poll()):
        if parent.poll(0.5):
            last = {"budget_mib": budget / MIB, **parent.recv()}
            done = not last.get("partial")
    proc.join(15 if done else 0)
    if proc.is_alive():
        proc.kill()
    if not done:
        alive = time.monotonic() >= deadline
        last["error"] = (
            f"cut at the {limit_s:.0f} s limit" if alive else f"the process ended ({proc.exitcode})"
        )
    proc.join(5)
    s = last.get("seconds") or []
    if s:
        last["s_per_image"] = {"median": statistics.median(s), "min": min(s), "max": max(s)}
    return last


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| plan | budget MiB | build s (random weights) | s per 512x512 image, 4 steps (median, range, n) "
        "| peak allocated MiB |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        s = r.get("s_per_image")
        per = f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f}, {len(r['seconds'])})" if s else "-"
        peak = f"{r['peak_allocated_mib']:,.0f}" if "peak_allocated_mib" in r else "-"
        load = f"{r['build_s']:.1f}" if "build_s" in r else "-"
        name = r["plan"] if r.get("placed") in (None, r["plan"]) else f"{r['plan']} (placed {r['placed']})"
        err = f" ({r['error']})" if r.get("error") else ""
        out.append(f"| {name}{err} | {r['budget_mib']:,.0f} | {load} | {per} | {peak} |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="print each plan's budget and the plan it gives")
    p.add_argument("--smoke", action="store_true", help="the tiny pipeline on the CPU (checks the script)")
    p.add_argument("--plans", default=",".join(PLANS))
    p.add_argument("--images", type=int, default=3, help="timed images per plan (after one untimed)")
    p.add_argument("--limit-s", type=float, default=90.0, help="per plan")
    p.add_argument("--out", default="bench/results/gpu_fit_plans.json")
    args = p.parse_args()
    from ris.backends.sd_arch import build_pipeline  # noqa: F401 - fail early without diffusers
    from ris.memory.fit import image_plan

    with tempfile.TemporaryDirectory() as tmp:
        chosen = budgets(Path(tmp))
    if args.dry_run:
        import torch

        from ris.backends.sd_arch import build_pipeline as build
        from ris.backends.torch_memory import pipeline_components
        from ris.memory.footprint import torch_footprint

        with tempfile.TemporaryDirectory() as tmp:
            fp = torch_footprint(pipeline_components(build("sd15", Path(tmp) / "tok", "meta", torch.float16)))
        for plan, budget in chosen.items():
            print(f"{plan}: budget {budget / MIB:,.0f} MiB -> {image_plan(fp, budget).plan}")
        return 0
    rows: list[dict[str, Any]] = []
    out = Path(args.out)
    for plan in args.plans.split(","):
        row = run_plan(plan, chosen[plan], args.images, args.limit_s, args.smoke)
        rows.append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps({"rows": rows}, indent=1))
    text = table(rows)
    machine = {"smoke": "cpu"} if args.smoke else _machine()
    out.write_text(json.dumps({"machine": machine, "rows": rows, "table": text}, indent=1))
    print("\n" + text)
    return 0


def _machine() -> dict[str, str]:
    import torch

    return {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }


if __name__ == "__main__":
    raise SystemExit(main())
