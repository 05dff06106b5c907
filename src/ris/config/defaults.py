"""The configuration built from the machine when none is given: how lanes share it.

Each lane kind brings its own models and defaults (ris.lanes); this module decides only the
placement, the one thing that depends on the machine, and a card's budgets by its size
(profiles.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ris.config.checks import check_config
from ris.config.load import with_lane_defaults
from ris.config.profiles import GIB, GpuProfile, pick_profile
from ris.config.schema import Config, ModelSpec
from ris.lanes import Lane, kind, kinds
from ris.machine import MachineInfo, machine_info

# The image lane's minimum CPU share while real-time lanes saturate its cores (config.json's;
# docs/PERFORMANCE_OPTIMIZATION.md says why 10%). Inside its group the worker's threads run
# under SCHED_IDLE (ris.runtime.cpu_share): beside ris bench's isolated layout at nice 19
# without it, images +25% at the median of 10 paired repetitions, the LLM's gap p99 no worse
# at the median (worse in 4 of 10, by up to 0.49x of alone; bench/results/
# ris_bench_image_share_ab/).
MIN_CPU_SHARE = 0.1


def _installed(models: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
    """The embedded models whose package or file is on this machine (`ris serve` refuses a
    lane whose models loaded at start are missing): a voice package left out leaves its model
    out of the machine-built layout rather than the server unable to start."""
    from ris.backends import resolve_source
    from ris.lanes.base import BackendError

    found = {}
    for name, spec in models.items():
        if spec.source is not None and spec.source.startswith("package:"):
            try:
                resolve_source(spec.source)
            except BackendError:
                continue
        found[name] = spec
    return found


def default_models() -> dict[str, dict[str, ModelSpec]]:
    """Every lane kind's embedded default models, by lane."""
    return {name: k.default_models() for name, k in kinds().items()}


def default_config(machine: MachineInfo | None = None, data_dir: Path | None = None) -> Config:
    """A layout for this machine: GPU lanes on GPUs when present; else disjoint cores. One card
    the LLM and image lanes share is split by its size's profile (profiles.py)."""
    m = machine or machine_info()
    return _checked(default_lanes(m), m, data_dir)


def profile_config(
    card_bytes: int, machine: MachineInfo | None = None, data_dir: Path | None = None
) -> Config:
    """The layout of this machine's cores with one NVIDIA card of `card_bytes`, there or not
    (`ris config --gpu-profile`): the card's profile sets the budgets, and its suggested models,
    files the user points to, are the lanes' defaults (the embedded ones kept beside them).
    Checked against that machine, so what is printed loads where such a card is."""
    here = machine or machine_info()
    m = replace(here, gpus=1, gpu_memory=((f"a {card_bytes / GIB:g} GiB card", card_bytes),))
    profile = pick_profile(card_bytes)
    lanes = default_lanes(m)
    for lane, settings in profile.model_settings().items():
        models = {**settings["models"], **lanes[lane]["models"]}
        lanes[lane] = {**lanes[lane], **settings, "models": models}
    # The layout is for a machine with the card: the image lane is laid out whether or not this
    # one has the image extra installed.
    lanes[Lane.IMAGE]["enabled"] = True
    return _checked(lanes, m, data_dir)


def card_profile(m: MachineInfo) -> GpuProfile | None:
    """The profile of the one card the LLM and image lanes share; None without NVML's figures
    for it, or with two GPUs or more, where each of those lanes has a card to itself, whole."""
    return pick_profile(m.gpu_memory[0][1]) if m.gpus == 1 and m.gpu_memory else None


def _checked(lanes: dict[str, Any], m: MachineInfo, data_dir: Path | None) -> Config:
    # Registered kinds beyond the built-ins are there too, disabled, as in a loaded config.
    data = with_lane_defaults({"data_dir": data_dir or Path("ris-data").resolve(), "lanes": lanes})
    return check_config(Config.model_validate(data), m)


def default_lanes(machine: MachineInfo) -> dict[str, dict[str, Any]]:
    """Each built-in lane's settings on `machine`: placement, device, GPU budget, models.

    CPU-only: the LLM gets most cores, TTS the last one (or a quarter), both real-time and
    exclusive; the image lane may use every core but runs at the lowest OS priority, so the
    kernel hands it what the real-time lanes leave idle, and a minimum share (MIN_CPU_SHARE)
    while they saturate its cores. With GPUs the LLM keeps two cores
    to feed its card; one card shared by the LLM and image lanes gets its profile's budgets.
    """
    profile = card_profile(machine)
    on_card = profile.lane_settings() if profile is not None else {}
    # A card too small to help leaves every lane on the CPU, laid out as without a GPU.
    m = replace(machine, gpus=0) if profile and profile.llm_gib is None else machine
    cores = list(m.layout_cores)  # as many as a container's CPU quota holds
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
    lanes: dict[str, dict[str, Any]] = {}
    for name, where in placement.items():
        k = kind(name)
        device = f"cuda:{min(on_gpu.index(name), m.gpus - 1)}" if m.gpus and name in on_gpu else "cpu"
        models = _installed(k.default_models())
        default = k.default_model()
        lanes[name] = {
            **where,
            "device": device,
            # Without any of its embedded models installed (an extra left out), the lane stays off.
            "enabled": k.enabled_by_default() and bool(models),
            "default_model": default if default in models else next(iter(models), default),
            "models": models or k.default_models(),
        }
        lanes[name].update(on_card.get(name, {}))
        # After the card's settings: a small card's profile moves the image lane to the CPU.
        if name == Lane.IMAGE and lanes[name]["device"] == "cpu":
            lanes[name]["min_cpu_share"] = MIN_CPU_SHARE
    return lanes
