"""What the web console polls once a second: every lane's live state and the work in flight,
in one compact JSON body (one request per tick, so an open console costs the server little).

Built from the engine's snapshot (what /api/stats and /api/tasks also show, and the activity
board) and the config's static settings; nothing here is kept between calls except psutil's
per-core CPU baseline. The charts' last 15 minutes are sampled from the same snapshot into a
ChartHistory (keep_chart_history), which a page reads once when it loads.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import psutil

from ris.api.chart_history import ChartHistory, CoreLoad, StepRate
from ris.api.routes.tasks import FILE_LINKS, task_info
from ris.api.stats import lane_stats
from ris.config import Config
from ris.config.sharing import resolve_policy, yields_to
from ris.lanes.image import ImageResult
from ris.lanes.tts import TTSResult
from ris.runtime.engine import Engine
from ris.runtime.snapshot import LaneStatus, Snapshot, TaskLists, TaskWindow
from ris.runtime.tenancy import Principal
from ris.runtime.views import TaskView

log = logging.getLogger(__name__)
A = TypeVar("A")
T = TypeVar("T")

# How far back the LLM timeline's yield windows reach.
HISTORY_S = 300.0
RECENT_TASKS_PER_LANE = 10
# Live tasks shown per lane (a queue of 256 images would make every tick heavy).
LIVE_TASKS_PER_LANE = 50
WINDOW = TaskWindow(
    live_per_lane=LIVE_TASKS_PER_LANE, recent_per_lane=RECENT_TASKS_PER_LANE, history_s=HISTORY_S
)
# A chart sample needs the running and recent tasks (image progress), not the runs of the
# last minutes that the yield bands are drawn from.
SAMPLE_WINDOW = TaskWindow(
    live_per_lane=LIVE_TASKS_PER_LANE, recent_per_lane=RECENT_TASKS_PER_LANE, history_s=0.0
)


class Sampled(Generic[A, T]):
    """`take(arg)`, taken at most every `window_s`; asked sooner, the last value (None from
    `take` keeps it too). One reading for every console tab and user: a figure measured since
    the previous look reads a sliver when two tabs tick milliseconds apart (psutil's per-core
    load read [0, 0] of two busy cores)."""

    def __init__(
        self, take: Callable[[A], T | None], window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._take = take
        self.window_s = window_s
        self.clock = clock
        self._at: float | None = None
        self._last: T | None = None

    def read(self, arg: A) -> T | None:
        now = self.clock()
        if self._at is None or now - self._at >= self.window_s:
            value, self._at = self._take(arg), now
            if value is not None:
                self._last = value
        return self._last


def _image_steps(rate: StepRate, snap: Snapshot) -> float | None:
    """The image lane's steps per second since the previous sample (StepRate)."""
    assert snap.tasks is not None
    image = [v for v in (*snap.tasks.running, *snap.tasks.recent) if v.lane == "image"]
    done = {v.id: v.progress_done for v in image}
    return rate.update(snap.now, done, {v.id: v.finished_at for v in image})


