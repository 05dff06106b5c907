"""When a lane's worker is dead, hung or due for a restart: pure decisions, clock injected.

The engine reports what it observes about each worker (started, ready, failed to load, heard
from, started or progressed a task, killed) and asks `decide()` what to do; it carries the
answer out. Every liveness, hang and restart rule is therefore unit-tested with a fake clock
and no processes (tests/unit/test_supervisor.py).

    STARTING --WorkerReady--> READY --dies / silent / no progress / over its memory--> (Fail) DEAD
       |                                                                   |
       +--WorkerFailed--> FAILED --back-off--> (Restart) STARTING <--------+
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

RESTART_BACKOFF_MAX_S = 30.0
# A worker that has served this long since it last started has recovered: its next failure is
# restarted quickly again. The back-off counts failures in a row, not over the server's life (a
# cluster's third head loss in a day must not wait 30 s per worker for the first two).
STABLE_AFTER_S = 60.0


class WorkerState(enum.StrEnum):
    STARTING = "starting"  # spawned, models loading
    READY = "ready"
    FAILED = "failed"  # could not load its models; restarted after a back-off
    DEAD = "dead"


@dataclass(frozen=True)
class Limits:
    heartbeat_timeout_s: float  # a worker silent this long is hung
    busy_timeout_s: float  # a busy worker with no progress this long is hung
    load_timeout_s: float  # loading models may take this long
    memory_bytes: int | None = None  # resident memory ceiling; None: none


@dataclass(frozen=True)
class Fail:
    """Kill the worker; its running tasks fail with `code`."""

    code: str
    message: str


@dataclass(frozen=True)
class Restart:
    """Start the worker again."""


@dataclass
class Watch:
    """The supervisor's record of one worker."""

    name: str
    limits: Limits
    state: WorkerState = WorkerState.DEAD
    started_at: float = 0.0
    last_heard: float = 0.0
    restarts: int = 0  # over the server's life (shown in stats and metrics)
    in_a_row: int = 0  # restarts since it last served STABLE_AFTER_S: what the back-off counts
    ready_at: float = 0.0
    restart_at: float = 0.0
    busy: int = 0  # tasks running on it
    last_progress: float = 0.0
    progress_events: int = 0
    # A model loading after the start (first use, a switch, after keep_alive): while it loads
    # nothing progresses, and the load's own limit holds, not the busy one (load_timeout_s).
    loading_since: float | None = None


def backoff(restarts: int) -> float:
    """Quick first restart; repeated failures back off so a broken model cannot spin the CPU."""
    return min(RESTART_BACKOFF_MAX_S, 0.5 * 2.0 ** min(restarts, 6))


class Supervisor:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock

    def watch(self, name: str, limits: Limits) -> Watch:
        return Watch(name=name, limits=limits)

    # ----- observations --------------------------------------------------------------------

    def started(self, w: Watch) -> None:
        now = self._clock()
        w.state, w.started_at, w.last_heard = WorkerState.STARTING, now, now
        w.busy, w.progress_events, w.loading_since = 0, 0, None

    def restarting(self, w: Watch) -> None:
        w.restarts += 1
        w.in_a_row += 1
        self.started(w)

    def waiting(self, w: Watch) -> None:
        """The worker waits for room on a cluster (not loading yet): its load time counts from
        when it is placed, so a worker that waited long is not failed the moment it starts."""
        if w.state is WorkerState.STARTING:
            w.started_at = w.last_heard = self._clock()

    def ready(self, w: Watch) -> None:
        w.state = WorkerState.READY
        w.last_heard = w.ready_at = self._clock()

    def load_failed(self, w: Watch) -> None:
        w.state = WorkerState.FAILED
        w.restart_at = self._clock() + backoff(w.in_a_row)

    def killed(self, w: Watch) -> None:
        w.state, w.busy, w.loading_since = WorkerState.DEAD, 0, None
        w.restart_at = self._clock() + backoff(w.in_a_row)

    def heard(self, w: Watch, progress_events: int | None = None) -> None:
        """Any message from the worker; heartbeats carry its count of progress events."""
        now = self._clock()
        w.last_heard = now
        if w.in_a_row and w.state is WorkerState.READY and now - w.ready_at >= STABLE_AFTER_S:
            w.in_a_row = 0
        if progress_events is not None and progress_events != w.progress_events:
            w.progress_events = progress_events
            w.last_progress = now

    def task_started(self, w: Watch) -> None:
        # The no-progress clock starts when the worker gets work, not at each task: a hung
        # worker with free slots (an LLM batch) kept getting new tasks, each restarting it.
        if w.busy == 0:
            w.last_progress = self._clock()
        w.busy += 1

    def loading(self, w: Watch) -> None:
        """A ready worker began loading a model for a task."""
        w.loading_since = self._clock()

    def loaded(self, w: Watch) -> None:
        """That load ended (the model is in, or the load failed): its tasks progress again."""
        w.loading_since = None
        w.last_progress = self._clock()

    def progressed(self, w: Watch) -> None:
        w.last_progress = self._clock()

    def task_ended(self, w: Watch) -> None:
        w.busy = max(0, w.busy - 1)
        w.last_progress = self._clock()  # a task that ends is progress

    # ----- decisions -----------------------------------------------------------------------

    def decide(self, w: Watch, alive: bool, memory_bytes: int | None = None) -> Fail | Restart | None:
        """`memory_bytes`: the worker's resident memory now, when known."""
        now = self._clock()
        lim = w.limits
        if w.state in (WorkerState.STARTING, WorkerState.READY) and not alive:
            return Fail("worker_crashed", f"the {w.name} worker process died")
        over = lim.memory_bytes is not None and memory_bytes is not None and memory_bytes > lim.memory_bytes
        if w.state in (WorkerState.STARTING, WorkerState.READY) and over:
            assert lim.memory_bytes is not None and memory_bytes is not None
            used, ceiling = f"{memory_bytes / 2**20:,.0f}", f"{lim.memory_bytes / 2**20:,.0f}"
            if used == ceiling:  # "used 250 MiB, over its ceiling of 250 MiB" said nothing
                used = f"{memory_bytes / 2**20:,.1f}"
            return Fail(
                "worker_out_of_memory",
                f"the {w.name} worker used {used} MiB, over its ceiling of {ceiling} MiB "
                "(memory_limit_mb); it was restarted",
            )
        if w.state is WorkerState.READY and now - w.last_heard > lim.heartbeat_timeout_s:
            return Fail(
                "worker_timeout", f"the {w.name} worker stopped answering for {lim.heartbeat_timeout_s:g} s"
            )
        if w.state is WorkerState.STARTING and now - w.started_at > lim.load_timeout_s:
            return Fail("worker_timeout", f"the {w.name} worker did not load in time")
        if w.state is WorkerState.READY and w.loading_since is not None:
            if now - w.loading_since > lim.load_timeout_s:
                return Fail(
                    "worker_timeout",
                    f"a model load took over {lim.load_timeout_s:g} s (load_timeout_s); "
                    "the worker was replaced",
                )
        elif w.state is WorkerState.READY and w.busy and now - w.last_progress > lim.busy_timeout_s:
            return Fail(
                "worker_timeout", f"no progress for {lim.busy_timeout_s:g} s; the worker was replaced"
            )
        if w.state in (WorkerState.DEAD, WorkerState.FAILED) and now >= w.restart_at:
            return Restart()
        return None
