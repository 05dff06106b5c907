"""Applying work-conserving isolation inside a borrowing worker (the LLM lane's, the image
lane's where configured).

The pure decision (which idle lanes' cores may be borrowed now) is ris.preemption.lending's
`Borrower`; this module moves the process onto the answer between two steps of work, and off a
lent core as soon as its owner is busy (`CoreLending.watch`):

* affinity of every thread of the process (/proc/self/task), not only the calling one:
  llama.cpp computes on OpenMP threads, created once by the thread that decodes and kept in a
  pool; `sched_setaffinity(0, ...)` or psutil's `cpu_affinity` moves only the main thread, and
  a pool thread left on the lender's core would keep running (or spinning) there after the
  cores are given back. New pool threads inherit the affinity of the thread creating them,
  which is set first, so widening before raising the thread count places them right;
* the thread count the runner hands to its backend (`llama_set_n_threads`,
  `torch.set_num_threads`), returned by `fit`.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from ris.preemption.lending import Borrower
from ris.runtime.binding import pin_process

# How often a borrowing worker looks whether an owner took its cores back. Reading the board is
# a shared-memory read; a core is returned this long after its owner published its work (a
# TTS task's synthesis starts later than that: the worker marks itself busy on arrival).
WATCH_INTERVAL_S = 0.005

_log = logging.getLogger("ris.worker")


def thread_affinities(pid: int) -> dict[int, tuple[int, ...]]:
    """Each thread of `pid` and the cores it may run on, as the OS says (Linux); a thread that
    ends during the reading is left out."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = tuple(sorted(os.sched_getaffinity(int(tid))))
        except (ProcessLookupError, FileNotFoundError):
            pass
    return out


class CoreLending:
    """The borrowing worker's cores now. `fit(working)` before each step of work (and once the
    runner is idle, with False) moves the process and says the thread count to use.

    A step already under way when an owner gets work would keep a thread on the owner's core
    until it ends, and a step whose threads meet at barriers runs no faster than its slowest
    thread: one left behind a nice-0 owner on the lent core (the image worker at nice 19 gets
    about 1.5% of it) holds the whole step back, and the owner shares its core meanwhile. So
    `watch()` runs a thread that gives lent cores back the moment their owner is busy, within
    `WATCH_INTERVAL_S`: affinity can change under a running step; the thread count waits for
    the next `fit`. Only where the pool's threads sleep while they wait (the worker's binding
    says so): spinning waiters moved onto one core mid-step would each spin out a time slice at
    every barrier left in the step."""

    def __init__(self, borrower: Borrower, own_threads: int) -> None:
        self._borrower = borrower
        self._own_threads = own_threads
        self._lock = threading.Lock()
        self._lent = threading.Event()  # set while some core is borrowed: the watcher's cue
        self.cores = borrower.policy.own
        self.borrowed: tuple[int, ...] = ()
        self.threads = own_threads

    def fit(self, working: bool) -> int | None:
        """The thread count to use from now on if it changed, else None. While working: own
        cores plus the idle lenders'; idle: own cores only, so an idle lane holds nothing of
        another's and a lender's first task finds its cores free."""
        with self._lock:
            self._move(self._borrower.cores() if working else self._borrower.policy.own)
            # One more thread per borrowed core: the lane's own cores keep the threads they had.
            threads = self._own_threads + len(self.borrowed)
            if threads == self.threads:
                return None
            self.threads = threads
            return threads

    def give_back_taken(self) -> bool:
        """Off the cores whose owner is busy now, at once (affinity only); True if it moved."""
        with self._lock:
            if not self.borrowed:
                return False
            now = set(self._borrower.cores())
            if set(self.cores) <= now:
                return False
            self._move(tuple(c for c in self.cores if c in now))
            return True

    def watch(self) -> threading.Thread:
        """Start the thread that gives taken cores back under a running step (see the class);
        for a worker whose pool threads sleep at barriers (passive waits) only."""

        def loop() -> None:
            said = False
            while True:
                self._lent.wait()  # asleep while nothing is borrowed (most of a lane's life)
                time.sleep(WATCH_INTERVAL_S)
                try:
                    self.give_back_taken()
                except Exception:  # noqa: BLE001 - the watch must outlive one bad reading
                    if not said:  # once: a lasting failure would say it 200 times a second
                        _log.exception("giving lent cores back failed (said once)")
                        said = True

        thread = threading.Thread(target=loop, name="ris-lending-watch", daemon=True)
        thread.start()
        return thread

    def _move(self, cores: tuple[int, ...]) -> None:
        if cores == self.cores:
            return
        pin_process(cores)
        self.cores = cores
        self.borrowed = self._borrower.borrowed(cores)
        if self.borrowed:
            self._lent.set()
        else:
            self._lent.clear()
