"""GPU statistics from NVML (rendered for /metrics in test_metrics.py); nothing at all where there
is no GPU."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ris.api.stats import gpus_json
from ris.gpus import GPUDevice, _device, gpu_devices


class FakeNVML:
    """The few NVML calls ris makes, answering for one GPU."""

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"  # older nvidia-ml-py returns bytes

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=3 * 2**30, total=80 * 2**30, free=77 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=37, memory=12)


def test_a_device_as_nvml_describes_it() -> None:
    gpu = _device(FakeNVML(), 0)
    assert gpu == GPUDevice(0, "NVIDIA H100 80GB HBM3", 3 * 2**30, 80 * 2**30, 37)
    assert gpus_json([gpu])[0]["utilization_percent"] == 37


def test_whatever_this_machine_has_is_consistent() -> None:
    # No GPU or no driver (CI): an empty list, no exception; a GPU: sane numbers.
    for gpu in gpu_devices():
        assert 0 <= gpu.memory_used_bytes <= gpu.memory_total_bytes
        assert 0 <= gpu.utilization_percent <= 100
