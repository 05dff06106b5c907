"""A lane's worker as a local process: spawned, bound to its resources, spoken to over pipes.

Two one-way pipes, each framed as multiprocessing.Connection frames them, so the worker uses
plain blocking Connections while the server's ends are non-blocking and served by the event
loop itself (`add_reader` / `add_writer`): a message is handed to the engine the moment it is
complete, a half-written one never blocks the loop, and neither does a send to a worker that
has stopped reading, nor a killed process (it is reaped in a thread). Where the loop cannot
watch pipes (Windows' proactor) a reader thread and blocking sends take over (link.py's
LoopLink, which a Ray actor's direct link uses too). A replaced process's link is closed, so
nothing it still had in flight is delivered. Spawn everywhere: fork would copy
the server's threads and event loop into the child, and spawn is the only method Windows has.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil

from ris import messages as m
from ris.preemption.board import ActivityBoard
from ris.preemption.policy import Activity
from ris.runtime import cpu_share
from ris.runtime.binding import spawn_environment
from ris.runtime.worker_main import worker_main
from ris.runtime.workers.base import CpuMeter, ResourceUsage, WorkerSpec, cpu_seconds
from ris.runtime.workers.link import LoopLink

if TYPE_CHECKING:
    from ris.config import Config

log = logging.getLogger("ris.worker")
_CTX = mp.get_context("spawn")
# What usually sends the signals a worker dies of, said beside them.
_SIGNAL_CAUSES = {
    "SIGKILL": ": a kill -9, or the kernel's OOM killer (see dmesg)",
    "SIGSEGV": ": a crash in a native library",
    "SIGABRT": ": a native library aborted",
    "SIGBUS": ": a crash in a native library",
}


class ProcessWorkers:
    """The process kind's pool (WorkerPool): ProcessWorkers sharing one activity board, with a
    slot for every lane (they share one machine)."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.board = ActivityBoard(list(config.lanes), _CTX)
        self.loop = loop
        cpu_share.remove_stale()

    def __call__(self, spec: WorkerSpec, deliver: Callable[[object], None]) -> ProcessWorker:
        return ProcessWorker(spec, deliver, self.board, self.loop)

    def activity(self, lane: str) -> Activity | None:
        return self.board.get(lane) if lane in self.board.lanes else None

    def close(self) -> None:
        """The board is freed with this process; the batch lanes' cpu cgroups (min_cpu_share)
        are removed now that their workers are gone."""
        cpu_share.remove_groups(os.getpid())


class ProcessWorker:
    """One lane worker as a local process (the LaneWorker protocol)."""

    def __init__(
        self,
        spec: WorkerSpec,
        deliver: Callable[[object], None],
        board: ActivityBoard,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.spec = spec
        self._deliver = deliver
        self._board = board
        self._loop = loop
        self._proc: Any = None
        self._link: LoopLink | None = None  # our ends of the two pipes
        self._ps: psutil.Process | None = None
        self._cpu = CpuMeter()  # the current process's CPU percent, whoever reads it

    # ----- LaneWorker ----------------------------------------------------------------------

    def start(self) -> None:
        if self._link is not None:  # a start without a kill first: the old process is not heard
            self._link.close()
        down_r, down_w = _CTX.Pipe(duplex=False)
        up_r, up_w = _CTX.Pipe(duplex=False)
        proc = _CTX.Process(
            target=worker_main,
            args=(self.spec, down_r, up_w, self._board),
            name=f"ris-{self.spec.lane}-worker",
            daemon=True,
        )
        with spawn_environment(self.spec.binding):
            proc.start()
        down_r.close()
        up_w.close()
        self._proc, self._ps = proc, None
        self._cpu = CpuMeter()
        # The process is gone when its end of the pipe is: no more work for it; the supervisor
        # restarts it.
        self._link = LoopLink(
            self._loop, up_r, down_w, self._deliver, lambda: self._deliver(m.WorkerGone()), self.spec.lane
        )

    def send(self, msg: object) -> bool:
        return self._link is not None and self._link.send(msg)

    def how_it_ended(self) -> str | None:
        """How the process ended, for the log and the failed tasks' message (None while it
        runs): "the llm worker process died" told nobody whether it was a kill, the kernel's
        OOM killer or a crash in a native library."""
        code = None if self._proc is None else self._proc.exitcode
        if code is None:
            return None
        if code >= 0:
            return f"exit status {code}"
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}{_SIGNAL_CAUSES.get(name, '')}"

    def alive(self) -> bool:
        """The supervisor's question (Engine.check), which may deliver a dead worker's last
        messages; the worker's own figures ask the process directly."""
        if self._proc is None:
            return False
        if self._proc.is_alive():
            return True
        # Gone. What it wrote on its way out (WorkerExiting and its tasks' TaskErrors before an
        # exit over its memory ceiling, a WorkerFailed) may still wait in the pipe when the
        # supervisor looks before the loop reads: taken now, so its tasks fail with the worker's
        # own codes and a worker that cannot load is marked failed, not restarted as a crash.
        if self._link is not None:
            self._link.drain_all()
        return False

    def kill(self) -> None:
        proc, link = self._proc, self._link
        if link is not None:
            link.close()  # whatever the old process still sends is dropped
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            # Reaped off the loop: a process holding a GPU can take seconds to go.
            threading.Thread(target=proc.join, name="ris-reaper", daemon=True).start()
        self._proc = self._link = None
        # A worker killed mid-prefill must not leave the lanes that yield to it paused.
        if self.spec.lane in self._board.lanes:
            self._board.set(self.spec.lane, Activity.IDLE)

    async def stop(self, timeout: float) -> None:
        proc = self._proc
        if proc is not None and proc.is_alive():
            self.send(m.Shutdown())
            await asyncio.to_thread(proc.join, timeout)
        self.kill()

    def waiting_for(self) -> str | None:
        return None  # a local process runs as soon as it is spawned

    def memory_bytes(self) -> int | None:
        pid = self._proc.pid if self._proc is not None else None
        if pid is None or not self._proc.is_alive():  # not alive(): no messages read here
            return None
        try:
            if self._ps is None or self._ps.pid != pid:
                self._ps = psutil.Process(pid)
            return int(self._ps.memory_info().rss)
        except psutil.Error:
            return None

    def usage(self) -> ResourceUsage:
        """CPU percent (over the last half second or more, CpuMeter), resident memory and GPU
        memory, read from the OS."""
        pid = self._proc.pid if self._proc is not None else None
        if pid is None or not self._proc.is_alive():  # not alive(): a snapshot delivers nothing
            return ResourceUsage(pid=pid)
        try:
            if self._ps is None or self._ps.pid != pid:
                self._ps = psutil.Process(pid)
            with self._ps.oneshot():
                used = cpu_seconds(self._ps.cpu_times())
                return ResourceUsage(
                    pid=pid,
                    cpu_percent=self._cpu.read(used, time.monotonic()),
                    cpu_seconds=used,
                    rss_bytes=int(self._ps.memory_info().rss),
                    gpu_memory_bytes=gpu_memory(pid),
                )
        except psutil.Error:
            return ResourceUsage(pid=pid)


def gpu_memory(pid: int) -> int | None:
    """GPU memory used by a process, from NVML when it is installed and a GPU is present."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            total = 0
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                    if p.pid == pid and p.usedGpuMemory:
                        total += int(p.usedGpuMemory)
            return total
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no driver: report nothing rather than fail the endpoint
        return None
