"""What this machine offers: CPU cores this process may use and NVIDIA GPUs, read once.

Within a container's limits: `docker run --cpus=2` (a cgroup CPU quota) on a 64-core host
leaves the affinity at 64 cores, and `--memory=8g` leaves /proc/meminfo at the host's memory.
Laid out for the host, the lanes ran 48 + 16 threads on 2 CPUs of time and set memory
ceilings no worker could reach before the container's OOM killer. A quota limits time, not
which cores run: every core of the affinity may still be named, but the default layout uses
as many as the quota holds (rounded up), and no lane runs more threads than that; the
cgroup's memory limit is the memory.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

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
    # The cgroup CPU quota in CPUs, where it is below the affinity's cores (None otherwise).
    cpu_quota: float | None = None

    @property
    def cpus(self) -> int:
        """The CPUs' worth of time there is: the quota's, rounded up, else every core."""
        n = len(self.cores)
        return n if self.cpu_quota is None else max(1, min(n, math.ceil(self.cpu_quota)))

    @property
    def layout_cores(self) -> tuple[int, ...]:
        """The cores a layout built from the machine uses: as many as `cpus`, the first ones."""
        return self.cores[: self.cpus]

    def physical_gpu(self, index: int | None) -> int | str | None:
        """The card a lane's cuda:`index` is: the index-th the service may use."""
        if index is None or index >= len(self.gpu_ids):
            return index
        return self.gpu_ids[index]

    def describe_cores(self) -> str:
        return ", ".join(str(c) for c in self.cores) or "none"


def limiting_quota(cores: tuple[int, ...], quota: float | None) -> float | None:
    """The CPU quota where it holds fewer CPUs than the affinity has cores (else None)."""
    return None if quota is None or math.ceil(quota) >= len(cores) else quota


CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_files(name_v2: str, name_v1: str, controller: str, root: Path, own: str) -> list[Path]:
    """Where a limit may be written, the process's own cgroup first, then the root (a
    container's namespace shows its own group as the root): v2's unified file, v1's."""
    paths: dict[str, str] = {}
    for line in own.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for c in parts[1].split(",") if parts[1] else [""]:
                paths[c] = parts[2].lstrip("/")
    out = []
    if "" in paths:
        out += [root / paths[""] / name_v2, root / name_v2]
    if controller in paths:
        for folder in (controller, f"{controller},cpuacct", f"cpu,{controller}acct"):
            out += [root / folder / paths[controller] / name_v1, root / folder / name_v1]
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def cpu_quota(root: Path = CGROUP_ROOT, own: str | None = None) -> float | None:
    """The cgroup CPU quota in CPUs (None: none). v2 `cpu.max` ("200000 100000"), v1
    `cpu.cfs_quota_us` over `cpu.cfs_period_us` (-1: none)."""
    own = _read(Path("/proc/self/cgroup")) or "" if own is None else own
    for path in _cgroup_files("cpu.max", "cpu.cfs_quota_us", "cpu", root, own):
        text = _read(path)
        if text is None:
            continue
        try:
            if path.name == "cpu.max":
                quota, _, period = text.partition(" ")
                return None if quota == "max" else int(quota) / int(period or 100000)
            period_text = _read(path.with_name("cpu.cfs_period_us"))
            return None if int(text) <= 0 or not period_text else int(text) / int(period_text)
        except (ValueError, ZeroDivisionError):  # not what the kernel writes: no limit known
            return None
    return None


def memory_limit(root: Path = CGROUP_ROOT, own: str | None = None) -> int | None:
    """The cgroup memory limit in bytes (None: none). v2 `memory.max` ("max": none), v1
    `memory.limit_in_bytes` (a page-rounded 2^63: none)."""
    own = _read(Path("/proc/self/cgroup")) or "" if own is None else own
    for path in _cgroup_files("memory.max", "memory.limit_in_bytes", "memory", root, own):
        text = _read(path)
        if text is None:
            continue
        if text == "max" or not text.isdigit() or int(text) >= 2**62:
            return None
        return int(text)
    return None


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
    cores = cores or (0,)
    quota = limiting_quota(cores, cpu_quota() if os.name == "posix" else None)
    memory = int(psutil.virtual_memory().total)
    limit = memory_limit() if os.name == "posix" else None
    ids = visible_gpus(_count_gpus(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    cards = {d.index: (d.name, d.memory_total_bytes) for d in gpu_devices()}
    return MachineInfo(
        cores=cores,
        cpu_quota=quota,
        gpus=len(ids),
        memory_bytes=memory if limit is None else min(memory, limit),
        # By the cards' order as the service sees them; not known (a card NVML does not
        # answer for, a UUID not resolved here): no budget is checked against NVML.
        gpu_memory=tuple(cards[i] for i in ids if isinstance(i, int))
        if all(isinstance(i, int) and i in cards for i in ids)
        else (),
        gpu_ids=ids,
    )
