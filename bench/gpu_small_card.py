"""An 8 GB card emulated on a large one: lane budgets that add up to 8 GiB, a Qwen2.5-1.5B-shape
LLM and SD 1.5-shape images side by side (issue 21), and the cost of a model switch on a GPU.

The budgets are enforced as they would be on the small card (each worker's torch allocator is
capped to its lane's budget, ris.backends.torch_memory), so an out-of-memory failure here is
one the small card would have had. The LLM is a random-weight folder written once (safetensors:
its footprint is read from the files, as a user's model's would be); the images are the
`dummy` SD 1.5 pipeline. Each phase is a fresh `ris serve`, driven by `ris bench`'s load
generator (one streaming chat client with think time, images kept two deep):

    phase        | TTFT p50 | ITL p50 | image steps/s | failed | gpu_out_of_memory | GPU MiB per lane
    LLM alone    |          |         |  -            |        |                   |
    image alone  |  -       |  -      |               |        |                   |
    side by side |  (x)     |  (x)    |  (x)          |        |                   |

then the switch: the LLM lane with the folder under two names and a budget that holds one;
requests alternate between them, each needing an eviction and a load, timed against the
cold load at start (/api/models `last_load_s`) and a request to the loaded model.

Goals (issue 21): 0 out-of-memory failures; side-by-side TTFT p50 within 1.10x of the LLM
alone; a switch at most 1.5x a cold load.

    python bench/gpu_small_card.py                  # on a GPU machine
    python bench/gpu_small_card.py --smoke          # tiny shapes on CPU: checks the script
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ris.benchmark.loadgen import run_phase
from ris.benchmark.run import warm_up
from ris.benchmark.summary import phase_figures
from ris.launch import ServiceProcess

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_image_sharing import workload  # noqa: E402
from hf_serve_compare import make_folder  # noqa: E402

GIB = 2**30


def lanes(
    args: argparse.Namespace, folder: Path, llm: bool, image: bool, models: tuple[str, ...]
) -> dict[str, Any]:
    dev = "cpu" if args.smoke else "cuda:0"
    spec = {"backend": "transformers", "source": str(folder), "options": {"max_context": 4096}}
    return {
        "llm": {
            "enabled": llm,
            "device": dev,
            "priority_class": "realtime",
            "exclusive_cores": False,
            "parallel": args.parallel,
            "gpu_memory_gb": args.llm_gb,
            "default_model": models[0],
            "load_timeout_s": 600,
            "models": {name: spec for name in models},
        },
        "tts": {"enabled": False},
        "image": {
            "enabled": image,
            "device": dev,
            "nice": 0,
            "max_queue": 16,
            "gpu_memory_gb": args.image_gb,
            "default_model": "img",
            "load_timeout_s": 600,
            "preemption": {"policy": "auto", "scope": "prefill"},
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


def gpu_mib(svc: ServiceProcess, lane: str) -> float | None:
    worker = svc.stats()[lane].get("worker") or {}
    used = worker.get("gpu_memory_bytes")
    return None if used is None else used / 2**20


def phase(
    args: argparse.Namespace, folder: Path, work: Path, name: str, llm: bool, image: bool
) -> dict[str, Any]:
    cfg = {"data_dir": str(work / "data"), "lanes": lanes(args, folder, llm, image, ("llm",))}
    svc = ServiceProcess(work / name.replace(" ", "_"), cfg).start(timeout=600)
    on = tuple(lane for lane, yes in (("llm", llm), ("image", image)) if yes)
    w = workload(args)  # gpu_image_sharing.py's: one chat client with think time, images two deep
    try:
        warm_up(svc.url, w, on)
        raw = asyncio.run(run_phase(svc.url, frozenset(on), w))
        memory = {lane: gpu_mib(svc, lane) for lane in on}
        failed = failures(svc.url)
    finally:
        svc.stop()
    figures = phase_figures(raw)
    return {
        "phase": name,
        **{k: v for k, v in figures.items() if v is not None},
        "failed": len(failed),
        "gpu_out_of_memory": failed.count("gpu_out_of_memory"),
        "failure_codes": sorted(set(failed)),
        "gpu_mib": memory,
    }


def failures(url: str) -> list[str]:
    """The error code of every task that failed in the service's lifetime (warm-up included)."""
    r = httpx.get(f"{url}/api/tasks", params={"state": "failed", "limit": 1000}, timeout=30)
    r.raise_for_status()
    return [(t.get("error") or {}).get("code", "failed") for t in r.json()["tasks"]]


def chat(url: str, model: str, tokens: int) -> float:
    started = time.perf_counter()
    body = {"model": model, "messages": [{"role": "user", "content": "hello " * 16}], "max_tokens": tokens}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    if r.status_code != 200:
        raise RuntimeError(f"model {model}: HTTP {r.status_code} {r.text[:600]}")
    return time.perf_counter() - started


