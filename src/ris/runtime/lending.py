"""Applying work-conserving isolation inside a borrowing worker (the LLM lane's).

The pure decision (which idle lanes' cores may be borrowed now) is ris.preemption.lending's
`Borrower`; this module moves the process onto the answer between two steps of work:

* affinity of every thread of the process (/proc/self/task), not only the calling one:
  llama.cpp computes on OpenMP threads, created once by the thread that decodes and kept in a
  pool; `sched_setaffinity(0, ...)` or psutil's `cpu_affinity` moves only the main thread, and
  a pool thread left on the lender's core would keep running (or spinning) there after the
  cores are given back. New pool threads inherit the affinity of the thread creating them,
  which is set first, so widening before raising the thread count places them right;
* the thread count the runner hands to its backend (`llama_set_n_threads`), returned by `fit`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from ris.preemption.lending import Borrower


def pin_all_threads(cores: Iterable[int]) -> None:
    """Every thread of this process to `cores` (the whole process where threads cannot be
    listed: not on Linux)."""
    cpus = set(cores)
    if not sys.platform.startswith("linux"):
        import psutil

        psutil.Process().cpu_affinity(sorted(cpus))
        return
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, FileNotFoundError):
            pass  # a thread that ended since the listing


def thread_affinities(pid: int) -> dict[int, tuple[int, ...]]:
    """Each thread of `pid` and the cores it may run on, as the OS says (Linux)."""
    return {
        int(tid): tuple(sorted(os.sched_getaffinity(int(tid)))) for tid in os.listdir(f"/proc/{pid}/task")
    }


class CoreLending:
    """The borrowing worker's cores now. `fit(working)` before each step of work (and once the
    runner is idle, with False) moves the process and says the thread count to use."""

    def __init__(self, borrower: Borrower, own_threads: int) -> None:
        self._borrower = borrower
        self._own_threads = own_threads
        self.cores = borrower.policy.own
        self.borrowed: tuple[int, ...] = ()
        self.threads = own_threads

    def fit(self, working: bool) -> int | None:
        """The thread count to use from now on if it changed, else None. While working: own
        cores plus the idle lenders'; idle: own cores only, so an idle lane holds nothing of
        another's and a lender's first task finds its cores free."""
        cores = self._borrower.cores() if working else self._borrower.policy.own
        if cores == self.cores:
            return None
        pin_all_threads(cores)
        self.cores = cores
        self.borrowed = self._borrower.borrowed(cores)
        # One more thread per borrowed core: the lane's own cores keep the threads they had.
        threads = self._own_threads + len(self.borrowed)
        if threads == self.threads:
            return None
        self.threads = threads
        return threads
