"""Task records and the vocabulary the scheduler speaks: states and priority classes (a lane is
named by a plain string; the built-in names are ris.lanes.Lane)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class PriorityClass(enum.IntEnum):
    """Real-time work (chat, speech) is ordered before batch work (images)."""

    REALTIME = 0
    BATCH = 1


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)


@dataclass(frozen=True)
class TaskSpec:
    """What a caller asks the scheduler to run; the payload is opaque to the scheduler."""

    lane: str  # a lane name ("llm", "tts", "image" or a registered kind's)
    # Who goes first within the lane: higher runs earlier; each step is worth `aging_s` of waiting.
    priority: int = 0
    # Absolute time (scheduler clock) after which the task is worthless; None: no deadline.
    deadline: float | None = None
    # What the runtime needs to run it (the engine keeps (model, request)); never inspected here.
    payload: Any = field(default=None, repr=False)
    # Real-time lanes run REALTIME; the image lane runs BATCH. Set by the caller's lane policy.
    priority_class: PriorityClass = PriorityClass.REALTIME
    # Who asked (an API key's fingerprint, else the peer's address); None: no one in
    # particular. A client holds at most its lane's `client_share` of slots while others wait.
    client: str | None = None
    # Whose task it is (ris.runtime.tenancy: a named key's name, a plain key's fingerprint;
    # None: no key). The scheduler never reads it: who may see a task is the engine's rule.
    owner: str | None = None
    # Far costlier per step than its lane's usual (LaneKind.costly): its client's costly tasks
    # hold at most client_share of the lane's slots even while nobody else waits.
    costly: bool = False
    # Seconds its model takes to load, when it was not loaded at submission (0: loaded): the
    # task waits that long once it starts, so its ETA includes it.
    load_s: float = 0.0
    # How much work it is in its lane's units (LaneKind.work: an image's steps x pixels): run
    # times are learned as a fixed part plus a part per unit (run_fit), and its own run is
    # estimated at its size. A 40-step 512 px image was given the lane's mean run of 64 px
    # ones: 1.4 s for 12.
    work: float = 1.0
    # The outputs it will report, where the request says (an image's steps): its progress reads
    # "step 0 of 8" while it waits, not "step 0 of ?".
    progress_total: int | None = None


@dataclass
class Task:
    """The scheduler's record of one task; mutated only by the Scheduler."""

    id: str
    spec: TaskSpec
    submitted_at: float
    # Static heap key: submission time minus the boosts it earned (see LaneQueue).
    sort_key: float
    seq: int
    state: TaskState = TaskState.QUEUED
    started_at: float | None = None
    # When its own run began, where that was after it started: a task its worker held for a
    # model (a switch, a load) runs from the model's arrival, not from its dispatch.
    run_since: float | None = None
    finished_at: float | None = None
    # Progress reported by the worker: steps (tokens, audio chunks, denoising steps) done/total.
    progress_done: int = 0
    progress_total: int | None = None
    # When the last progress came (the scheduler's clock), and the most of the task a view has
    # shown as done (0-1): a fraction shown never goes back (Scheduler.fraction_done).
    progress_at: float | None = None
    fraction_shown: float = 0.0
    # Set when cancel() hits a running task: the runtime must stop the worker's work.
    cancel_requested: bool = False
    error_code: str | None = None
    error_message: str | None = None
    # The lane's typed result (ris.lanes), attached by the runtime when the task succeeds.
    result: Any = field(default=None, repr=False)

    @property
    def lane(self) -> str:
        return self.spec.lane

    @property
    def queue_wait(self) -> float | None:
        if self.started_at is None:
            return None
        return self.started_at - self.submitted_at

    @property
    def own_run_start(self) -> float | None:
        """When its own run began: its start or, where it waited for a model, the model's
        arrival (the lane's run estimate counts the load apart)."""
        return self.started_at if self.run_since is None else self.run_since

    @property
    def run_time(self) -> float | None:
        start = self.own_run_start
        if start is None or self.finished_at is None:
            return None
        return self.finished_at - start
