"""The configuration built from the machine when none is given: how lanes share it.

Each lane kind brings its own models and defaults (ris.lanes); this module decides only the
placement, the one thing that depends on the machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ris.config.checks import check_config
from ris.config.load import with_lane_defaults
from ris.config.schema import Config, ModelSpec
from ris.lanes import Lane, kind, kinds
from ris.machine import MachineInfo, machine_info


def default_models() -> dict[str, dict[str, ModelSpec]]:
    """Every lane kind's embedded default models, by lane."""
    return {name: k.default_models() for name, k in kinds().items()}


def default_config(machine: MachineInfo | None = None, data_dir: Path | None = None) -> Config:
    """A layout for this machine: GPU lanes on GPUs when present; else disjoint cores.

    CPU-only: the LLM gets most cores, TTS the last one (or a quarter), both real-time and
    exclusive; the image lane may use every core but runs at the lowest OS priority, so the
    kernel hands it only what the real-time lanes leave idle.
    """
    m = machine or machine_info()
    cores = list(m.cores)
    n = len(cores)
    if n >= 2:
        tts_n = max(1, n // 4)
        llm_cores, tts_cores = tuple(cores[: n - tts_n]), tuple(cores[n - tts_n :])
        exclusive = True
    else:  # one core: nothing to isolate with; share it rather than refuse to start
        llm_cores = tts_cores = tuple(cores)
        exclusive = False
    if m.gpus >= 1:
        # A GPU lane needs few host threads; keep most cores for TTS and the image lane's host work.
        llm_cores = tuple(cores[: max(1, min(2, n - 1))]) if n >= 2 else tuple(cores)
        tts_cores = tuple(c for c in cores if c not in llm_cores) or tuple(cores)
    placement: dict[str, dict[str, Any]] = {
        Lane.LLM: {"cores": llm_cores, "exclusive_cores": exclusive},
        Lane.TTS: {"cores": tts_cores, "exclusive_cores": exclusive},
        Lane.IMAGE: {"cores": tuple(cores), "threads": max(1, n // 2)},
    }
    # Lanes that may use a GPU take one each in this order while there are GPUs (the LLM cuda:0,
    # the image lane cuda:1), then share the last; a CPU-only kind (TTS) stays on the CPU.
    on_gpu = [name for name in placement if not kind(name).cpu_only]
    lanes: dict[str, Any] = {}
    for name, where in placement.items():
        k = kind(name)
        device = f"cuda:{min(on_gpu.index(name), m.gpus - 1)}" if m.gpus and name in on_gpu else "cpu"
        lanes[name] = {
            **where,
            "device": device,
            "enabled": k.enabled_by_default(),
            "default_model": k.default_model(),
            "models": k.default_models(),
        }
    # Registered kinds beyond the built-ins are there too, disabled, as in a loaded config.
    data = with_lane_defaults({"data_dir": data_dir or Path("ris-data").resolve(), "lanes": lanes})
    return check_config(Config.model_validate(data), m)
