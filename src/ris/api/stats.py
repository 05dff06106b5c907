"""Per-lane statistics for /api/stats and `ris status`, from the engine's snapshot
(ris.runtime.snapshot); /metrics renders the same snapshot (ris.api.prometheus)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ris.config import Config
from ris.config.fit_checks import gpu_budget, ram_budget, worker_base_bytes
from ris.config.sharing import resolve_policy, yields_to
from ris.gpus import GPUDevice
from ris.machine import machine_info
from ris.preemption.policy import Activity
from ris.runtime.snapshot import Snapshot, WorkerStatus
from ris.runtime.specs import local_cards, memory_limit
from ris.runtime.supervisor import WorkerState

# What a disabled lane shows as its (first) worker.
NO_WORKER = WorkerStatus(state="disabled")


def lane_stats(snapshot: Snapshot, config: Config) -> dict[str, Any]:
    """Every lane's JSON for /api/stats, `ris status` and the console."""
    out: dict[str, Any] = {}
    rates = snapshot.metrics.rates
    activity = {lane.lane: lane.activity for lane in snapshot.lanes}
    for lane in snapshot.lanes:
        s = lane.stats
        out[lane.lane] = {
            "enabled": lane.enabled,
            "device": lane.device,
            "cores": list(lane.cores) if lane.cores is not None else None,
            # Work-conserving isolation: this lane's idle cores that another lane runs on now
            # ({"core": lane}), and the other lanes' cores this lane runs on now.
            "lent_cores": {str(c): by for c, by in snapshot.lent_cores(lane).items()},
            "borrowed_cores": sorted({c for w in lane.workers for c in w.borrowed_cores or ()}),
            # A batch lane's minimum CPU share under saturation and how the OS keeps it.
            "min_cpu_share": lane.workers[0].cpu_share if lane.workers else None,
            # The replica the lane's state describes (a serving one, where any serves: the
            # card's CPU, memory and errors are of the replica that answers); every replica
            # under "workers".
            "worker": _serving(lane.workers).as_json(),
            "workers": [w.as_json() for w in lane.workers],
            "queue_depth": s.queued,
            "max_queue": lane.max_queue,
            "running": s.running,
            # Tasks the lane's workers run at once (the LLM's batch) and how many are in use.
            "slots": s.slots,
            "slots_busy": s.running,
            # Streamed outputs per second over the last RATE_WINDOW_S (LLM: tokens; TTS: audio
            # chunks), the lane's live throughput.
            "outputs_per_s": lane.outputs_per_s,
            "succeeded": s.succeeded,
            "failed": s.failed,
            "cancelled": s.cancelled,
            "done": s.succeeded + s.failed + s.cancelled,
            # Submissions refused with 429 (queue full) since the server started.
            "rejected": s.rejected,
            # Why its queue starts nothing now ("disk_space": a durable lane whose results have
            # no room on the data folder's disk); null while it runs.
            "held": s.held,
            "latency_s": {"p50": s.latency_p50, "p95": s.latency_p95, "p99": s.latency_p99},
            "queue_wait_p50_s": s.queue_wait_p50,
            # What its worker publishes on the activity board (idle, prefill, decode, busy);
            # None where the worker kind keeps no board.
            "activity": None if lane.activity is None else lane.activity.name.lower(),
            # Work per second over the last throughput_window_s, from the tasks that finished
            # in it: "tasks" and the lane's own units (generated_tokens, audio_seconds, ...).
            "throughput_per_s": dict(rates.get(lane.lane, {})),
            "throughput_window_s": snapshot.metrics.window_s,
            # Model loads on first use, evictions (another needed the memory) and expiries (idle
            # past keep_alive) since the server started; what the loaded models are counted
            # against: the RAM they may use (on a GPU lane, what they keep beside the card), and
            # the lane's GPU budget on a GPU lane.
            "models": {
                **snapshot.models.lane_counts(lane.lane),
                "resident": list(_serving(lane.workers).models) if lane.workers else [],
                "memory_budget_bytes": memory_budget(config, lane.lane),
                "gpu_budget_bytes": lane_gpu_budget(config, lane.lane),
            },
        }
        out[lane.lane]["state"] = lane_state(config, lane.lane, out[lane.lane], activity)
    return out


def _serving(workers: Sequence[WorkerStatus]) -> WorkerStatus:
    ready = [w for w in workers if w.state == WorkerState.READY]
    return ready[0] if ready else workers[0] if workers else NO_WORKER


def memory_budget(config: Config, lane: str) -> int | None:
    """The lane's RAM budget for its models (on a GPU lane for the part they keep in RAM
    beside the card; None: no bound), as its worker applies it."""
    cfg = config.lane(lane)
    if not cfg.enabled:
        return None
    return ram_budget(cfg, memory_limit(config, lane), worker_base_bytes(lane, cfg))


def lane_gpu_budget(config: Config, lane: str) -> int | None:
    """A GPU lane's budget on its card, which its models are counted against (None: a CPU
    lane, or a card whose memory this server cannot read and no gpu_memory_gb)."""
    cfg = config.lane(lane)
    if not cfg.enabled or cfg.gpu_index is None:
        return None
    return gpu_budget(config, lane, local_cards(config, machine_info()))


def lane_state(config: Config, lane: str, s: dict[str, Any], activity: dict[str, Activity | None]) -> str:
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
    now = activity[lane]
    if s["running"] and _yielding(config, lane, activity):
        return "yielding"
    if now is not None and now is not Activity.IDLE:
        return now.name.lower()
    return "busy" if s["running"] else "idle"


def _yielding(config: Config, lane: str, activity: dict[str, Activity | None]) -> bool:
    """The lane's worker is pausing at its preemption points now: its policy protects what a
    lane it shares hardware with is doing (the worker reads the same board, within a poll)."""
    others = yields_to(config, lane)
    if not others:
        return False
    policy = resolve_policy(config, lane)
    if policy.mode == "none":
        return False
    return any((a := activity.get(o)) is not None and policy.protects(a) for o in others)


def gpus_json(gpus: Sequence[GPUDevice]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(g) for g in gpus]
