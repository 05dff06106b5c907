"""What the web console polls once a second: every lane's live state and the work in flight,
in one compact JSON body (one request per tick, so an open console costs the server little).

Built from what /api/stats, /api/tasks and the activity board already know; nothing here is
kept between calls except psutil's per-core CPU baseline.
"""

from __future__ import annotations

from typing import Any

import psutil

from ris.api.routes.tasks import task_info
from ris.api.stats import lane_stats
from ris.config.sharing import resolve_policy, yields_to
from ris.lanes.image import ImageResult
from ris.lanes.llm import LLMResult
from ris.lanes.tts import TTSResult
from ris.preemption.policy import Activity
from ris.runtime.engine import Engine
from ris.runtime.supervisor import WorkerState
from ris.runtime.views import TaskView
from ris.scheduler import TaskState

# How far back the LLM timeline's yield windows reach.
HISTORY_S = 300.0
RECENT_TASKS_PER_LANE = 10
# Live tasks shown per lane (a queue of 256 images would make every tick heavy).
LIVE_TASKS_PER_LANE = 50


def console_state(engine: Engine) -> dict[str, Any]:
    stats = lane_stats(engine)
    now = engine.wall_clock()
    lanes: dict[str, Any] = {}
    for lane, s in stats.items():
        lanes[lane] = {**s, **_lane_extras(engine, lane, s)}
    return {
        "time": now,
        # Machine-wide, per core: the lanes' cores are listed on their cards.
        "cpu_cores": psutil.cpu_percent(percpu=True),
        "lanes": lanes,
        "yields": _yield_windows(engine),
        "tasks": _tasks(engine),
    }


def _lane_extras(engine: Engine, lane: str, s: dict[str, Any]) -> dict[str, Any]:
    cfg = engine.config.lane(lane)
    policy = resolve_policy(engine.config, lane) if cfg.enabled else None
    return {
        "state": _state(engine, lane, s),
        "uptime_s": _uptime(engine, lane),
        "threads_configured": cfg.threads,
        "nice": cfg.nice,
        "gpu": cfg.gpu_index,
        "yield_policy": policy.mode if policy is not None and yields_to(engine.config, lane) else None,
    }


def _state(engine: Engine, lane: str, s: dict[str, Any]) -> str:
    """idle, prefill, decode, busy, yielding (an image paused for a real-time lane), starting,
    restarting, failed, dead or disabled. A lane with replicas serves while any of them is
    ready; the others' states show on its workers."""
    workers = s["workers"] or [s["worker"]]
    ready = [w for w in workers if w["state"] == WorkerState.READY]
    worker = ready[0] if ready else workers[0]
    state = worker["state"]
    if state != WorkerState.READY:
        # The supervisor starts a dead worker again at once (and a failed one after a back-off).
        if state == WorkerState.DEAD or (state == WorkerState.STARTING and worker["restarts"] > 0):
            return "restarting"
        return str(state)
    activity = engine.activity(lane)
    if s["running"] and _yielding(engine, lane):
        return "yielding"
    if activity is not None and activity is not Activity.IDLE:
        return activity.name.lower()
    return "busy" if s["running"] else "idle"


def _yielding(engine: Engine, lane: str) -> bool:
    """The lane's worker is pausing at its preemption points now: its policy protects what a
    lane it shares hardware with is doing (the worker reads the same board, within a poll)."""
    others = yields_to(engine.config, lane)
    if not others:
        return False
    policy = resolve_policy(engine.config, lane)
    if policy.mode == "none":
        return False
    return any((a := engine.activity(o)) is not None and policy.protects(a) for o in others)


def _uptime(engine: Engine, lane: str) -> float | None:
    """Since the longest-running ready replica started (None while none is ready)."""
    ready = [r.watch.started_at for r in engine.replicas.get(lane, []) if r.watch.state is WorkerState.READY]
    return engine.clock() - min(ready) if ready else None


def _yield_windows(engine: Engine) -> list[dict[str, Any]]:
    """When image work paused for the LLM, over the last HISTORY_S: each LLM task's prefill
    (its whole run under scope "request") that overlapped a running image task, under a
    policy that pauses for it. Derived from task times; the pauses the image worker measured
    are on each image task (`paused_s`, `pauses`)."""
    out: list[dict[str, Any]] = []
    sched = engine.scheduler
    horizon = engine.clock() - HISTORY_S

    def recent(lane: str) -> list[Any]:  # tasks that ran in the window (the scheduler keeps 1000)
        return [
            t
            for t in sched.tasks(lane)
            if t.started_at is not None and (t.finished_at is None or t.finished_at > horizon)
        ]

    llm_tasks = recent("llm")
    for lane in engine.replicas:
        if "llm" not in yields_to(engine.config, lane):
            continue
        policy = resolve_policy(engine.config, lane)
        if policy.mode == "none":
            continue
        batch = [(t.started_at, t.finished_at) for t in recent(lane)]
        if not batch:
            continue
        for t in llm_tasks:
            start = t.started_at
            end = _prefill_end(engine, t.id, t.submitted_at, t.result) if policy.scope == "prefill" else None
            end = end or t.finished_at or engine.clock()
            if any(b0 < end and (b1 is None or b1 > start) for b0, b1 in batch):
                out.append({"lane": lane, "start": engine.wall(start), "end": engine.wall(end)})
    out.sort(key=lambda w: w["start"])
    return out


def _prefill_end(engine: Engine, task_id: str, submitted_at: float, result: Any) -> float | None:
    """When the LLM task's first token came (scheduler clock), if it has come."""
    if isinstance(result, LLMResult) and result.timings.first_output_ms is not None:
        return submitted_at + result.timings.first_output_ms / 1000
    handle = engine.handles.get(task_id)
    return handle.first_output_at if handle is not None else None


def _tasks(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    queued: list[dict[str, Any]] = []
    running: list[dict[str, Any]] = []
    recent: list[dict[str, Any]] = []
    for lane in engine.config.lanes:
        live = engine.scheduler.tasks(lane)
        q = [t for t in live if t.state is TaskState.QUEUED]
        q.sort(key=lambda t: engine.scheduler.position(t.id) or 0)
        queued += [_task(engine, t.id) for t in q[:LIVE_TASKS_PER_LANE]]
        running += [_task(engine, t.id) for t in live if t.state is TaskState.RUNNING][:LIVE_TASKS_PER_LANE]
        ended = [t for t in live if t.state.finished]
        ended.sort(key=lambda t: t.finished_at or 0, reverse=True)
        recent += [_task(engine, t.id) for t in ended[:RECENT_TASKS_PER_LANE]]
    recent.sort(key=lambda t: t["finished_at"] or 0, reverse=True)
    return {"queued": queued, "running": running, "recent": recent}


def _task(engine: Engine, task_id: str) -> dict[str, Any]:
    view = engine.lookup(task_id)
    assert view is not None
    return _brief(view)


def _brief(view: TaskView) -> dict[str, Any]:
    """A task row: task_info without the result, plus the image worker's measured pauses and
    the length of a speech (for the TTS lane's real-time factor)."""
    row = task_info(view, with_result=False)
    r = view.result
    if isinstance(r, ImageResult):
        row["paused_s"], row["pauses"] = r.paused_s, r.pauses
    elif isinstance(r, TTSResult):
        row["audio_s"] = r.duration_s
    return row
