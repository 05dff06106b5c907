"""The example configs of docs/DEPLOYMENT_GUIDE.md load with the real config loader, checked
against the machine each is written for (a fake MachineInfo: no GPU is needed to check them).
The gpu-<N>gb.json ones are the GPU profiles of ris.config.profiles, one card each."""

from __future__ import annotations

from pathlib import Path

import pytest

from ris.config import ConfigError
from ris.config.load import load_config
from ris.config.profiles import card_of, pick_profile
from ris.config.sharing import resolve_policy
from ris.lanes import Lane
from ris.machine import MachineInfo

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"
GiB = 2**30


def test_8_cores_and_one_gpu() -> None:
    machine = MachineInfo(cores=tuple(range(8)), gpus=1, memory_bytes=32 * GiB)
    cfg = load_config(CONFIGS / "8core-1gpu.json", machine)
    llm, tts, image = (cfg.lane(lane) for lane in ("llm", "tts", "image"))
    assert llm.device == image.device == "cuda:0" and tts.device == "cpu"
    # One GPU shared: the image lane pauses its denoising while the LLM reads a prompt.
    assert resolve_policy(cfg, "image").mode == "block"
    assert not set(llm.cores or ()) & set(tts.cores or ())


def test_16_cores_and_two_gpus() -> None:
    machine = MachineInfo(cores=tuple(range(16)), gpus=2, memory_bytes=64 * GiB)
    cfg = load_config(CONFIGS / "16core-2gpu.json", machine)
    assert cfg.lane("llm").device == "cuda:0" and cfg.lane("image").device == "cuda:1"
    # A GPU each: nothing shared, so the image lane never pauses.
    assert resolve_policy(cfg, "image").mode == "none"


@pytest.mark.parametrize(("name", "gpus"), [("8core-1gpu.json", 0), ("16core-2gpu.json", 1)])
def test_on_a_smaller_machine_the_loader_says_what_is_missing(name: str, gpus: int) -> None:
    # The checks are real: the same file on a machine with fewer GPUs is refused, naming them.
    machine = MachineInfo(cores=tuple(range(16)), gpus=gpus)
    with pytest.raises(ConfigError, match=r"device: 'cuda:\d' is not available"):
        load_config(CONFIGS / name, machine)


PROFILE_CARDS_GB = (6, 8, 12, 16, 24, 48)


def test_every_gpu_example_is_a_profile() -> None:
    assert sorted(p.name for p in CONFIGS.glob("gpu-*.json")) == sorted(
        f"gpu-{gb}gb.json" for gb in PROFILE_CARDS_GB
    )


@pytest.mark.parametrize("gb", PROFILE_CARDS_GB)
def test_gpu_profile_examples_are_their_profile_and_fit_their_card(gb: int) -> None:
    card = card_of(gb)
    machine = MachineInfo(
        cores=tuple(range(8)), gpus=1, memory_bytes=32 * GiB, gpu_memory=((f"Fake {gb} GB", card),)
    )
    cfg = load_config(CONFIGS / f"gpu-{gb}gb.json", machine)  # the memory checks refuse nothing
    profile = pick_profile(card)
    for lane, settings in profile.lane_settings().items():
        assert cfg.lane(lane).device == settings["device"]
        assert cfg.lane(lane).gpu_memory_gb == settings.get("gpu_memory_gb")
    for lane, settings in profile.model_settings().items():
        assert cfg.lane(lane).default_model == settings["default_model"]
        assert cfg.lane(lane).models == settings["models"]
    assert cfg.lane(Lane.LLM).parallel == profile.llm_parallel
    assert cfg.lane(Lane.TTS).device == "cpu"
    # One card shared: the image lane pauses its denoising while the LLM reads a prompt.
    assert resolve_policy(cfg, "image").mode == "block"
    # The check is real: a card below the budgets' sum refuses the file, naming the budgets.
    budgets = sum(cfg.lane(lane).gpu_memory_gb or 0.0 for lane in (Lane.LLM, Lane.IMAGE))
    smaller = MachineInfo(cores=tuple(range(8)), gpus=1, gpu_memory=(("Smaller", int(budgets * GiB) - 1),))
    with pytest.raises(ConfigError, match=r"its lanes' budgets add up to"):
        load_config(CONFIGS / f"gpu-{gb}gb.json", smaller)
