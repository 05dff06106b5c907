"""Binding a worker process to its lane's resources, before any model library is imported.

Order matters: thread-count variables and CUDA_VISIBLE_DEVICES are read by OpenMP, BLAS,
onnxruntime, llama.cpp and CUDA when they load, so `apply_binding` runs first thing in the
freshly spawned worker, and backends are imported only afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psutil

# The OOM-killer bias of a batch lane's worker (Binding.oom_score_adj): about as if it held half
# the machine's memory more than it does, so the kernel stops it before a real-time worker.
BATCH_OOM_SCORE_ADJ = 500

# Every pool-size knob the libraries we host read at import time.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "TORCH_NUM_THREADS",
    "ORT_NUM_THREADS",
)


@dataclass(frozen=True)
class Binding:
    """The resources one worker process may use."""

    # CPU cores the process is pinned to; None leaves the affinity as inherited.
    cores: tuple[int, ...] | None
    # Size of every math library's thread pool; the lane's backend is told the same number.
    threads: int
    # OS priority, 0 (normal) to 19 (lowest); the image lane runs at 19 on shared cores.
    nice: int
    # Physical GPU the worker sees (as cuda:0): its index, or the UUID the server's own
    # CUDA_VISIBLE_DEVICES named it by; None hides every GPU.
    gpu: int | str | None
    # The lane's memory ceiling; the server's watchdog enforces it on resident memory (see
    # ris.runtime.supervisor) and, on Linux, an OS limit a little above it stops an allocation
    # spike between two samples (MemoryError in the worker: its task fails, it restarts).
    memory_limit_bytes: int | None = None
    # OpenMP threads sleep at once when they wait (OMP_WAIT_POLICY=PASSIVE) rather than spin a
    # moment first (libgomp's default): see ris.config.sharing.waits_passively for the rule.
    passive_wait: bool = True
    # Cores other lanes may lend this one while they idle (work-conserving isolation); OpenMP
    # must see them when it loads, see `load_openmp_seeing`.
    may_borrow: tuple[int, ...] = ()
    # Linux's OOM killer's bias (/proc/self/oom_score_adj, -1000 to 1000; raising it needs no
    # privilege). The lanes' ceilings are each a share of the machine and may add up to more
    # than it has: when the machine runs out before any ceiling is reached, the kernel picked
    # the biggest process, an idle LLM worker, over the image worker that was growing. A batch
    # lane is made its first choice (BATCH_OOM_SCORE_ADJ), the real-time lanes kept.
    oom_score_adj: int = 0

    def removed(self) -> tuple[str, ...]:
        """Variables the worker must not inherit from the server: a spinning lane drops an
        OMP_WAIT_POLICY of the server's environment, so libgomp's default applies."""
        return () if self.passive_wait else ("OMP_WAIT_POLICY",)

    def environment(self) -> dict[str, str]:
        env = {var: str(self.threads) for var in THREAD_ENV_VARS}
        env["CUDA_VISIBLE_DEVICES"] = "" if self.gpu is None else str(self.gpu)
        # The lane's GPU index is NVML's (the fit checks size its budget from NVML's card):
        # CUDA numbers cards fastest first unless told to follow the bus, as NVML does.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        # Models come from packages or configured paths, never from a hub at run time.
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
        env["HF_DATASETS_OFFLINE"] = "1"
        # Workers log to the server's output: no progress bars or advisory chatter there.
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        env["TRANSFORMERS_VERBOSITY"] = "error"
        env["DIFFUSERS_VERBOSITY"] = "error"
        # A spinning OpenMP waiter steals cycles from a lane that shares its core; one that
        # sleeps at once pays a futex wake per barrier (hundreds per llama.cpp token).
        if self.passive_wait:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        return env


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def spawn_environment(binding: Binding) -> Iterator[None]:
    """Give a process spawned inside this block the binding's environment from its first
    instruction (and visible to the OS in /proc/<pid>/environ), then restore ours."""
    env = binding.environment()
    removed = binding.removed()
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in (*env, *removed)}
        os.environ.update(env)
        for k in removed:
            os.environ.pop(k, None)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


# The OS limit sits this far above the ceiling the watchdog enforces: the watchdog, which
# fails the task with a clear code, acts first on memory that grows; the OS limit only on a
# jump too fast for a sample every quarter second.
OS_LIMIT_MARGIN = 1.5


def apply_binding(binding: Binding, with_nice: bool = True) -> None:
    """Bind the calling process, every thread of it; call before importing torch, onnxruntime
    or llama.cpp. `with_nice` False: the nice level is left to the caller (a batch lane's
    minimum share sets it: cpu_share.apply_min_cpu_share).

    Every thread, not the process's main one only: on Linux affinity and nice are per thread,
    and psutil's process calls change the thread whose id is the pid. A local worker binds
    before it has other threads; a Ray actor binds from its serving thread, beside Ray's own,
    and its pools (OpenMP, torch, onnxruntime) are that thread's children: bound through the
    main thread only, they ran on every core at nice 0 while the stats said pinned."""
    os.environ.update(binding.environment())
    for var in binding.removed():
        os.environ.pop(var, None)
    _limit_data_memory(binding)
    _adjust_oom_score(binding.oom_score_adj)
    if binding.cores is not None and binding.may_borrow:
        load_openmp_seeing((*binding.cores, *binding.may_borrow))
    if binding.cores is not None:
        pin_process(binding.cores)
    if binding.nice and with_nice:
        try:
            renice_process(binding.nice)
        except PermissionError:
            # Below where it started (a Ray actor at Ray's 15 on a node without the privilege):
            # it keeps that level, which its WorkerReady reports, rather than failing to start.
            pass


def thread_ids() -> list[int]:
    """This process's threads (Linux; empty where they cannot be listed)."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except FileNotFoundError:
        return []


