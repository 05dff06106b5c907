"""The engine's read models: what the console, /api/stats, /metrics and `ris status` show, as
typed frozen values built in one pass (`Engine.snapshot()`), so nothing outside the engine
reads its scheduler, replicas or task handles. Times are Unix seconds; durations seconds.

Also the meter behind a lane's live throughput (`OutputRates`), which only these views read.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ris.config import LaneConfig
from ris.lanes.base import LaneResult
from ris.preemption.policy import Activity
from ris.runtime.metrics import MetricsView
from ris.runtime.model_log import ModelLogView
from ris.runtime.replica import Replica
from ris.runtime.views import TaskHandle, TaskView
from ris.scheduler import LaneStats, Scheduler, Task, TaskState

RATE_WINDOW_S = 10.0  # the window of a lane's outputs-per-second figure


@dataclass(frozen=True)
class WorkerStatus:
    """One worker of a lane. The fields, in order, are the keys of its JSON (`as_json`); the
    defaults are what a lane without a worker shows (`WorkerStatus("disabled")`)."""

    state: str
    pid: int | None = None
    restarts: int = 0
    slots: int = 0
    running: int = 0
    cpu_affinity: tuple[int, ...] | None = None
    threads: int | None = None
    # The nice level the worker runs at, as it read it once bound (a Ray actor's included).
    nice: int | None = None
    # Work-conserving isolation: the idle lanes' cores this worker runs on now and its thread
    # count now (None: the lane borrows nothing). The lender's side, `lent_cores`, is read
    # from these in /api/stats (ris.api.stats).
    borrowed_cores: tuple[int, ...] | None = None
    threads_now: int | None = None
    # A batch lane's minimum CPU share and how the OS keeps it (messages.CpuShareInfo as JSON).
    cpu_share: dict[str, Any] | None = None
    cuda_visible_devices: str | None = None
    cpu_percent: float | None = None
    # CPU time (user and system) the worker process has used since it started.
    cpu_seconds: float | None = None
    rss_bytes: int | None = None
    memory_limit_bytes: int | None = None
    gpu_memory_bytes: int | None = None
    error: str | None = None
    # The Ray node running it (id and address); None for a local process.
    node: str | None = None
    node_ip: str | None = None
    # How a Ray actor's messages travel: "direct" (its own link) or "ray" (cluster.link).
    link: str | None = None
    # The models it holds now (loaded at start or on first use, not yet unloaded).
    models: tuple[str, ...] = ()
    # An LLM worker's batching engine: decode steps, prompt and generated tokens since it
    # started, its KV cache now (messages.EngineFigures as JSON; None: it counts none).
    engine: dict[str, int] | None = None

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["cpu_affinity"] = list(self.cpu_affinity) if self.cpu_affinity else None
        out["models"] = list(self.models)
        return out


@dataclass(frozen=True)
class LaneStatus:
    """A lane: its settings that clients see, its counters and each of its workers."""

    lane: str
    enabled: bool
    device: str
    cores: tuple[int, ...] | None
    max_queue: int
    stats: LaneStats
    workers: tuple[WorkerStatus, ...]
    # Streamed outputs per second over the last RATE_WINDOW_S (LLM tokens, TTS audio chunks).
    outputs_per_s: float = 0.0
    # What its worker publishes on the activity board now; None where the pool keeps none.
    activity: Activity | None = None
    # Since its longest-running ready worker started; None while none is ready.
    uptime_s: float | None = None
    # Another lane borrows its idle cores (ris.config.sharing.lends: a real-time lane with cores
    # of its own); a batch lane's cores are shared already and lend nothing.
    lends: bool = False


@dataclass(frozen=True)
class TaskRun:
    """A task that started, as a timeline draws it."""

    id: str
    lane: str
    started_at: float
    finished_at: float | None
    # When its first output came (a prefill's end), once it has.
    first_output_at: float | None


@dataclass(frozen=True)
class TaskWindow:
    """Which tasks a snapshot lists: a few per lane, and the runs of the last `history_s`."""

    live_per_lane: int = 50
    recent_per_lane: int = 10
    history_s: float = 300.0


@dataclass(frozen=True)
class TaskLists:
    """Live and recent tasks, lane by lane in the config's order."""

    queued: tuple[TaskView[Any], ...]  # each lane's in queue order
    running: tuple[TaskView[Any], ...]
    recent: tuple[TaskView[Any], ...]  # finished, the latest end first (all lanes together)
    runs: tuple[TaskRun, ...]  # every task that ran within the window's history_s
    # Each lane's queued tasks in all, the listed and those past the window's live_per_lane
    # (a console listing 50 of 70 says 20 more wait).
    queued_total: Mapping[str, int] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    """The engine at one moment."""

    time: float  # the wall clock
    now: float  # the scheduler's clock, as Unix seconds (what task times are measured on)
    lanes: tuple[LaneStatus, ...]  # every configured lane, enabled or not
    tasks: TaskLists | None = None  # when asked for
    # Counters and histograms since the server started, and the recent rates (ris.runtime.metrics).
    metrics: MetricsView = dataclasses.field(default_factory=MetricsView)
    # Model loads and unloads the workers reported (ris.runtime.model_log).
    models: ModelLogView = dataclasses.field(default_factory=ModelLogView)

    def lane(self, name: str) -> LaneStatus:
        return next(s for s in self.lanes if s.lane == name)

    def lent_cores(self, lane: LaneStatus) -> dict[int, str]:
        """Work-conserving isolation: `lane`'s idle cores another lane's worker runs on now,
        and which lane (what /api/stats and /metrics both show)."""
        if not lane.lends:  # the image lane's cores [0, 1] counted core 1 lent twice over
            return {}
        borrowers = {c: s.lane for s in self.lanes for w in s.workers for c in w.borrowed_cores or ()}
        return {c: borrowers[c] for c in lane.cores or () if borrowers.get(c, lane.lane) != lane.lane}


