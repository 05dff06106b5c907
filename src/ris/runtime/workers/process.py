"""A lane's worker as a local process: spawned, bound to its resources, spoken to over pipes.

Two one-way pipes, each framed as multiprocessing.Connection frames them, so the worker uses
plain blocking Connections while the server's ends are non-blocking and served by the event
loop itself (`add_reader` / `add_writer`): a message is handed to the engine the moment it is
complete, a half-written one never blocks the loop, and neither does a send to a worker that
has stopped reading, nor a killed process (it is reaped in a thread). Where the loop cannot
watch pipes (Windows' proactor) a reader thread and blocking sends take over. A generation
counter drops what a replaced process still had in flight. Spawn everywhere: fork would copy
the server's threads and event loop into the child, and spawn is the only method Windows has.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import pickle
import signal
import struct
import threading
import time
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any

import psutil

from ris import messages as m
from ris.preemption.board import ActivityBoard
from ris.preemption.policy import Activity
from ris.runtime import cpu_share
from ris.runtime.binding import spawn_environment
from ris.runtime.worker_main import worker_main
from ris.runtime.workers.base import CpuMeter, ResourceUsage, WorkerSpec, cpu_seconds

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
_READ_CHUNK = 1 << 16


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


def frame(data: bytes) -> bytes:
    """multiprocessing.Connection's framing: a 4-byte big-endian length (-1 and 8 bytes beyond 2 GiB)."""
    n = len(data)
    head = struct.pack("!i", n) if n <= 0x7FFFFFFF else struct.pack("!iQ", -1, n)
    return head + data


class Deframer:
    """Complete frames out of the bytes a pipe delivers, in whatever pieces they come."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out = []
        while len(buf) >= 4:
            (n,) = struct.unpack_from("!i", buf)
            head = 4
            if n == -1:
                if len(buf) < 12:
                    break
                (n,) = struct.unpack_from("!Q", buf, 4)
                head = 12
            if len(buf) < head + n:
                break
            out.append(bytes(buf[head : head + n]))
            del buf[: head + n]
        return out


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
        self._down: Any = None  # our end of server -> worker
        self._up: Any = None  # our end of worker -> server
        self._threaded = False  # the fallback: a reader thread and blocking sends
        self._watching = False  # our pipe ends are registered with the loop
        self._out = bytearray()  # frames not yet written to the worker
        self._flush_due = False  # a write of _out is scheduled for this loop iteration
        self._frames = Deframer()
        self._send_lock = threading.Lock()  # the thread-mode fallback's sends
        self._generation = 0
        self._ps: psutil.Process | None = None
        self._cpu = CpuMeter()  # the current process's CPU percent, whoever reads it

    # ----- LaneWorker ----------------------------------------------------------------------

    def start(self) -> None:
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
        self._generation += 1
        self._proc, self._down, self._up, self._ps = proc, down_w, up_r, None
        self._cpu = CpuMeter()
        self._out.clear()
        self._frames = Deframer()
        self._watch(self._generation)

    def send(self, msg: object) -> bool:
        if self._down is None:
            return False
        if self._threaded:
            try:
                with self._send_lock:
                    self._down.send(msg)
                return True
            except (OSError, ValueError):
                return False
        # Plain pickle: what Connection.recv unpickles, faster than ForkingPickler's copy-reducers.
        self._out += frame(pickle.dumps(msg, pickle.HIGHEST_PROTOCOL))
        # Written once per loop iteration, not per message: the tasks dispatched by one batch of
        # results (or by requests arriving together) reach the worker in one write and wake it
        # once. Each write to a pipe was the API process's costliest line under load: a
        # system call that wakes the worker, which on a busy machine takes the core from us.
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush_soon)
        return True

    def _flush_soon(self) -> None:
        self._flush_due = False
        self._flush()

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
        generation = self._generation
        while self._watching and generation == self._generation and self._readable(generation):
            pass
        return False

    def kill(self) -> None:
        proc = self._proc
        self._generation += 1  # whatever the old process still sends is dropped
        self._unwatch()
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            # Reaped off the loop: a process holding a GPU can take seconds to go.
            threading.Thread(target=proc.join, name="ris-reaper", daemon=True).start()
        for conn in (self._down, self._up):
            if conn is not None:
                conn.close()
        self._proc = self._down = self._up = None
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

    # ----- the pipes on the event loop -----------------------------------------------------

    def _watch(self, generation: int) -> None:
        up, down = self._up.fileno(), self._down.fileno()
        try:
            self._loop.add_reader(up, self._readable, generation)
        except NotImplementedError:
            self._threaded = True
            threading.Thread(
                target=self._read_in_thread, args=(self._up, generation), name="ris-reader", daemon=True
            ).start()
            return
        os.set_blocking(up, False)
        os.set_blocking(down, False)
        self._threaded, self._watching = False, True

    def _unwatch(self) -> None:
        """Stop watching both pipes (a writer may be pending even after the reader saw EOF)."""
        if not self._threaded:
            if self._up is not None and not self._up.closed:
                self._loop.remove_reader(self._up.fileno())
            if self._down is not None and not self._down.closed:
                self._loop.remove_writer(self._down.fileno())
        self._watching = False

    def _readable(self, generation: int) -> bool:
        """The worker wrote: take what is there, hand over every complete message. Whether it
        read anything (more may follow)."""
        if generation != self._generation:
            return False
        try:
            data = os.read(self._up.fileno(), _READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:  # the process is gone: no more work for it; the supervisor restarts it
            self._unwatch()
            self._deliver(m.WorkerGone())
            return False
        for payload in self._frames.feed(data):
            try:
                # From our own worker over a private pipe: what Connection.recv would unpickle.
                msg = ForkingPickler.loads(payload)
            except Exception:  # noqa: BLE001 - one unreadable message must not stop the reading
                log.exception("%s worker: unreadable message dropped", self.spec.lane)
                continue
            if generation != self._generation:
                return False  # delivering a message got this worker replaced
            try:
                self._deliver(msg)
            except Exception:  # noqa: BLE001 - the messages after it must still be delivered
                log.exception("%s worker: handling %s failed", self.spec.lane, type(msg).__name__)
        return True

    def _flush(self) -> bool:
        """Write what the pipe takes now; the loop writes the rest when the worker reads."""
        if self._down is None:
            return False
        fd = self._down.fileno()
        try:
            while self._out:
                del self._out[: os.write(fd, self._out)]
        except BlockingIOError:
            self._loop.add_writer(fd, self._flush)
            return True
        except OSError:  # the worker is gone; the supervisor notices
            self._loop.remove_writer(fd)
            return False
        self._loop.remove_writer(fd)
        return True

    def _read_in_thread(self, conn: Any, generation: int) -> None:
        while generation == self._generation:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                self._loop.call_soon_threadsafe(self._deliver_if_current, generation, m.WorkerGone())
                return
            except Exception:  # noqa: BLE001
                continue
            self._loop.call_soon_threadsafe(self._deliver_if_current, generation, msg)

    def _deliver_if_current(self, generation: int, msg: object) -> None:
        if generation == self._generation:
            self._deliver(msg)


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
