"""The asynchronous image API: submit, poll progress, fetch the PNG, cancel, list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from ris import messages as m
from ris.api.deps import engine_of, view_or_404
from ris.api.errors import APIError, lane_unavailable, queue_full
from ris.api.schemas import ErrorBody, ImageAccepted, ImageGenerateRequest, ImageProgress
from ris.runtime.engine import Engine, LaneUnavailable, TaskView
from ris.scheduler import Lane, QueueFull

router = APIRouter(tags=["image"])
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorBody} for s in (404, 409, 413, 422, 429, 503)}


def _pick_model(engine: Engine, body: ImageGenerateRequest) -> str:
    cfg = engine.config.lane(Lane.IMAGE)
    if body.model is not None:
        try:
            return cfg.resolve_model(body.model)
        except KeyError as e:
            raise APIError(404, "unknown_model", str(e.args[0])) from None
    if body.use_turbo:
        turbo = [name for name, spec in cfg.models.items() if spec.options.get("turbo")]
        if not turbo:
            raise APIError(
                422,
                "no_turbo_model",
                "use_turbo: no model with options.turbo is configured; "
                f"configured: {', '.join(cfg.models) or 'none'}",
            )
        return turbo[0]
    try:
        return cfg.resolve_model(None)
    except KeyError as e:
        raise APIError(503, "unknown_model", str(e.args[0])) from None


@router.post(
    "/api/image/generate",
    status_code=202,
    response_model=ImageAccepted,
    responses=ERRORS,
    summary="Queue an image; returns at once with the task id",
)
async def image_generate(body: ImageGenerateRequest, request: Request) -> Any:
    engine = engine_of(request)
    limits = engine.config.server
    if Lane.IMAGE not in engine.workers:
        raise APIError(503, "lane_unavailable", "the image lane is disabled in the configuration")
    pixels = body.width * body.height
    if pixels > limits.max_image_pixels:
        raise APIError(
            422,
            "image_too_large",
            f"{body.width}x{body.height} is {pixels} pixels; "
            f"the limit is {limits.max_image_pixels} (width x height)",
        )
    if body.steps is not None and body.steps > limits.max_image_steps:
        raise APIError(
            422, "too_many_steps", f"steps {body.steps} is over the limit of {limits.max_image_steps}"
        )
    model = _pick_model(engine, body)
    req = m.ImageRequest(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=body.width,
        height=body.height,
        steps=body.steps,
        guidance=body.guidance,
        seed=body.seed,
    )
    try:
        handle = engine.submit(Lane.IMAGE, model, req, priority=body.priority, timeout_s=body.timeout_s)
    except QueueFull as e:
        raise queue_full(e) from None
    except LaneUnavailable as e:
        raise lane_unavailable(e) from None
    view = engine.lookup(handle.task_id)
    return {
        "task_id": handle.task_id,
        "status": view.state if view else "queued",
        "queue_position": view.queue_position if view else None,
        "model": model,
        "progress_url": f"/api/image/progress/{handle.task_id}",
        "result_url": f"/api/image/result/{handle.task_id}",
    }


def progress_body(view: TaskView) -> dict[str, Any]:
    total = view.progress_total
    done = view.progress_done
    if view.state == "succeeded":
        fraction = 1.0
    else:
        fraction = min(1.0, done / total) if total else 0.0
    return ImageProgress(
        task_id=view.id,
        status=view.state,
        step=done,
        total_steps=total,
        progress=fraction,
        queue_position=view.queue_position,
        eta_s=view.eta_s,
        error={"code": view.error_code or "failed", "message": view.error_message or ""}
        if view.state in ("failed", "cancelled")
        else None,
    ).model_dump()


def _image_view(engine: Engine, task_id: str) -> TaskView:
    view = view_or_404(engine, task_id)
    if view.lane is not Lane.IMAGE:
        raise APIError(404, "not_found", f"task {task_id} is not an image task")
    return view


@router.get(
    "/api/image/progress/{task_id}",
    response_model=ImageProgress,
    responses=ERRORS,
    summary="Status, step, fraction done, queue position, ETA",
)
async def image_progress(task_id: str, request: Request) -> Any:
    return progress_body(_image_view(engine_of(request), task_id))


@router.get(
    "/api/image/result/{task_id}",
    responses={**ERRORS, 200: {"content": {"image/png": {}}}},
    response_class=FileResponse,
    summary="The PNG of a finished task",
)
async def image_result(task_id: str, request: Request) -> Any:
    engine = engine_of(request)
    view = _image_view(engine, task_id)
    if view.state != "succeeded" or not view.result:
        return JSONResponse(
            {
                "error": {"code": "not_ready", "message": f"task {task_id} is {view.state}; no image"},
                "progress": progress_body(view),
            },
            status_code=409,
        )
    path = Path(view.result["path"]).resolve()
    images = (Path(engine.config.data_dir) / "images").resolve()
    if path.parent != images or not path.is_file():  # served only from the data folder
        raise APIError(404, "not_found", f"the image of task {task_id} is no longer on disk")
    return FileResponse(path, media_type="image/png", headers={"X-Task-Id": task_id})


@router.post(
    "/api/image/cancel/{task_id}",
    responses=ERRORS,
    summary="Cancel a queued task, or stop a running one at its next preemption point",
)
async def image_cancel(task_id: str, request: Request) -> Any:
    engine = engine_of(request)
    view = _image_view(engine, task_id)
    outcome = engine.cancel(view.id)
    after = engine.lookup(view.id) or view
    return {"task_id": view.id, "outcome": outcome.value, "status": after.state}


@router.get("/api/image/tasks", summary="Image tasks, newest first (durable: survives restarts)")
async def image_tasks(
    request: Request,
    status: str | None = Query(default=None, pattern="^(queued|running|succeeded|failed|cancelled)$"),
    limit: int = Query(default=100, ge=1, le=1000),
) -> Any:
    engine = engine_of(request)
    assert engine.store is not None
    out = []
    for st in engine.store.recent(Lane.IMAGE.value, status, limit):
        view = engine.lookup(st.id)
        if view is not None:
            out.append(progress_body(view) | {"model": view.model, "submitted_at": view.submitted_at})
    return {"tasks": out}
