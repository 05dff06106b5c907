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
    # Each visible GPU's name and total memory, in the order the service sees them (cuda:0
    # first; empty without NVML): lanes' GPU budgets are checked against it.
    gpu_memory: tuple[tuple[str, int], ...] = ()
    # The physical (NVML, bus order) index of each GPU the service sees, cuda:0 first: the cards
    # CUDA_VISIBLE_DEVICES around the service names, or all of them (empty: not known, cuda:N is
    # card N).
    gpu_ids: tuple[int | str, ...] = ()

    def physical_gpu(self, index: int | None) -> int | str | None:
        """The card a lane's cuda:`index` is: the index-th the service may use."""
        if index is None or index >= len(self.gpu_ids):
            return index
        return self.gpu_ids[index]

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


def visible_gpus(count: int, visible: str | None) -> tuple[int | str, ...]:
    """The cards of the `count` there are that the service may use, in its order, as
    CUDA_VISIBLE_DEVICES around it says: "2,3" is cards 2 and 3 (seen as cuda:0 and cuda:1); a
    UUID ("GPU-...", "MIG-..." for a MIG instance) is kept as written, for the worker's own
    variable (CUDA reads it there too); as CUDA reads the list, it stops at its first entry
    that is no card ("-1", an index past the last card). Unset: every card."""
    if visible is None:
        return tuple(range(count))
    ids: list[int | str] = []
    for entry in visible.split(","):
        entry = entry.strip()
        if entry.startswith(("GPU-", "MIG-")) and entry not in ids:
            ids.append(entry)
        elif entry.isdigit() and int(entry) < count and int(entry) not in ids:
            ids.append(int(entry))
        else:
            break
    return tuple(ids[:count])


@functools.cache
def machine_info() -> MachineInfo:
    try:
        cores = tuple(sorted(psutil.Process().cpu_affinity() or []))
    except (AttributeError, NotImplementedError):  # macOS has no affinity API
        cores = tuple(range(psutil.cpu_count() or 1))
    ids = visible_gpus(_count_gpus(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    cards = {d.index: (d.name, d.memory_total_bytes) for d in gpu_devices()}
    return MachineInfo(
        cores=cores or (0,),
        gpus=len(ids),
        memory_bytes=int(psutil.virtual_memory().total),
        # By the cards' order as the service sees them; not known (a card NVML does not
        # answer for, a UUID not resolved here): no budget is checked against NVML.
        gpu_memory=tuple(cards[i] for i in ids if isinstance(i, int))
        if all(isinstance(i, int) and i in cards for i in ids)
        else (),
        gpu_ids=ids,
    )
