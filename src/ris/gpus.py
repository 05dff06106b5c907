"""The machine's NVIDIA GPUs as NVML reports them: memory and utilisation, for /api/stats and
/metrics. Without nvidia-ml-py, a driver or a GPU there is nothing to report: an empty list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GPUDevice:
    index: int  # NVML's index (the machine's, not a worker's CUDA_VISIBLE_DEVICES view)
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    # Of the last sample period, as nvidia-smi shows it; None where NVML does not say (MIG
    # instances: "not supported"), which leaves the card's memory still reported.
    utilization_percent: int | None


# Set once NVML has failed to start: no driver does not appear between two requests, and a
# failing dlopen on every /metrics scrape is waste.
_unavailable = False


def gpu_devices() -> list[GPUDevice]:
    global _unavailable
    if _unavailable:
        return []
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no package, no library, no driver: nothing to report
        _unavailable = True
        return []
    try:
        count = pynvml.nvmlDeviceGetCount()
    except Exception:  # noqa: BLE001 - the driver answers nothing: nothing to report
        pynvml.nvmlShutdown()
        return []
    devices = []
    try:
        for i in range(count):
            try:
                devices.append(_device(pynvml, i))
            except Exception:  # noqa: BLE001 - one card fallen off the bus: the others still count
                continue
        return devices
    finally:
        pynvml.nvmlShutdown()


def _device(nvml: Any, index: int) -> GPUDevice:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    return GPUDevice(
        index=index,
        name=name.decode() if isinstance(name, bytes) else str(name),
        memory_used_bytes=int(memory.used),
        memory_total_bytes=int(memory.total),
        utilization_percent=_utilization(nvml, handle),
    )


def _utilization(nvml: Any, handle: Any) -> int | None:
    try:
        return int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:  # noqa: BLE001 - NVML_ERROR_NOT_SUPPORTED on a MIG instance, and the like
        return None


__all__ = ["GPUDevice", "gpu_devices"]