class OutputRates:
    """Each lane's streamed outputs over the last RATE_WINDOW_S."""

    def __init__(self, lanes: Iterable[str]) -> None:
        self._times: dict[str, deque[float]] = {lane: deque() for lane in lanes}

    def output(self, lane: str, now: float) -> None:
        times = self._times[lane]
        times.append(now)
        while times[0] < now - RATE_WINDOW_S:  # bounded by the window, read or not
            times.popleft()

    def per_s(self, lane: str, now: float) -> float:
        times = self._times[lane]
        horizon = now - RATE_WINDOW_S
        while times and times[0] < horizon:
            times.popleft()
        return len(times) / RATE_WINDOW_S


def worker_status(r: Replica) -> WorkerStatus:
    usage = r.worker.usage()
    info = r.ready_info
    waiting = r.worker.waiting_for()
    return WorkerStatus(
        state="pending" if waiting else r.watch.state.value,
        slots=info.slots if info else 0,
        running=len(r.running),
        restarts=r.watch.restarts,
        pid=usage.pid,
        cpu_affinity=info.cpu_affinity if info and info.cpu_affinity else None,
        threads=info.threads if info else None,
        nice=info.nice if info else None,
        borrowed_cores=r.lending.borrowed_cores if r.lending and info else None,
        threads_now=r.lending.threads_now if r.lending and info else None,
        cpu_share=dataclasses.asdict(info.cpu_share) if info and info.cpu_share else None,
        cuda_visible_devices=info.cuda_visible_devices if info else None,
        cpu_percent=usage.cpu_percent,
        cpu_seconds=usage.cpu_seconds,
        rss_bytes=usage.rss_bytes,
        memory_limit_bytes=r.watch.limits.memory_bytes,
        gpu_memory_bytes=usage.gpu_memory_bytes,
        error=waiting or (r.failure.message if r.failure else None),
        node=usage.node,
        node_ip=usage.node_ip,
        link=usage.link,
        models=tuple(r.models) if info else (),
        engine=dataclasses.asdict(r.engine) if r.engine is not None and info else None,
    )


def lane_status(
    lane: str,
    cfg: LaneConfig,
    replicas: Sequence[Replica],
    stats: LaneStats,
    *,
    outputs_per_s: float,
    activity: Activity | None,
    now: float,
    lends: bool = False,
) -> LaneStatus:
    """`now` on the scheduler's clock (the replicas' start times are on it)."""
    ready = [r.watch.started_at for r in replicas if r.ready]
    return LaneStatus(
        lane=lane,
        enabled=cfg.enabled,
        device=cfg.device,
        cores=cfg.cores,
        max_queue=cfg.max_queue,
        stats=stats,
        workers=tuple(worker_status(r) for r in replicas),
        outputs_per_s=outputs_per_s,
        activity=activity,
        uptime_s=now - min(ready) if ready else None,
        lends=lends,
    )


def task_lists(
    scheduler: Scheduler,
    lanes: Iterable[str],
    handles: Mapping[str, TaskHandle[Any]],
    window: TaskWindow,
    *,
    now: float,
    view: Callable[[Task], TaskView[Any]],
    wall: Callable[[float], float],
    visible: Callable[[Task], bool] = lambda t: True,
) -> TaskLists:
    """`now` on the scheduler's clock; `view` makes a task's view, `wall` a Unix time; the
    queued, running and recent lists hold only the `visible` tasks (a user's own), while the
    runs, whose times alone are shown (the LLM's yield bands), are everyone's."""
    queued: list[TaskView[Any]] = []
    running: list[TaskView[Any]] = []
    recent: list[TaskView[Any]] = []
    runs: list[TaskRun] = []
    queued_total: dict[str, int] = {}
    horizon = now - window.history_s
    for lane in lanes:
        every = scheduler.tasks(lane)
        live = [t for t in every if visible(t)]
        q = [t for t in live if t.state is TaskState.QUEUED]
        q.sort(key=lambda t: scheduler.position(t.id) or 0)
        queued += [view(t) for t in q[: window.live_per_lane]]
        queued_total[lane] = len(q)
        running += [view(t) for t in live if t.state is TaskState.RUNNING][: window.live_per_lane]
        ended = [t for t in live if t.state.finished]
        ended.sort(key=lambda t: t.finished_at or 0, reverse=True)
        recent += [view(t) for t in ended[: window.recent_per_lane]]
        for t in every:  # those that ran in the window (the scheduler keeps 1000)
            if t.started_at is not None and (t.finished_at is None or t.finished_at > horizon):
                first = _first_output_at(t, handles.get(t.id))
                runs.append(
                    TaskRun(
                        t.id,
                        lane,
                        wall(t.started_at),
                        None if t.finished_at is None else wall(t.finished_at),
                        None if first is None else wall(first),
                    )
                )
    recent.sort(key=lambda v: v.finished_at or 0, reverse=True)
    return TaskLists(tuple(queued), tuple(running), tuple(recent), tuple(runs), queued_total)


def _first_output_at(task: Task, handle: TaskHandle[Any] | None) -> float | None:
    """When the task's first output came (scheduler clock): from its result's timings once it
    has one, else from its live handle."""
    r = task.result
    if isinstance(r, LaneResult) and r.timings.first_output_ms is not None:
        return task.submitted_at + r.timings.first_output_ms / 1000
    return handle.first_output_at if handle is not None else None
