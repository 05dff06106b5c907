"""Operations: health, readiness, statistics, metrics, models and the task calls."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ris.api.deps import engine_of, view_or_404
from ris.api.schemas import ErrorBody, TaskInfo
from ris.api.stats import lane_stats, prometheus_text
from ris.runtime.engine import TaskView
from ris.scheduler import CancelOutcome, Lane

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}}


@router.get("/health", tags=["ops"], summary="The server process is alive")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", tags=["ops"], summary="Every enabled lane's worker is up (503 otherwise)")
async def ready(request: Request) -> JSONResponse:
    lanes = engine_of(request).ready()
    ok = bool(lanes) and all(lanes.values())
    body = {"ready": ok, "lanes": {lane.value: up for lane, up in lanes.items()}}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/api/stats", tags=["ops"], summary="Per-lane queues, outcomes, latency, resources")
async def stats(request: Request) -> dict[str, Any]:
    return {"lanes": lane_stats(engine_of(request))}


@router.get("/metrics", tags=["ops"], response_class=PlainTextResponse, summary="Prometheus metrics")
async def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(
        prometheus_text(lane_stats(engine_of(request))), media_type="text/plain; version=0.0.4"
    )


@router.get("/api/models", tags=["ops"], summary="Configured models per lane")
async def models(request: Request) -> dict[str, Any]:
    engine = engine_of(request)
    out: dict[str, Any] = {}
    for lane in Lane:
        cfg = engine.config.lane(lane)
        loaded = engine.model_infos(lane)
        out[lane.value] = [
            {
                "name": name,
                "backend": spec.backend,
                "default": name == cfg.default_model,
                "description": spec.description,
                "loaded": name in loaded,
                "voices": list(loaded[name].voices) if name in loaded else None,
            }
            for name, spec in cfg.models.items()
        ]
    return {"lanes": out}


def task_info(view: TaskView) -> dict[str, Any]:
    return TaskInfo(
        task_id=view.id,
        lane=view.lane.value,
        state=view.state,
        model=view.model,
        priority=view.priority,
        submitted_at=view.submitted_at,
        started_at=view.started_at,
        finished_at=view.finished_at,
        queue_position=view.queue_position,
        progress_done=view.progress_done,
        progress_total=view.progress_total,
        eta_s=view.eta_s,
        error={"code": view.error_code or "failed", "message": view.error_message or ""}
        if view.error_code or view.error_message
        else None,
    ).model_dump()


@router.get("/api/tasks", tags=["tasks"], summary="Live and recent tasks of every lane, newest first")
async def list_tasks(
    request: Request,
    lane: Lane | None = None,
    state: str | None = Query(default=None, pattern="^(queued|running|succeeded|failed|cancelled)$"),
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    engine = engine_of(request)
    tasks = [t for t in engine.scheduler.tasks(lane) if state is None or t.state.value == state]
    tasks.sort(key=lambda t: t.submitted_at, reverse=True)
    views = [v for v in (engine.lookup(t.id) for t in tasks[:limit]) if v is not None]
    return {"tasks": [task_info(v) for v in views]}


@router.get("/api/tasks/{task_id}", tags=["tasks"], responses=ERRORS, response_model=TaskInfo)
async def get_task(task_id: str, request: Request) -> dict[str, Any]:
    return task_info(view_or_404(engine_of(request), task_id))


@router.post(
    "/api/tasks/{task_id}/cancel", tags=["tasks"], responses=ERRORS, summary="Cancel a queued or running task"
)
async def cancel_task(task_id: str, request: Request) -> dict[str, Any]:
    engine = engine_of(request)
    view = view_or_404(engine, task_id)
    outcome = engine.cancel(view.id)
    after = engine.lookup(view.id) or view
    return {
        "task_id": view.id,
        "outcome": outcome.value,
        "state": after.state,
        "cancelled": outcome in (CancelOutcome.CANCELLED, CancelOutcome.REQUESTED),
    }