def switch(args: argparse.Namespace, folder: Path, work: Path) -> dict[str, Any]:
    """The folder under two names in a lane whose budget holds one: each request alternates.
    A failed request ends the part with its error, the lane's GPU memory after each request and
    the server log's tail, rather than the whole benchmark."""
    cfg = {"data_dir": str(work / "data"), "lanes": lanes(args, folder, True, False, ("a", "b"))}
    svc = ServiceProcess(work / "switch", cfg).start(timeout=600)
    loaded: list[float] = []
    switches: list[float] = []
    memory: list[float | None] = []
    error = None
    try:
        cold_models = httpx.get(f"{svc.url}/api/models", timeout=30).json()["lanes"]["llm"]
        try:
            chat(svc.url, "a", 4)  # warm
            loaded = [chat(svc.url, "a", 4) for _ in range(3)]
            memory.append(gpu_mib(svc, "llm"))
            for name in ("b", "a", "b", "a"):
                switches.append(chat(svc.url, name, 4))
                memory.append(gpu_mib(svc, "llm"))
        except Exception as exc:  # noqa: BLE001 - reported with the server's side of it
            error = str(exc)
        models = httpx.get(f"{svc.url}/api/models", timeout=30).json()["lanes"]["llm"]
        log = svc.log()
    finally:
        svc.stop()
    cold = next(m["last_load_s"] for m in cold_models if m["name"] == "a")  # at start
    loaded_s = sorted(loaded)[len(loaded) // 2] if loaded else None
    result: dict[str, Any] = {
        "cold_load_s": cold,
        "loaded_request_s": loaded_s,
        "switch_request_s": switches,
        "switch_s_median": sorted(switches)[len(switches) // 2] - loaded_s if switches and loaded_s else None,
        "gpu_mib_after_each": memory,
        "reload_s": {m["name"]: m["last_load_s"] for m in models},
        "resident": [m["name"] for m in models if m["loaded"]],
        "footprint_mib": {m["name"]: (m["footprint"] or {}).get("total_bytes", 0) / 2**20 for m in models},
        "evictions_in_log": log.count("evicted"),
    }
    if error is not None:
        result["error"] = error
        result["log_tail"] = log[-6000:]
    return result


def table(rows: list[dict[str, Any]]) -> str:
    alone = {r["phase"]: r for r in rows}
    ref = {"llm_ttft_p50": "LLM alone", "llm_itl_p50": "LLM alone", "image_steps_s": "image alone"}

    def cell(r: dict[str, Any], key: str, scale: float) -> str:
        if key not in r:
            return "-"
        base = alone.get(ref[key], {}).get(key)
        ratio = f" ({r[key] / base:.2f}x)" if base and alone.get(ref[key]) is not r else ""
        return f"{r[key] * scale:.1f}{ratio}"

    out = [
        "| phase | TTFT p50 ms | ITL p50 ms | image steps/s | failed | gpu OOM | GPU MiB per lane |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = ", ".join(f"{k} {v:,.0f}" for k, v in r["gpu_mib"].items() if v is not None) or "-"
        out.append(
            f"| {r['phase']} | {cell(r, 'llm_ttft_p50', 1000)} | {cell(r, 'llm_itl_p50', 1000)} | "
            f"{cell(r, 'image_steps_s', 1)} | {r['failed']} | {r['gpu_out_of_memory']} | {mem} |"
        )
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (checks the script)")
    p.add_argument("--llm-shape", default="qwen2.5-1.5b")
    # 7.5 GiB in all, the rest of an 8 GiB card for the two workers' CUDA contexts.
    p.add_argument("--llm-gb", type=float, default=4.5, help="the LLM lane's GPU budget (GiB)")
    p.add_argument("--image-gb", type=float, default=3.0, help="the image lane's GPU budget (GiB)")
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--window-s", type=float, default=8.0, help="measured seconds per phase")
    p.add_argument("--prompt-tokens", type=int, default=1024)
    # Short answers: the LLM-alone window must hold several requests for a TTFT median.
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--gap-s", type=float, default=0.3, help="the chat client's think time")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--image-steps", type=int, default=20)
    p.add_argument("--parts", default="phases,switch")
    p.add_argument("--out", default="bench/results/gpu_small_card.json")
    args = p.parse_args()
    if args.smoke:
        args.llm_shape, args.window_s, args.prompt_tokens, args.new_tokens = "tiny", 3.0, 64, 8
        args.image_size, args.image_steps, args.llm_gb, args.image_gb = 64, 4, 1.0, 1.0
    result: dict[str, Any] = {"args": vars(args), "machine": machine(args), "rows": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ris-small-card-") as tmp:
        work = Path(tmp)
        folder = work / "llm"
        started = time.perf_counter()
        device = "cpu" if args.smoke else "cuda"  # random weights drawn on the GPU: seconds, not minutes
        make_folder(args.llm_shape, "float32" if args.smoke else "bfloat16", folder, device)
        print(f"model folder written in {time.perf_counter() - started:.1f} s", flush=True)
        if "phases" in args.parts:
            for name, llm, image in (
                ("LLM alone", True, False),
                ("image alone", False, True),
                ("side by side", True, True),
            ):
                row = phase(args, folder, work, name, llm, image)
                print(json.dumps(row), flush=True)
                result["rows"].append(row)
                out.write_text(json.dumps(result, indent=1))
            result["table"] = table(result["rows"])
            print("\n" + result["table"], flush=True)
        if "switch" in args.parts:
            result["switch"] = switch(args, folder, work)
            s = result["switch"]
            print(json.dumps({k: v for k, v in s.items() if k != "log_tail"}), flush=True)
            print(s.get("log_tail", ""), flush=True)
            if s["cold_load_s"] and s["switch_s_median"] is not None:
                print(
                    f"switch {s['switch_s_median']:.2f} s vs cold load {s['cold_load_s']:.2f} s: "
                    f"{s['switch_s_median'] / s['cold_load_s']:.2f}x",
                    flush=True,
                )
            out.write_text(json.dumps(result, indent=1))
    out.write_text(json.dumps(result, indent=1))
    return 0


def machine(args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    if not args.smoke:
        try:
            import torch

            info["gpu"] = torch.cuda.get_device_name(0)
            info["torch"] = torch.__version__
        except Exception:  # noqa: BLE001 - report what we can
            pass
    return info


if __name__ == "__main__":
    raise SystemExit(main())
