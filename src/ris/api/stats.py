"""Per-lane statistics for /api/stats, `ris status` and the Prometheus /metrics text, from the
engine's snapshot (ris.runtime.snapshot)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ris.gpus import GPUDevice
from ris.runtime.snapshot import Snapshot, WorkerStatus

# What a disabled lane shows as its (first) worker.
NO_WORKER = WorkerStatus(state="disabled")


def lane_stats(snapshot: Snapshot) -> dict[str, Any]:
    """Every lane's JSON for /api/stats (and, rendered, /metrics)."""
    out: dict[str, Any] = {}
    for lane in snapshot.lanes:
        s = lane.stats
        out[lane.lane] = {
            "enabled": lane.enabled,
            "device": lane.device,
            "cores": list(lane.cores) if lane.cores is not None else None,
            # The lane's (first) worker; every replica under "workers".
            "worker": (lane.workers[0] if lane.workers else NO_WORKER).as_json(),
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
            "latency_s": {"p50": s.latency_p50, "p95": s.latency_p95, "p99": s.latency_p99},
            "queue_wait_p50_s": s.queue_wait_p50,
        }
    return out


def gpus_json(gpus: Sequence[GPUDevice]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(g) for g in gpus]


def prometheus_text(stats: dict[str, Any], gpus: Sequence[GPUDevice] = ()) -> str:
    """Render lane stats (and the machine's GPUs) in the Prometheus text exposition format
    (version 0.0.4)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, Any]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if value is not None:
                lines.append(f"{name}{{{labels}}} {float(value):.6g}")

    lanes = list(stats.items())
    metric(
        "ris_worker_up",
        "gauge",
        "1 when the lane's worker is ready",
        [(f'lane="{n}"', 1 if s["worker"]["state"] == "ready" else 0) for n, s in lanes],
    )
    metric(
        "ris_worker_restarts_total",
        "counter",
        "worker restarts since the server started",
        [(f'lane="{n}"', s["worker"]["restarts"]) for n, s in lanes],
    )
    metric(
        "ris_queue_depth",
        "gauge",
        "tasks waiting in the lane's queue",
        [(f'lane="{n}"', s["queue_depth"]) for n, s in lanes],
    )
    metric(
        "ris_running",
        "gauge",
        "tasks running on the lane's worker",
        [(f'lane="{n}"', s["running"]) for n, s in lanes],
    )
    metric(
        "ris_tasks_total",
        "counter",
        "finished tasks by final state",
        [
            (f'lane="{n}",state="{st}"', s[st])
            for n, s in lanes
            for st in ("succeeded", "failed", "cancelled")
        ],
    )
    metric(
        "ris_rejected_total",
        "counter",
        "submissions refused with 429 because the lane's queue was full",
        [(f'lane="{n}"', s["rejected"]) for n, s in lanes],
    )
    metric(
        "ris_task_latency_seconds",
        "summary",
        "submission to finish, recent tasks",
        [
            (f'lane="{n}",quantile="{q}"', s["latency_s"][k])
            for n, s in lanes
            for q, k in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))
        ],
    )
    metric(
        "ris_worker_cpu_percent",
        "gauge",
        "worker process CPU use",
        [(f'lane="{n}"', s["worker"]["cpu_percent"]) for n, s in lanes],
    )
    metric(
        "ris_worker_rss_bytes",
        "gauge",
        "worker process resident memory",
        [(f'lane="{n}"', s["worker"]["rss_bytes"]) for n, s in lanes],
    )
    metric(
        "ris_worker_gpu_memory_bytes",
        "gauge",
        "worker process GPU memory (NVML)",
        [(f'lane="{n}"', s["worker"]["gpu_memory_bytes"]) for n, s in lanes],
    )
    metric(
        "ris_gpu_utilization_percent",
        "gauge",
        "GPU busy share of the last sample period (NVML)",
        [(f'gpu="{g.index}"', g.utilization_percent) for g in gpus],
    )
    metric(
        "ris_gpu_memory_used_bytes",
        "gauge",
        "GPU memory in use, every process (NVML)",
        [(f'gpu="{g.index}"', g.memory_used_bytes) for g in gpus],
    )
    metric(
        "ris_gpu_memory_total_bytes",
        "gauge",
        "GPU memory (NVML)",
        [(f'gpu="{g.index}"', g.memory_total_bytes) for g in gpus],
    )
    return "\n".join(lines) + "\n"
