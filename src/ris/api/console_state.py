"""What the web console polls once a second: every lane's live state and the work in flight,
in one compact JSON body (one request per tick, so an open console costs the server little).

Built from the engine's snapshot (what /api/stats and /api/tasks also show, and the activity
board) and the config's static settings; nothing here is kept between calls except psutil's
per-core CPU baseline.
"""

from __future__ import annotations

from typing import Any

import psutil

from ris.api.routes.tasks import task_info
from ris.api.stats import lane_stats
from ris.config.sharing import resolve_policy, yields_to
from ris.lanes.image import ImageResult
from ris.lanes.tts import TTSResult
from ris.runtime.engine import Engine
from ris.runtime.snapshot import LaneStatus, Snapshot, TaskLists, TaskWindow
from ris.runtime.views import TaskView

# How far back the LLM timeline's yield windows reach.
HISTORY_S = 300.0
RECENT_TASKS_PER_LANE = 10
# Live tasks shown per lane (a queue of 256 images would make every tick heavy).
LIVE_TASKS_PER_LANE = 50
WINDOW = TaskWindow(
    live_per_lane=LIVE_TASKS_PER_LANE, recent_per_lane=RECENT_TASKS_PER_LANE, history_s=HISTORY_S
)


def console_state(engine: Engine) -> dict[str, Any]:
    snap = engine.snapshot(WINDOW)
    assert snap.tasks is not None
    stats = lane_stats(snap, engine.config)
    lanes: dict[str, Any] = {}
    for lane in snap.lanes:
        lanes[lane.lane] = {**stats[lane.lane], **_lane_extras(engine, lane)}
    return {
        "time": snap.time,
        # Machine-wide, per core: the lanes' cores are listed on their cards.
        "cpu_cores": psutil.cpu_percent(percpu=True),
        "lanes": lanes,
        "yields": _yield_windows(engine, snap, snap.tasks),
        "tasks": {
            "queued": [_brief(v) for v in snap.tasks.queued],
            "running": [_brief(v) for v in snap.tasks.running],
            "recent": [_brief(v) for v in snap.tasks.recent],
        },
    }


def _lane_extras(engine: Engine, lane: LaneStatus) -> dict[str, Any]:
    cfg = engine.config.lane(lane.lane)
    policy = resolve_policy(engine.config, lane.lane) if cfg.enabled else None
    return {
        "uptime_s": lane.uptime_s,
        "threads_configured": cfg.threads,
        "nice": cfg.nice,
        "gpu": cfg.gpu_index,
        "yield_policy": policy.mode if policy is not None and yields_to(engine.config, lane.lane) else None,
    }


def _yield_windows(engine: Engine, snap: Snapshot, tasks: TaskLists) -> list[dict[str, Any]]:
    """When image work paused for the LLM, over the last HISTORY_S: each LLM task's prefill
    (its whole run under scope "request") that overlapped a running image task, under a
    policy that pauses for it. Derived from task times; the pauses the image worker measured
    are on each image task (`paused_s`, `pauses`)."""
    out: list[dict[str, Any]] = []
    llm_runs = [r for r in tasks.runs if r.lane == "llm"]
    for lane in (s.lane for s in snap.lanes if s.enabled):
        if "llm" not in yields_to(engine.config, lane):
            continue
        policy = resolve_policy(engine.config, lane)
        if policy.mode == "none":
            continue
        batch = [(r.started_at, r.finished_at) for r in tasks.runs if r.lane == lane]
        if not batch:
            continue
        for r in llm_runs:
            start = r.started_at
            end = r.first_output_at if policy.scope == "prefill" else None
            end = end or r.finished_at or snap.now
            if any(b0 < end and (b1 is None or b1 > start) for b0, b1 in batch):
                out.append({"lane": lane, "start": start, "end": end})
    out.sort(key=lambda w: w["start"])
    return out


def _brief(view: TaskView[Any]) -> dict[str, Any]:
    """A task row: task_info without the result, plus the image worker's measured pauses and
    the length of a speech (for the TTS lane's real-time factor)."""
    row = task_info(view, with_result=False)
    r = view.result
    if isinstance(r, ImageResult):
        row["paused_s"], row["pauses"] = r.paused_s, r.pauses
    elif isinstance(r, TTSResult):
        row["audio_s"] = r.duration_s
    return row
