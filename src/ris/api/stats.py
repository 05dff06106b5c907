"""Per-lane statistics for /api/stats, `ris status` and the Prometheus /metrics text."""

from __future__ import annotations

from typing import Any

from ris.runtime.engine import Engine
from ris.scheduler import Lane


def _gpu_memory(pid: int | None) -> int | None:
    """GPU memory used by a process, from NVML when it is installed and a GPU is present."""
    if pid is None:
        return None
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            total = 0
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                    if p.pid == pid and p.usedGpuMemory:
                        total += int(p.usedGpuMemory)
            return total
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no driver: report nothing rather than fail the endpoint
        return None


def lane_stats(engine: Engine) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for lane in Lane:
        cfg = engine.config.lane(lane)
        s = engine.scheduler.stats(lane)
        worker = engine.workers.get(lane)
        usage = worker.resource_usage() if worker else {"cpu_percent": None, "rss_bytes": None}
        info = worker.ready_info if worker else None
        out[lane.value] = {
            "enabled": cfg.enabled,
            "device": cfg.device,
            "cores": list(cfg.cores) if cfg.cores is not None else None,
            "worker": {
                "state": worker.state.value if worker else "disabled",
                "pid": worker.pid if worker else None,
                "restarts": worker.restarts if worker else 0,
                "cpu_affinity": list(info.cpu_affinity) if info and info.cpu_affinity else None,
                "threads": info.threads if info else None,
                "cuda_visible_devices": info.cuda_visible_devices if info else None,
                "cpu_percent": usage["cpu_percent"],
                "rss_bytes": usage["rss_bytes"],
                "gpu_memory_bytes": _gpu_memory(worker.pid) if worker else None,
                "error": worker.failure.message if worker and worker.failure else None,
            },
            "queue_depth": s.queued,
            "max_queue": cfg.max_queue,
            "running": s.running,
            "succeeded": s.succeeded,
            "failed": s.failed,
            "cancelled": s.cancelled,
            "done": s.succeeded + s.failed + s.cancelled,
            "latency_s": {"p50": s.latency_p50, "p95": s.latency_p95, "p99": s.latency_p99},
            "queue_wait_p50_s": s.queue_wait_p50,
        }
    return out


def prometheus_text(stats: dict[str, Any]) -> str:
    """Render lane stats in the Prometheus text exposition format (version 0.0.4)."""
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
    return "\n".join(lines) + "\n"
