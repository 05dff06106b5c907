"""How each lane's OpenMP threads wait (issue 26): spinning for a lane that owns its cores,
sleeping at once for one that shares them with a lane of the same or a higher priority."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ris.config.load import parse_config
from ris.config.sharing import waits_passively
from ris.lanes import Lane
from ris.machine import MachineInfo
from ris.runtime.binding import Binding, spawn_environment
from ris.runtime.specs import worker_spec

TWO_CORES = MachineInfo(cores=(0, 1), gpus=0)
ROOT = Path(__file__).resolve().parents[2]


def llm_lane(cores: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "cores": cores,
        "threads": len(cores),
        "default_model": "m",
        "models": {"m": {"backend": "llama_cpp", "source": "/x.gguf"}},
        **extra,
    }


def config(lanes: dict[str, Any]) -> dict[str, Any]:
    return {"lanes": lanes}


def test_an_llm_lane_that_owns_its_cores_spins() -> None:
    cfg = parse_config(config({"llm": llm_lane([0, 1])}), TWO_CORES)
    assert not waits_passively(cfg, Lane.LLM)
    binding = worker_spec(cfg, Lane.LLM, TWO_CORES).binding
    assert "OMP_WAIT_POLICY" not in binding.environment()
    assert binding.removed() == ("OMP_WAIT_POLICY",)


def test_the_shipped_config_spins_the_realtime_lanes_and_sleeps_the_image_lane() -> None:
    """The image lane (nice 19) shares both cores: it sleeps, so it takes no cycles from the
    LLM or TTS; they spin, which costs the image lane only what its priority gives up anyway."""
    cfg = parse_config(json.loads((ROOT / "config.json").read_text()), TWO_CORES)
    assert not waits_passively(cfg, Lane.LLM)
    assert not waits_passively(cfg, Lane.TTS)
    assert waits_passively(cfg, Lane.IMAGE)
    assert worker_spec(cfg, Lane.IMAGE, TWO_CORES).binding.environment()["OMP_WAIT_POLICY"] == "PASSIVE"


def test_lanes_of_equal_priority_on_a_shared_core_both_sleep() -> None:
    tts = {"cores": [1], "default_model": "e", "models": {"e": {"backend": "espeak"}}}
    lanes = {"llm": llm_lane([0, 1]), "tts": {**tts, "exclusive_cores": False}}
    data = config(lanes)
    data["lanes"]["llm"]["exclusive_cores"] = False
    cfg = parse_config(data, TWO_CORES)
    assert waits_passively(cfg, Lane.LLM)
    assert waits_passively(cfg, Lane.TTS)


def test_the_config_may_name_the_policy() -> None:
    cfg = parse_config(config({"llm": llm_lane([0, 1], wait_policy="passive")}), TWO_CORES)
    assert waits_passively(cfg, Lane.LLM)
    cfg = parse_config(config({"llm": llm_lane([0, 1], wait_policy="spin")}), TWO_CORES)
    assert not waits_passively(cfg, Lane.LLM)


def test_a_spinning_worker_does_not_inherit_the_servers_passive_policy(monkeypatch: Any) -> None:
    import os

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    with spawn_environment(Binding(cores=None, threads=2, nice=0, gpu=None, passive_wait=False)):
        assert "OMP_WAIT_POLICY" not in os.environ
        assert os.environ["OMP_NUM_THREADS"] == "2"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    with spawn_environment(Binding(cores=None, threads=1, nice=0, gpu=None)):
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
