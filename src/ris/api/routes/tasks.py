"""Tasks of every lane: list, look up, cancel."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from ris.api.deps import engine_of, view_or_404
from ris.api.errors import APIError
from ris.api.schemas import ERRORS, TaskInfo
from ris.runtime.views import TaskView
from ris.scheduler import CancelOutcome

router = APIRouter(tags=["tasks"])
STATES = "^(queued|running|succeeded|failed|cancelled)$"


def task_info(view: TaskView) -> dict[str, Any]:
    return TaskInfo(
        task_id=view.id,
        lane=view.lane,
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


@router.get("/api/tasks", summary="Live and recent tasks of every lane, newest first")
async def list_tasks(
    request: Request,
    lane: str | None = Query(default=None, description="llm, tts, image, ..."),
    state: str | None = Query(default=None, pattern=STATES),
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    engine = engine_of(request)
    if lane is not None and lane not in engine.config.lanes:
        known = ", ".join(engine.config.lanes)
        raise APIError(422, "invalid_request", f"lane: unknown lane {lane!r}; lanes: {known}")
    return {"tasks": [task_info(v) for v in engine.tasks(lane, state, limit)]}


@router.get("/api/tasks/{task_id}", responses=ERRORS, response_model=TaskInfo)
async def get_task(task_id: str, request: Request) -> dict[str, Any]:
    return task_info(view_or_404(engine_of(request), task_id))


@router.post("/api/tasks/{task_id}/cancel", responses=ERRORS, summary="Cancel a queued or running task")
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
