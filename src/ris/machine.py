"""What this machine offers: CPU cores this process may use and NVIDIA GPUs, read once."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass

import psutil

from ris.gpus import gpu_devices


@dataclass(frozen=True)
class MachineInfo:
    # CPU cores the service may bind lanes to (the OS affinity of this process).
    cores: tuple[int, ...]
    # Number of NVIDIA GPUs visible (0 on a CPU-only machine).
    gpus: int
    # Physical memory; lanes' default memory ceilings are shares of it.
    memory_bytes: int = 16 * 2**30
    # Each GPU's name and total memory by NVML index (empty without NVML): lanes' GPU budgets
    # are checked against it.
    gpu_memory: tuple[tuple[str, int], ...] = ()

    def describe_cores(self) -> str:
        return ", ".join(str(c) for c in self.cores) or "none"


def _count_gpus() -> int:
    try:
        import pynvml  # nvidia-ml-py; optional

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML library or no driver: fall back to nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _visible_limit(count: int) -> int:
    """Honour CUDA_VISIBLE_DEVICES set around the service itself."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return count
    ids = [v for v in visible.split(",") if v.strip()]
    return min(count, len(ids))


@functools.cache
def machine_info() -> MachineInfo:
    try:
        cores = tuple(sorted(psutil.Process().cpu_affinity() or []))
    except (AttributeError, NotImplementedError):  # macOS has no affinity API
        cores = tuple(range(psutil.cpu_count() or 1))
    return MachineInfo(
        cores=cores or (0,),
        gpus=_visible_limit(_count_gpus()),
        memory_bytes=int(psutil.virtual_memory().total),
        gpu_memory=tuple((d.name, d.memory_total_bytes) for d in gpu_devices()),
    )
