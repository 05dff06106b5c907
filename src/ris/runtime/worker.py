"""What the engine needs from a lane's worker, wherever it runs: the `LaneWorker` protocol.

Implementations: `ProcessWorker` (a spawned local process with a pipe, process_worker.py),
`RayWorker` (a Ray actor on a cluster node, ray_worker.py) and, in unit tests, an in-memory
fake. A worker is told what to run with wire messages (ris.messages) and hands every message
it receives to the `deliver` callback it was built with, on the engine's event loop thread.
It may run several tasks at once (`WorkerReady.slots`) and may live on another machine:
results come back as values inside the messages, never as files (see ris.runtime.files).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ris.messages import CancelTask, RunTask
from ris.preemption.policy import PreemptionPolicy
from ris.runtime.binding import Binding


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


@dataclass(frozen=True)
class ResourceUsage:
    pid: int | None = None
    cpu_percent: float | None = None  # since the previous reading
    rss_bytes: int | None = None
    gpu_memory_bytes: int | None = None
    # The Ray node running the worker (its id and address); None for a local process.
    node: str | None = None
    node_ip: str | None = None


class LaneWorker(Protocol):
    def start(self) -> None:
        """Begin starting (spawn, load models); returns at once. WorkerReady or WorkerFailed follows."""

    def send(self, msg: RunTask | CancelTask) -> bool:
        """Deliver a message to the worker; False when it is already gone."""

    def alive(self) -> bool: ...

    def kill(self) -> None:
        """Stop it now; messages it sent but were not yet delivered are dropped."""

    async def stop(self, timeout: float) -> None:
        """Ask it to exit; kill it if it has not within `timeout` seconds."""

    def usage(self) -> ResourceUsage: ...

    def memory_bytes(self) -> int | None:
        """Resident memory now (None when unknown); read by the watchdog several times a second,
        so cheap and without side effects on usage()'s CPU reading."""


# Builds the worker of `spec`; `deliver(msg)` must be called on the engine's loop thread.
WorkerFactory = Callable[[WorkerSpec, Callable[[object], None]], LaneWorker]