def each_thread(apply: Callable[[int], None]) -> int:
    """`apply` to every thread of this process (Linux), listed again until no new one shows:
    a thread that one not yet reached starts during a pass (a pool growing, a Ray actor's own
    threads) would be missed. A thread that ends meanwhile is skipped. Returns how many were
    reached."""
    done: set[int] = set()
    while True:
        new = [tid for tid in thread_ids() if tid not in done]
        if not new:
            return len(done)
        for tid in new:
            try:
                apply(tid)
            except (ProcessLookupError, FileNotFoundError):
                pass  # a thread that ended since the listing
        done.update(new)


def pin_process(cores: tuple[int, ...]) -> None:
    """Every thread of this process onto `cores` (the process, where threads cannot be listed),
    those a pool creates while the pass runs included: such a thread would inherit its
    creator's old cores (lending moves a worker under a running step)."""
    if not sys.platform.startswith("linux"):
        proc = psutil.Process()
        if hasattr(proc, "cpu_affinity"):
            proc.cpu_affinity(list(cores))
        return
    cpus = set(cores)
    each_thread(lambda tid: os.sched_setaffinity(tid, cpus))


def renice_process(level: int) -> None:
    """Every thread of this process to nice `level` (Windows: a priority class). Raising a
    nice level needs no privilege; lowering one does (PermissionError, to the caller)."""
    if sys.platform == "win32":
        psutil.Process().nice(
            psutil.IDLE_PRIORITY_CLASS if level >= 15 else psutil.BELOW_NORMAL_PRIORITY_CLASS
        )
        return
    os.setpriority(os.PRIO_PROCESS, 0, level)  # the calling thread (the process, off Linux)
    if sys.platform.startswith("linux"):  # and every other, those started meanwhile included
        each_thread(lambda tid: os.setpriority(os.PRIO_PROCESS, tid, level))


# The GNU OpenMP runtime llama.cpp's CPU backend links (llama-cpp-python's Linux builds link the
# system's libgomp.so.1; a wheel bundling a renamed copy would not share this one).
LIBGOMP = "libgomp.so.1"
# The cores libgomp was loaded over by load_openmp_seeing (None: it did not load it).
openmp_loaded_over: tuple[int, ...] | None = None

_log = logging.getLogger("ris.worker")


def load_openmp_seeing(cores: tuple[int, ...]) -> None:
    """Load libgomp while this process may run on `cores`, before the binding narrows it.

    libgomp counts the cores it may use once, when it loads, and when a parallel region has
    more threads than that count its waiters spin 100 rounds instead of ~300,000 before they
    sleep: each of llama.cpp's hundreds of barriers per token becomes a futex sleep and wake.
    A borrowing LLM worker loads llama.cpp pinned to its own core and later decodes on two
    threads over a lent one; measured on this project's 2-core machine, a SmolLM2 token took
    17.5 ms that way against 12.6 ms with libgomp loaded over both cores
    (bench/llm_lending_openmp.py). Loaded here, the library's own later load of the same soname
    reuses this copy. Nothing happens where there is no libgomp (macOS, a build on llama.cpp's
    own thread pool); a libgomp already loaded keeps the count it made (said in the log).
    OMP_PLACES / OMP_PROC_BIND in the server's environment would place threads over `cores`
    too: the binding does not set them."""
    global openmp_loaded_over
    if not sys.platform.startswith("linux") or openmp_loaded_over is not None:
        return
    try:
        ctypes.CDLL(LIBGOMP, mode=os.RTLD_NOLOAD | ctypes.RTLD_GLOBAL)
        _log.warning("libgomp was loaded before the binding: it counted the cores it had then")
        return
    except OSError:
        pass  # not loaded yet: the usual case
    mine = os.sched_getaffinity(0)
    try:
        # Linux narrows a partly allowed set to the allowed cores (a container's cpuset).
        os.sched_setaffinity(0, set(cores))
    except OSError:
        _log.warning("could not widen to cores %s before loading libgomp", sorted(cores))
        return
    try:
        for name in (LIBGOMP, None):
            # By soname first; else where ldconfig finds one (a subprocess: only when needed).
            path = name or ctypes.util.find_library("gomp")
            if not path:
                continue
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            openmp_loaded_over = tuple(sorted(os.sched_getaffinity(0)))
            return
    finally:
        os.sched_setaffinity(0, mine)


def observed_affinity() -> tuple[int, ...] | None:
    """The calling thread's cores (the ones its pools inherit), as the OS says."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    proc = psutil.Process()
    if not hasattr(proc, "cpu_affinity"):
        return None
    return tuple(sorted(proc.cpu_affinity() or []))


def _adjust_oom_score(adj: int) -> None:
    """Raise the process's OOM-killer bias to `adj`, never lower it: a Ray worker starts at
    Ray's 1000 (worker_oom_score_adjustment), a service may run under systemd's OOMScoreAdjust;
    written down to 500, the image actor would have been spared before the real-time ones."""
    if adj <= 0 or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/oom_score_adj") as f:
            if int(f.read()) >= adj:
                return
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(adj))


def _limit_data_memory(binding: Binding) -> None:
    """RLIMIT_DATA (Linux >= 4.7 counts private writable mappings: the heap and anonymous
    mmaps, not model files mapped read-only). Not on GPU workers: CUDA's driver maps large
    writable regions it never touches, which would trip a limit on virtual size."""
    if binding.memory_limit_bytes is None or binding.gpu is not None or not sys.platform.startswith("linux"):
        return
    import resource

    limit = int(binding.memory_limit_bytes * OS_LIMIT_MARGIN)
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
