"""The configurations `ris bench` compares, all of the same product and the same models.

* isolated    — the default layout RIS builds for the machine: real-time lanes on disjoint
                cores with matching thread counts, the image lane at the lowest OS priority
                with a minimum CPU share and yielding to the LLM on a shared GPU, one priority
                queue per lane.
* traditional — isolation off: every lane on every core (and the same GPU), thread counts
                left at one per core, no preemption, and one FIFO queue for all requests.
* shared      — the traditional resources with the product's per-lane queues: separates what
                the queue costs from what contention costs ("uncoordinated sharing").
"""

from __future__ import annotations

import json
from typing import Any

from ris.config import Config, ModelSpec
from ris.config.defaults import default_config
from ris.lanes import Lane
from ris.machine import MachineInfo, machine_info
from ris.scheduler import Ordering

CONFIGS = ("traditional", "shared", "isolated")

GPU_LLM = ModelSpec(
    backend="transformers",
    load_format="dummy",
    source="qwen2.5-7b",
    options={"dtype": "bfloat16"},
    description="Qwen2.5-7B shape, random weights (benchmark)",
)
GPU_IMAGE = ModelSpec(
    backend="diffusers",
    load_format="dummy",
    source="sd15",
    options={"default_guidance": 7.5},
    description="Stable Diffusion 1.5 shape, random weights (benchmark)",
)


def isolated(kind: str, machine: MachineInfo | None = None, tts_model: str | None = None) -> Config:
    m = machine or machine_info()
    if kind == "gpu" and m.gpus == 0:
        raise ValueError("the GPU variant needs an NVIDIA GPU; this machine has none")
    cfg = default_config(m)
    if tts_model is not None:
        tts = cfg.lanes[Lane.TTS]
        if tts_model not in tts.models:
            raise ValueError(f"unknown TTS model {tts_model!r}; configured: {', '.join(tts.models)}")
        # Only the chosen voice is loaded: the others would cost start-up time and memory.
        lanes = dict(cfg.lanes)
        lanes[Lane.TTS] = tts.model_copy(
            update={"default_model": tts_model, "models": {tts_model: tts.models[tts_model]}}
        )
        cfg = cfg.model_copy(update={"lanes": lanes})
    if kind == "gpu":
        lanes = dict(cfg.lanes)
        lanes[Lane.LLM] = lanes[Lane.LLM].model_copy(
            update={"models": {"llm": GPU_LLM}, "default_model": "llm", "load_timeout_s": 900.0}
        )
        lanes[Lane.IMAGE] = lanes[Lane.IMAGE].model_copy(
            update={"models": {"img": GPU_IMAGE}, "default_model": "img", "load_timeout_s": 900.0}
        )
        cfg = cfg.model_copy(update={"lanes": lanes})
    if not cfg.lanes[Lane.IMAGE].enabled:
        raise ValueError("the image lane needs the `image` extra (torch, diffusers)")
    return cfg


def build(name: str, kind: str, machine: MachineInfo | None = None, tts_model: str | None = None) -> Config:
    """The named configuration (see the module docstring)."""
    base = isolated(kind, machine, tts_model)
    if name == "isolated":
        return base
    if name not in CONFIGS:
        raise ValueError(f"unknown configuration {name!r}; known: {', '.join(CONFIGS)}")
    lanes = {
        lane: cfg.model_copy(
            update={
                "cores": None,
                "threads": None,
                "nice": 0,
                "exclusive_cores": False,
                "borrow_idle_cores": False,  # nothing is isolated, so nothing is lent
                "min_cpu_share": None,  # every lane at nice 0: no share to keep
                "preemption": cfg.preemption.model_copy(update={"policy": "none"}),
            }
        )
        for lane, cfg in base.lanes.items()
    }
    return base.model_copy(
        update={"lanes": lanes, "scheduling": Ordering.FIFO if name == "traditional" else Ordering.LANES}
    )


def as_json(cfg: Config, data_dir: str) -> dict[str, Any]:
    """The config.json a ServiceProcess writes for it."""
    data: dict[str, Any] = json.loads(cfg.model_dump_json())
    data["data_dir"] = data_dir
    data["server"]["port"] = 0
    return data
