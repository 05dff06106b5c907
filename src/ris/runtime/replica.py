"""One worker of a lane as the engine tracks it: the worker, its supervisor watch, the tasks it
runs and what it last said of itself (ready, with its slots and models, or failed)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ris import messages as m
from ris.runtime.supervisor import Watch, WorkerState
from ris.runtime.workers.base import LaneWorker


@dataclass(eq=False)
class Replica:
    """One worker of a lane and what the engine knows of it."""

    lane: str
    worker: LaneWorker
    watch: Watch
    running: set[str] = field(default_factory=set)
    ready_info: m.WorkerReady | None = None
    # The last heartbeat's word on borrowed cores (a lane with borrow_idle_cores).
    lending: m.Heartbeat | None = None
    # The last heartbeat's engine figures (an LLM worker whose backend counts them).
    engine: m.EngineFigures | None = None
    failure: m.WorkerFailed | None = None
    # The models it holds now, by name: those of WorkerReady, then ModelLoaded / ModelUnloaded.
    models: dict[str, m.ModelInfo] = field(default_factory=dict)
    # When each idle model's keep_alive unloads it, on the engine's clock (None: not before it
    # is evicted): a start's models from the lane's keep_alive at WorkerReady, then ModelExpiry.
    expiries: dict[str, float | None] = field(default_factory=dict)
    # What the worker said it waits for: the tasks it holds for a switch (ModelsHeld; empty:
    # none), and the model it is loading with when it began (ModelLoading, the engine's clock).
    held: m.ModelsHeld = m.NONE_HELD
    loading: tuple[str, float] | None = None
    # It said it exits (WorkerExiting): no more work goes to it until a fresh one is ready.
    exiting: bool = False
    # A keep_alive asked for a model while tasks ran on it here (m.KeepModel; None: the
    # lane's): the end of its last task takes it, as the worker's Residency does; a task of
    # that model started since takes it away (the later request's wins).
    kept: dict[str, float | None] = field(default_factory=dict)
    # How long its last start took, spawn to WorkerReady (None: it has not started yet): what
    # a restart is expected to take, in a queued task's ETA.
    start_s: float | None = None

    def forget_waits(self) -> None:
        """A worker gone (or started afresh) holds, loads and leaves nothing."""
        self.held = m.NONE_HELD
        self.loading = None
        self.exiting = False

    @property
    def ready(self) -> bool:
        return self.watch.state is WorkerState.READY

    def start_left(self, now: float) -> float:
        """Seconds until it is expected ready (0: ready, or not known): what is left of its
        last start's time, after the back-off of a restart still ahead."""
        watch = self.watch
        if watch.state is WorkerState.READY or self.start_s is None:
            return 0.0
        if watch.state is WorkerState.STARTING:
            return max(0.0, self.start_s - (now - watch.started_at))
        return max(0.0, watch.restart_at - now) + self.start_s

    @property
    def free_slots(self) -> int:
        if not self.ready or self.ready_info is None or self.exiting:
            return 0
        return self.ready_info.slots - len(self.running)
