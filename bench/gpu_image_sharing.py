"""LLM latency and image throughput when the two lanes share one GPU, per preemption policy.

Runs the real service (one fresh `ris serve` per phase) on one GPU with a Qwen2.5-7B-shape LLM
and an SD 1.5-shape image model, both with random weights (the `dummy` load format), and prints,
side by side from one run, the table of ../shared/design/GPU_SHARING.md:

    phase             | TTFT p50 | TTFT max | ITL p50 | image steps/s
    LLM alone         |          |          |         |  -
    image alone       |  -       |  -       |  -      |
    policy none       |          |          |         |
    policy default    |          |          |         |   (block, during prefill)

Goals: TTFT p50 within 1.05x of LLM alone; image steps/s at least 0.85x of policy none.

    python bench/gpu_image_sharing.py                 # on a GPU machine
    python bench/gpu_image_sharing.py --smoke         # tiny shapes on CPU: checks the script
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from ris.launch import ServiceProcess
from ris.scheduler import percentile


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
        "tts": {"enabled": False, "device": "cpu", "models": {}},
        "image": {
            "enabled": image,
            "device": dev,
            "priority_class": "batch",
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


class ImageLoad:
    """Keeps the image queue fed and counts denoising steps done."""

    def __init__(self, url: str, size: int, steps: int) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)
        self.body = {"prompt": "a lighthouse at dawn", "width": size, "height": size, "steps": steps}
        self.ids: list[str] = []
        self.done_steps: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.lock = threading.Lock()
        # The first failed task's error: a benchmark of failing images must stop, not wait.
        self.error: dict[str, Any] | None = None

    def _run(self) -> None:
        while not self.stop.is_set():
            live = 0
            for tid in list(self.ids):
                p = self.http.get(f"/api/image/progress/{tid}").json()
                with self.lock:
                    self.done_steps[tid] = int(p["step"])
                if p["status"] in ("queued", "running"):
                    live += 1
                elif p["status"] == "failed" and self.error is None:
                    self.error = p["error"]
            while live < 2:
                r = self.http.post("/api/image/generate", json=self.body)
                r.raise_for_status()
                self.ids.append(r.json()["task_id"])
                live += 1
            time.sleep(0.05)

    def steps(self) -> int:
        with self.lock:
            return sum(self.done_steps.values())

    def __enter__(self) -> ImageLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        for tid in self.ids:
            self.http.post(f"/api/image/cancel/{tid}")
        self.http.close()


def llm_requests(url: str, args: argparse.Namespace, n: int) -> dict[str, list[float]]:
    """n streamed requests with gaps; client-side TTFT and inter-token latency."""
    ttft, itl = [], []
    prompt = "x" * args.prompt_tokens  # the dummy tokenizer makes one token per byte
    body = {
        "prompt": prompt,
        "max_tokens": args.new_tokens,
        "ignore_eos": True,
        "stream": True,
        "temperature": 0,
    }
    with httpx.Client(base_url=url, timeout=300) as http:
        for _ in range(n):
            time.sleep(args.gap_s)
            t0 = time.perf_counter()
            last = None
            with http.stream("POST", "/api/llm/generate", json=body) as resp:
                resp.raise_for_status()
                for line in resp.iter_lines():
                    if not line.startswith("event: token"):
                        continue
                    now = time.perf_counter()
                    if last is None:
                        ttft.append(now - t0)
                    else:
                        itl.append(now - last)
                    last = now
    return {"ttft": ttft, "itl": itl}


def summarize(name: str, llm: dict[str, list[float]] | None, steps_s: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"phase": name}
    if llm:
        row.update(
            ttft_p50_ms=1000 * statistics.median(llm["ttft"]),
            ttft_max_ms=1000 * max(llm["ttft"]),
            itl_p50_ms=1000 * statistics.median(llm["itl"]),
            itl_p99_ms=1000 * (percentile(llm["itl"], 99) or 0.0),
        )
    if steps_s is not None:
        row["image_steps_per_s"] = steps_s
    return row


def run_phase(
    args: argparse.Namespace, name: str, policy: str | None, llm: bool, image: bool, work: Path
) -> dict[str, Any]:
    cfg = {"data_dir": str(work / "data"), "lanes": lane_configs(args, policy, llm, image)}
    svc = ServiceProcess(work / name.replace(" ", "_"), cfg).start(timeout=900)
    try:
        if llm:
            llm_requests(svc.url, args, 2)  # warm-up (CUDA kernels, allocator)
        if not image:
            return summarize(name, llm_requests(svc.url, args, args.requests), None)
        with ImageLoad(svc.url, args.image_size, args.image_steps) as load:
            give_up = time.monotonic() + 300
            while load.steps() < 3:  # image pipeline warmed up and running
                if load.error is not None or not load.thread.is_alive() or time.monotonic() > give_up:
                    raise RuntimeError(f"{name}: images do not run: {load.error}\n{svc.log()}")
                time.sleep(0.1)
            s0, t0 = load.steps(), time.perf_counter()
            if llm:
                stats = llm_requests(svc.url, args, args.requests)
            else:
                time.sleep(args.image_window_s)
                stats = None
            rate = (load.steps() - s0) / (time.perf_counter() - t0)
        return summarize(name, stats, rate)
    finally:
        svc.stop()


def table(rows: list[dict[str, Any]]) -> str:
    by = {r["phase"]: r for r in rows}
    alone, none_ = by.get("LLM alone", {}), by.get("policy none", {})

    def cell(r: dict[str, Any], k: str, ref: dict[str, Any]) -> str:
        if k not in r:
            return "-"
        ratio = f" ({r[k] / ref[k]:.2f}x)" if k in ref and ref is not r and ref[k] else ""
        return f"{r[k]:.1f}{ratio}" if k != "image_steps_per_s" else f"{r[k]:.2f}{ratio}"

    out = [
        "| phase | TTFT p50 ms | TTFT max ms | ITL p50 ms | ITL p99 ms | image steps/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['phase']} | {cell(r, 'ttft_p50_ms', alone)} | {cell(r, 'ttft_max_ms', alone)} | "
            f"{cell(r, 'itl_p50_ms', alone)} | {cell(r, 'itl_p99_ms', alone)} | "
            f"{cell(r, 'image_steps_per_s', none_)} |"
        )
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (checks the script)")
    p.add_argument("--llm-shape", default="qwen2.5-7b")
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=2048)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--gap-s", type=float, default=0.3)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--image-steps", type=int, default=20)
    p.add_argument("--image-window-s", type=float, default=12.0)
    p.add_argument("--min-share", type=float, default=0.1)
    p.add_argument("--extra-policies", default="step", help="comma-separated, beside none and default")
    p.add_argument("--out", default="bench/results/gpu_image_sharing.json")
    args = p.parse_args()
    if args.smoke:
        args.requests, args.prompt_tokens, args.new_tokens = 3, 64, 8
        args.image_size, args.image_steps, args.image_window_s = 64, 4, 3.0
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
            row = run_phase(args, name, policy, llm, image, Path(tmp))
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
