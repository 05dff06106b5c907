"""CUDA_VISIBLE_DEVICES around the server names the cards it may use: cuda:N is the N-th of
them, and a worker on cuda:N is given that physical card (it was given card N, one the operator
had excluded, while a listed one was refused)."""

from __future__ import annotations

from pathlib import Path

from ris.config import Config
from ris.config.load import parse_config
from ris.machine import MachineInfo, visible_gpus
from ris.runtime.specs import worker_spec


def test_the_variable_names_cards_as_cuda_reads_it() -> None:
    assert visible_gpus(4, None) == (0, 1, 2, 3)
    assert visible_gpus(4, "2,3") == (2, 3)
    assert visible_gpus(4, " 3 , 1") == (3, 1)
    assert visible_gpus(4, "-1") == () and visible_gpus(4, "") == ()
    assert visible_gpus(4, "1,9,2") == (1,)  # CUDA stops at the first entry that is no card
    # A UUID (a MIG instance's too) stays as written: the worker's own variable names it.
    assert visible_gpus(2, "MIG-8f3e,1") == ("MIG-8f3e", 1)
    assert visible_gpus(1, "GPU-a,GPU-b") == ("GPU-a",)  # no more than there are cards


def llm_on(device: str, machine: MachineInfo, tmp: Path) -> Config:
    model = {"m": {"backend": "noop"}}
    lanes = {
        "llm": {"device": device, "cores": [0], "default_model": "m", "models": model},
        "tts": {"cores": [1], "default_model": "e", "models": {"e": {"backend": "espeak"}}},
        "image": {"enabled": False},
    }
    return parse_config({"data_dir": str(tmp), "lanes": lanes}, machine)


def test_a_lane_on_cuda_1_runs_on_the_second_card_the_server_may_use(tmp_path: Path) -> None:
    machine = MachineInfo(cores=(0, 1, 2, 3), gpus=2, gpu_ids=(2, 3))
    binding = worker_spec(llm_on("cuda:1", machine, tmp_path), "llm", machine).binding
    assert binding.gpu == 3 and binding.environment()["CUDA_VISIBLE_DEVICES"] == "3"
    assert machine.physical_gpu(0) == 2 and machine.physical_gpu(None) is None


def test_a_lane_on_a_card_named_by_uuid_is_given_that_uuid(tmp_path: Path) -> None:
    machine = MachineInfo(cores=(0, 1), gpus=1, gpu_ids=("MIG-8f3e",))
    binding = worker_spec(llm_on("cuda:0", machine, tmp_path), "llm", machine).binding
    assert binding.environment()["CUDA_VISIBLE_DEVICES"] == "MIG-8f3e"
