"""What the engine needs from the workers of a kind, wherever they run: the `WorkerPool` and
`LaneWorker` protocols, and the `WorkerSpec` a worker is built from.

Kinds: `ProcessWorkers` (spawned local processes with pipes, process.py), `RayWorkers` (Ray
actors on cluster nodes, ray.py) and, in unit tests, an in-memory fake. A worker is told what
to run with wire messages (ris.messages) and hands every message it receives to the `deliver`
callback it was built with, on the engine's event loop thread. It may run several tasks at
once (`WorkerReady.slots`) and may live on another machine: results come back as values inside
the messages, never as files (see ris.runtime.files).

The activity rule, the same for every kind: real-time workers publish what they do (idle,
prefill, decode, busy) on an activity board that the lanes yielding to them read; the pool
answers `activity(lane)` from it. A worker that is killed (`kill()`, and `stop()`, which ends
in one) leaves its lane's slot IDLE: a worker killed mid-prefill must not leave the lanes that
yield to it paused until its successor starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ris.messages import CancelTask, KeepModel, RunTask
from ris.preemption.lending import Lender
from ris.preemption.policy import Activity, PreemptionPolicy
from ris.runtime.binding import Binding

if TYPE_CHECKING:
    from ris.config import Config


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to start, picklable (it crosses to the worker as is)."""

    lane: str
    # "module:ATTR" of the lane kind, imported inside the worker.
    kind: str
    binding: Binding
    device: str
    # The lane's LaneConfig as JSON: the config model is rebuilt inside the worker.
    lane_config_json: str
    # Model name -> its backend's "module:Class", resolved by the server from the kind's registry.
    backends: dict[str, str]
    # A folder on the worker's machine for model caches (never for results).
    data_dir: str
    # Preemptible lanes: how to yield, and to which real-time lanes (those sharing its hardware).
    preemption: PreemptionPolicy | None = None
    yield_to: tuple[str, ...] = ()
    # A defaulted memory ceiling on a cluster: this share of the memory of the node that runs
    # the worker, set there (binding.memory_limit_bytes is None until then).
    memory_share: float | None = None
    # Work-conserving isolation: the lanes whose idle cores this worker borrows; whether another
    # lane borrows this one's (it then says "busy" on the board as a task arrives).
    borrow_from: tuple[Lender, ...] = ()
    lends: bool = False
    # A batch lane's minimum CPU share under saturation (ris.runtime.cpu_share); None: none.
    min_cpu_share: float | None = None
    # A GPU lane's memory budget on its card (config.fit_checks.gpu_budget), in bytes: torch
    # backends cap their allocator to it. None: unknown here (see LaneConfig.gpu_memory_fraction).
    gpu_budget_bytes: int | None = None


@dataclass(frozen=True)
class ResourceUsage:
    pid: int | None = None
    cpu_percent: float | None = None  # since the previous reading
    cpu_seconds: float | None = None  # user and system CPU time since the process started
    rss_bytes: int | None = None
    gpu_memory_bytes: int | None = None
    # The Ray node running the worker (its id and address); None for a local process.
    node: str | None = None
    node_ip: str | None = None
    # How its messages travel (a Ray actor: "direct" over its own link, "ray" through Ray's
    # calls; None until that is settled, and for a local process).
    link: str | None = None


def cpu_seconds(times: Any) -> float:
    """A process's CPU time from psutil's `cpu_times()`: user and system, as Prometheus's
    `process_cpu_seconds_total` counts it."""
    return float(times.user + times.system)


class CpuMeter:
    """CPU percent over at least `window_s`, whoever asks: psutil's cpu_percent(None) measures
    since its previous call, so each reader (console tabs, the chart sampler, /api/stats, a
    /metrics scrape) reset it for the next, and one read a few milliseconds after another read
    0 or 300%. Readers sooner than the window get the last figure."""

    def __init__(self, window_s: float = 0.5) -> None:
        self.window_s = window_s
        self._at: float | None = None
        self._seconds = 0.0
        self.percent = 0.0

    def read(self, cpu_seconds: float, now: float) -> float:
        if self._at is None or cpu_seconds < self._seconds:  # first read, or another process
            self._at, self._seconds = now, cpu_seconds
        elif now - self._at >= self.window_s:
            self.percent = 100.0 * (cpu_seconds - self._seconds) / (now - self._at)
            self._at, self._seconds = now, cpu_seconds
        return self.percent


class LaneWorker(Protocol):
    def start(self) -> None:
        """Begin starting (spawn, load models); returns at once. WorkerReady or WorkerFailed follows."""

    def send(self, msg: RunTask | CancelTask | KeepModel) -> bool:
        """Deliver a message to the worker; False when it is already gone."""

    def alive(self) -> bool: ...

    def kill(self) -> None:
        """Stop it now; messages it sent but were not yet delivered are dropped. Its lane's
        activity reads IDLE afterwards (the rule above)."""

    async def stop(self, timeout: float) -> None:
        """Ask it to exit; kill it if it has not within `timeout` seconds."""

    def usage(self) -> ResourceUsage: ...

    def memory_bytes(self) -> int | None:
        """Resident memory now (None when unknown); read by the watchdog several times a second,
        so cheap and without side effects on usage()'s CPU reading."""

    def waiting_for(self) -> str | None:
        """What keeps a started worker from even running, said for people (a Ray actor no node
        has room for: the resources it asks for and what is free); None otherwise, always for
        a local process. Cheap: read on every submit."""


class WorkerPool(Protocol):
    """The workers of one kind for every lane, and what they share (an activity board, a
    cluster's placement). The engine opens one per server and reads it only through these."""

    def __call__(self, spec: WorkerSpec, deliver: Callable[[object], None]) -> LaneWorker:
        """A new, not yet started worker for `spec`; `deliver(msg)` is called on the engine's
        loop thread."""

    def activity(self, lane: str) -> Activity | None:
        """What the lane's worker last published on the activity board; None where the lane
        has no slot on a board (it neither yields nor is yielded to) or the kind keeps none."""

    def close(self) -> None:
        """Free what the pool holds beyond its workers (called after every worker stopped)."""


class PoolOpener(Protocol):
    """A worker kind's pool class: opened once per server, on a thread (it may block, joining a
    cluster), with the event loop its workers deliver on."""

    def __call__(self, config: Config, loop: asyncio.AbstractEventLoop) -> WorkerPool: ...
