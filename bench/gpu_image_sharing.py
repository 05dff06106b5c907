"""LLM latency and image throughput when the two lanes share one GPU, per preemption policy.

Runs the real service (one fresh `ris serve` per phase) on one GPU with a Qwen2.5-7B-shape LLM
and an SD 1.5-shape image model, both with random weights (the `dummy` load format), drives
it with `ris bench`'s load generator (ris.benchmark: one streaming chat client with think
time, images kept two deep) and prints, side by side from one run:

    phase             | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | image steps/s
    LLM alone         |          |          |         |         |  -
    image alone       |  -       |  -       |  -      |  -      |
    policy none       |          |          |         |         |
    policy default    |          |          |         |         |   (block, during prefill)

Goals: TTFT p50 within 1.05x of LLM alone; image steps/s at least 0.85x of policy none.
The probe that motivated the design is in docs/DESIGN_MEASUREMENTS.md (GPU sharing).

    python bench/gpu_image_sharing.py                 # on a GPU machine
    python bench/gpu_image_sharing.py --smoke         # tiny shapes on CPU: checks the script
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from ris.benchmark.loadgen import run_phase
from ris.benchmark.run import warm_up
from ris.benchmark.summary import phase_figures
from ris.benchmark.workload import Workload
from ris.launch import ServiceProcess

# The dummy models' tokenizer makes one token per byte; the load generator's prompt is made
# of the word "please" (7 bytes with its space).
BYTES_PER_WORD = 7
COLUMNS = (
    ("llm_ttft_p50", "TTFT p50 ms", 1000, "LLM alone"),
    ("llm_ttft_p99", "TTFT p99 ms", 1000, "LLM alone"),
    ("llm_itl_p50", "ITL p50 ms", 1000, "LLM alone"),
    ("llm_itl_p99", "ITL p99 ms", 1000, "LLM alone"),
    ("image_steps_s", "image steps/s", 1, "policy none"),
)


def lane_configs(args: argparse.Namespace, policy: str | None, llm: bool, image: bool) -> dict[str, Any]:
    dev = "cpu" if args.smoke else "cuda:0"
    return {
        "llm": {
            "enabled": llm,
            "device": dev,
            "priority_class": "realtime",
            "exclusive_cores": False,
            "default_model": "llm",
            "load_timeout_s": 900,
            "busy_timeout_s": 600,
            "models": {
                "llm": {
                    "backend": "transformers",
                    "load_format": "dummy",
                    "source": "tiny" if args.smoke else args.llm_shape,
                    "options": {} if args.smoke else {"dtype": "bfloat16"},
                }
            },
        },
        "tts": {"enabled": False},
        "image": {
            "enabled": image,
            "device": dev,
            "nice": 0 if not args.smoke else 19,
            "max_queue": 16,
            "default_model": "img",
            "load_timeout_s": 900,
            "preemption": {"policy": policy or "none", "scope": "prefill", "min_share": args.min_share},
            "models": {
                "img": {
                    "backend": "diffusers",
                    "load_format": "dummy",
                    "source": "tiny" if args.smoke else "sd15",
                    "options": {"default_guidance": 7.5},
                }
            },
        },
    }


def workload(args: argparse.Namespace) -> Workload:
    return Workload(
        duration_s=args.window_s,
        drain_s=60.0,
        llm_clients=1,
        llm_max_tokens=args.new_tokens,
        llm_prompt_words=args.prompt_tokens // BYTES_PER_WORD,
        llm_think_s=args.gap_s,
        llm_plain_every=0,  # every request streamed: TTFT and ITL from each
        tts_burst_size=0,
        image_outstanding=2,
        image_size=args.image_size,
        image_steps=args.image_steps,
    )


def run_phase_on_service(
    args: argparse.Namespace, name: str, policy: str | None, llm: bool, image: bool, work: Path
) -> dict[str, Any]:
    cfg = {"data_dir": str(work / "data"), "lanes": lane_configs(args, policy, llm, image)}
    svc = ServiceProcess(work / name.replace(" ", "_"), cfg).start(timeout=900)
    lanes = tuple(lane for lane, on in (("llm", llm), ("image", image)) if on)
    w = workload(args)
    try:
        warm_up(svc.url, w, lanes)  # CUDA kernels, the allocator, the pipeline
        figures = phase_figures(asyncio.run(run_phase(svc.url, frozenset(lanes), w)))
    finally:
        svc.stop()
    if figures["errors"]:
        raise RuntimeError(f"{name}: {figures['errors']:.0f} requests failed\n{svc.log()}")
    return {"phase": name, **{k: v for k, v in figures.items() if v is not None}}


def table(rows: list[dict[str, Any]]) -> str:
    by = {r["phase"]: r for r in rows}

    def cell(r: dict[str, Any], key: str, scale: float, ref_name: str) -> str:
        if key not in r:
            return "-"
        ref = by.get(ref_name, {})
        ratio = f" ({r[key] / ref[key]:.2f}x)" if key in ref and ref is not r and ref[key] else ""
        return f"{r[key] * scale:.1f}{ratio}"

    out = ["| phase | " + " | ".join(c[1] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for r in rows:
        cells = [cell(r, key, scale, ref) for key, _, scale, ref in COLUMNS]
        out.append(f"| {r['phase']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (checks the script)")
    p.add_argument("--llm-shape", default="qwen2.5-7b")
    p.add_argument("--window-s", type=float, default=15.0, help="measured seconds per phase")
    p.add_argument("--prompt-tokens", type=int, default=2048)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--gap-s", type=float, default=0.3, help="the chat client's think time")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--image-steps", type=int, default=20)
    p.add_argument("--min-share", type=float, default=0.1)
    p.add_argument("--extra-policies", default="step", help="comma-separated, beside none and default")
    p.add_argument("--out", default="bench/results/gpu_image_sharing.json")
    args = p.parse_args()
    if args.smoke:
        args.window_s, args.prompt_tokens, args.new_tokens = 3.0, 64, 8
        args.image_size, args.image_steps = 64, 4
    phases: list[tuple[str, str | None, bool, bool]] = [
        ("LLM alone", None, True, False),
        ("image alone", "none", False, True),
        ("policy none", "none", True, True),
        ("policy default", "auto", True, True),
    ]
    phases += [(f"policy {x}", x, True, True) for x in args.extra_policies.split(",") if x]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ris-bench-") as tmp:
        for name, policy, llm, image in phases:
            row = run_phase_on_service(args, name, policy, llm, image, Path(tmp))
            print(json.dumps(row), flush=True)
            rows.append(row)
    text = table(rows)
    print("\n" + text)
    machine = {"python": sys.version.split()[0], "platform": platform.platform()}
    if not args.smoke:
        try:
            import torch

            machine["gpu"] = torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 - report what we can
            pass
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"args": vars(args), "machine": machine, "rows": rows, "table": text}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