def live_cores(window_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> Sampled[Any, Any]:
    """Each core's busy percent for the console's tick, given a reader of the cores' times."""
    load = CoreLoad()
    return Sampled(lambda times: load.update(times()), window_s, clock)


def live_steps(
    window_s: float = 1.0, clock: Callable[[], float] = time.monotonic
) -> Sampled[Snapshot, float]:
    return Sampled(functools.partial(_image_steps, StepRate()), window_s, clock)


LIVE_CORES = live_cores()
LIVE_STEPS = live_steps()


def _real_time_factor(recent: Sequence[TaskView[Any]], lane: str) -> float | None:
    """Seconds of synthesis per second of speech over the lane's recent tasks (median)."""
    rtf = sorted(
        (v.finished_at - v.started_at) / v.result.duration_s
        for v in recent
        if v.lane == lane
        and isinstance(v.result, TTSResult)
        and v.result.duration_s
        and v.started_at is not None
        and v.finished_at is not None
    )
    return rtf[len(rtf) // 2] if rtf else None


def console_state(engine: Engine, viewer: Principal) -> dict[str, Any]:
    """The body; its work lists hold the tasks `viewer` may see (a user's own), while the lanes'
    figures and the yield bands are everyone's, with no task's id or text."""
    snap = engine.snapshot(WINDOW, viewer)
    assert snap.tasks is not None
    stats = lane_stats(snap, engine.config)
    # The lanes' figures count everyone's tasks, whoever looks: a user's own lists would read a
    # lane busy with others' images as 0 steps/s.
    everyone = snap if viewer.admin else engine.snapshot(WINDOW)
    assert everyone.tasks is not None
    lanes: dict[str, Any] = {}
    for lane in snap.lanes:
        lanes[lane.lane] = {**stats[lane.lane], **_lane_extras(engine, lane)}
        lanes[lane.lane]["real_time_factor"] = _real_time_factor(everyone.tasks.recent, lane.lane)
    if "image" in lanes:
        lanes["image"]["steps_per_s"] = LIVE_STEPS.read(everyone)
    return {
        "time": snap.time,
        # The clock task times are on (the scheduler's, as Unix seconds): what they compare with.
        "now": snap.now,
        # Machine-wide, per core: the lanes' cores are listed on their cards.
        "cpu_cores": LIVE_CORES.read(_core_times),
        "lanes": lanes,
        "yields": _yield_windows(engine, snap, snap.tasks),
        # Model loads and unloads, oldest first: the overview lists each once among its events.
        "model_events": [e.as_json() for e in snap.models.recent],
        "tasks": {
            "queued": [_brief(v) for v in snap.tasks.queued],
            "running": [_brief(v) for v in snap.tasks.running],
            "recent": [_brief(v) for v in snap.tasks.recent],
            # Per lane, every queued task the viewer may see: more than `queued` lists past
            # LIVE_TASKS_PER_LANE.
            "queued_total": dict(snap.tasks.queued_total),
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
    """A task row: task_info without the result, plus its file's URL, the image worker's
    measured pauses and the length of a speech (for the TTS lane's real-time factor)."""
    row = task_info(view, with_result=False)
    r = view.result
    link = FILE_LINKS.get(view.lane)
    if link is not None and r is not None and r.files():
        # Its picture or speech, for the Work page to link to (the console's session opens
        # it: no signature needed). A picture made while the page was away was out of reach.
        row["file_url"] = link[1](view.id)
    if isinstance(r, ImageResult):
        row["paused_s"], row["pauses"] = r.paused_s, r.pauses
    elif isinstance(r, TTSResult):
        row["audio_s"] = r.duration_s
    return row


def chart_values(
    snap: Snapshot, config: Config, steps: StepRate, cores: list[float | None]
) -> dict[str, list[float | None]]:
    """One sample of every chart the overview draws, named "<lane>.latency" (p50, p99),
    "<lane>.throughput" (the lane's unit: LLM tokens/s, TTS audio chunks/s, image steps/s)
    and "cpu" (per core): the same figures the page computes from each tick."""
    assert snap.tasks is not None
    stats = lane_stats(snap, config)
    out: dict[str, list[float | None]] = {}
    for lane in snap.lanes:
        s = stats[lane.lane]
        out[f"{lane.lane}.latency"] = [s["latency_s"]["p50"], s["latency_s"]["p99"]]
        if lane.lane == "image":
            out["image.throughput"] = [_image_steps(steps, snap)]
        else:
            out[f"{lane.lane}.throughput"] = [s["outputs_per_s"]]
    out["cpu"] = cores
    return out


def _core_times() -> list[tuple[float, float]]:
    """(busy, total) CPU seconds per core since boot."""
    out = []
    for t in psutil.cpu_times(percpu=True):
        total = sum(t)
        idle = t.idle + getattr(t, "iowait", 0.0)
        out.append((total - idle, total))
    return out


async def keep_chart_history(engine: Engine, history: ChartHistory) -> None:
    """Samples the charts into `history` every `history.every_s`, for as long as the server
    runs (cancelled at shutdown): an open console is not needed for the history to exist."""
    steps, cores = StepRate(), CoreLoad()
    while True:
        wait = history.until_due()
        if history.due():
            try:
                snap = engine.snapshot(SAMPLE_WINDOW)
                history.record(chart_values(snap, engine.config, steps, cores.update(_core_times())))
            except Exception:  # noqa: BLE001 - a bad sample must not end the history
                log.exception("console chart sample failed")
                # Tried again an interval later: the schedule moves only with a sample, and
                # a sample that fails at once would be tried (and logged) without a pause.
                wait = history.every_s
            else:
                wait = history.until_due()
        await asyncio.sleep(wait)
