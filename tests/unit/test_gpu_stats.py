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


def test_a_card_that_does_not_say_its_utilization_still_reports_its_memory() -> None:
    """NVML answers 'not supported' for utilization on MIG instances: that field is unknown,
    where every card used to vanish from /metrics, /api/stats and the console."""

    class MIG(FakeNVML):
        def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    gpu = _device(MIG(), 1)
    assert gpu.utilization_percent is None and gpu.memory_total_bytes == 80 * 2**30
    from ris.api.prometheus import _gpus

    (busy, used, total) = _gpus([gpu])
    assert busy.samples == [] and [s.value for s in used.samples] == [3 * 2**30]


def test_whatever_this_machine_has_is_consistent() -> None:
    # No GPU or no driver (CI): an empty list, no exception; a GPU: sane numbers.
    for gpu in gpu_devices():
        assert 0 <= gpu.memory_used_bytes <= gpu.memory_total_bytes
        assert gpu.utilization_percent is None or 0 <= gpu.utilization_percent <= 100
