"""The asynchronous image API: submit, poll progress, fetch the PNG, cancel, list."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from ris.api.deps import (
    body_doc,
    client_of,
    engine_of,
    json_body,
    owner_of,
    require_lane,
    resolve_model,
    view_or_404,
    viewer_of,
)
from ris.api.errors import APIError, no_result
from ris.api.schemas import ERRORS, ImageAccepted, ImageGenerateRequest, ImageProgress
from ris.api.signed_urls import opened_by_url
from ris.api.streams import RESULT_CACHING, ResultFile
from ris.lanes import Lane
from ris.lanes.image import (
    CLIP_CONTENT_TOKENS,
    IMAGE_FOLDER,
    ImageRequest,
    clip_tokens_at_least,
    default_steps,
)
from ris.lanes.image import LANE as IMAGE
from ris.runtime.engine import Engine
from ris.runtime.views import TaskView
from ris.scheduler import CancelOutcome

router = APIRouter(tags=["image"])
# The body's fields that are the image request's (the rest are about queueing).
REQUEST_FIELDS = {f.name for f in dataclasses.fields(ImageRequest)}


def result_url(task_id: str) -> str:
    """Where a finished image's PNG is served (`image_result`)."""
    return f"/api/image/result/{task_id}"


# What `use_turbo` means for a model that is not a turbo one: a turbo model's own settings.
TURBO_STEPS = 4
TURBO_GUIDANCE = 0.0


def _pick_model(engine: Engine, body: ImageGenerateRequest) -> tuple[str, ImageRequest, list[str]]:
    """The model, the request it runs and the warnings of the answer. `use_turbo` with no
    turbo model configured runs the default model with turbo settings and says so: the
    request is served, not refused (the product description's example sends it)."""
    req = ImageRequest(**body.model_dump(include=REQUEST_FIELDS))
    cfg = engine.config.lane(Lane.IMAGE)
    if body.model is not None:
        model = resolve_model(engine, Lane.IMAGE, body.model)
        notes = [f"use_turbo: ignored, the request names its model ({model!r})"] if body.use_turbo else []
        return model, req, notes + _unused_negative(engine, model, req)
    if not body.use_turbo:
        model = resolve_model(engine, Lane.IMAGE, None)
        return model, req, _unused_negative(engine, model, req)
    turbo = [name for name, spec in cfg.models.items() if spec.options.get("turbo")]
    if turbo:
        return turbo[0], req, _unused_negative(engine, turbo[0], req)
    model = resolve_model(engine, Lane.IMAGE, None)
    steps = req.steps or TURBO_STEPS
    guidance = TURBO_GUIDANCE if req.guidance is None else req.guidance
    note = (
        f"use_turbo: no turbo model is configured, so {model!r} runs with turbo settings "
        f"({steps} steps, guidance {guidance}); for a real turbo model run `ris pull sd-turbo` "
        "(or sdxl-turbo) and restart the server"
    )
    req = dataclasses.replace(req, steps=steps, guidance=guidance)
    return model, req, [note, *_unused_negative(engine, model, req)]


def capped_steps(engine: Engine, model: str, req: ImageRequest) -> tuple[ImageRequest, list[str]]:
    """A request that names no steps runs its model's default, or turbo's: held to
    server.max_image_steps like steps asked for (a model's default of 25 ran past a limit of
    2, which refused `steps: 3`), and the answer says so."""
    limit = engine.config.server.max_image_steps
    planned = req.steps or default_steps(engine.config.lane(Lane.IMAGE).models[model].options)
    if planned <= limit:
        return req, []
    note = f"steps: {model!r} runs {planned} by default, over server.max_image_steps; it ran {limit}"
    return dataclasses.replace(req, steps=limit), [note]


def _unused_negative(engine: Engine, model: str, req: ImageRequest) -> list[str]:
    """A negative prompt works through classifier-free guidance, which diffusers runs only with
    guidance above 1: a turbo model's 0 (its default) or any guidance <= 1 leaves it unused."""
    if not req.negative_prompt:
        return []
    spec = engine.config.lane(Lane.IMAGE).models[model]
    default = spec.options.get("default_guidance", 0.0 if spec.options.get("turbo") else 7.5)
    guidance = float(default if req.guidance is None else req.guidance)
    if guidance > 1.0:
        return []
    return [
        f"negative_prompt: unused at guidance {guidance:g} ({model!r}); it takes guidance above 1 "
        "(classifier-free guidance), which a turbo model is not made for"
    ]


def cut_prompts(req: ImageRequest) -> list[str]:
    """A prompt longer than the text encoder reads is cut, silently in diffusers (a line in the
    worker's log): the answer says so where the count is certain."""
    notes = []
    for field, text in (("prompt", req.prompt), ("negative_prompt", req.negative_prompt)):
        n = clip_tokens_at_least(text or "")
        if n > CLIP_CONTENT_TOKENS:
            notes.append(
                f"{field}: {n} words and marks at least, and the model's text encoder (CLIP) reads "
                f"the first {CLIP_CONTENT_TOKENS} tokens: the rest is ignored; put what matters first"
            )
    return notes


def check_size(engine: Engine, width: int, height: int, steps: int | None) -> None:
    limits = engine.config.server
    pixels = width * height
    if pixels > limits.max_image_pixels:
        raise APIError(
            422,
            "image_too_large",
            f"{width}x{height} is {pixels} pixels; the limit is {limits.max_image_pixels} (width x height, "
            "server.max_image_pixels)",
        )
    if steps is not None and steps > limits.max_image_steps:
        raise APIError(
            422,
            "too_many_steps",
            f"steps {steps} is over the limit of {limits.max_image_steps} (server.max_image_steps)",
        )


@router.post(
    "/api/image/generate",
    status_code=202,
    response_model=ImageAccepted,
    responses=ERRORS,
    summary="Queue an image; returns at once with the task id",
    openapi_extra=body_doc(ImageGenerateRequest),
)
async def image_generate(request: Request) -> Any:
    body = await json_body(request, ImageGenerateRequest)
    engine = engine_of(request)
    require_lane(engine, Lane.IMAGE)
    check_size(engine, body.width, body.height, body.steps)
    model, req, warnings = _pick_model(engine, body)
    req, capped = capped_steps(engine, model, req)
    warnings += capped + cut_prompts(req)
    handle = engine.submit(
        IMAGE,
        model,
        req,
        priority=body.priority,
        timeout_s=body.timeout_s,
        client=client_of(request),
        owner=owner_of(request),
    )
    view = engine.lookup(handle.task_id)
    return {
        "task_id": handle.task_id,
        "status": view.state if view else "queued",
        "queue_position": view.queue_position if view else None,
        "model": model,
        "progress_url": f"/api/image/progress/{handle.task_id}",
        # Signed where keys are configured: it goes into <img src> as it is (signed_urls).
        "result_url": opened_by_url(request.app.state.url_signer, result_url(handle.task_id)),
        "warnings": warnings,
    }


def progress_body(view: TaskView[Any]) -> dict[str, Any]:
    total = view.progress_total
    done = view.progress_done
    # Below 1 until it is done: the decode after the last step is work too (a bar said 100%
    # for half of a large image's time, then 99%: now by time, Scheduler.fraction_done).
    if view.succeeded:
        fraction = 1.0
    elif view.fraction_done is not None:
        fraction = view.fraction_done
    else:
        fraction = min(0.99, done / total) if total else 0.0
    return ImageProgress(
        task_id=view.id,
        status=view.state,
        step=done,
        total_steps=total,
        progress=fraction,
        queue_position=view.queue_position,
        eta_s=view.eta_s,
        waiting_for=view.waiting_for,
        waiting_for_model=view.waiting_for_model,
        error={"code": view.error_code or "failed", "message": view.error_message or ""}
        if view.state in ("failed", "cancelled")
        else None,
    ).model_dump()


@router.get(
    "/api/image/progress/{task_id}",
    response_model=ImageProgress,
    responses=ERRORS,
    summary="Status, step, fraction done, queue position, ETA",
)
async def image_progress(task_id: str, request: Request) -> Any:
    return progress_body(view_or_404(request, task_id, IMAGE))


@router.get(
    "/api/image/result/{task_id}",
    responses={**ERRORS, 200: {"content": {"image/png": {}}}},
    response_class=FileResponse,
    summary="The PNG of a finished task",
)
async def image_result(task_id: str, request: Request) -> Any:
    engine = engine_of(request)
    view = view_or_404(request, task_id, IMAGE)
    if not view.succeeded or view.result is None:
        why = no_result(view, "image")
        return JSONResponse(
            {"error": {"code": why.code, "message": why.message}, "progress": progress_body(view)},
            status_code=why.status,
            # x-should-retry: false on a cancelled or failed task (OpenAI's SDKs retry a 409).
            headers={"X-Task-Id": task_id, **why.headers},
        )
    path = engine.files.servable(IMAGE_FOLDER, view.result.path)
    if path is None:  # served only from the data folder
        raise APIError(404, "not_found", f"the image of task {task_id} is no longer on disk")
    return ResultFile(path, media_type="image/png", headers={"X-Task-Id": task_id, **RESULT_CACHING})


# HEAD as GET (a browser or a proxy asking the type and length first): it was 405.
router.add_api_route("/api/image/result/{task_id}", image_result, methods=["HEAD"], include_in_schema=False)


@router.post(
    "/api/image/cancel/{task_id}",
    responses=ERRORS,
    summary="Cancel a queued task, or stop a running one at its next preemption point",
)
async def image_cancel(task_id: str, request: Request) -> Any:
    engine = engine_of(request)
    view = view_or_404(request, task_id, IMAGE)
    outcome = await engine.cancel_recorded(view.id)  # on disk before the answer
    after = engine.lookup(view.id) or view
    # `status` as the image progress says it; `state` and `cancelled` as /api/tasks/{id}/cancel
    # (the SDK's cancel) answers: one shape a client parses either way.
    cancelled = outcome in (CancelOutcome.CANCELLED, CancelOutcome.REQUESTED)
    return {
        "task_id": view.id,
        "outcome": outcome.value,
        "status": after.state,
        "state": after.state,
        "cancelled": cancelled,
    }


@router.get("/api/image/tasks", summary="Image tasks, newest first (durable: survives restarts)")
async def image_tasks(
    request: Request,
    status: str | None = Query(default=None, pattern="^(queued|running|succeeded|failed|cancelled)$"),
    limit: int = Query(default=100, ge=1, le=1000),
) -> Any:
    views = engine_of(request).durable_tasks(Lane.IMAGE, status, limit, viewer=viewer_of(request))
    return {"tasks": [progress_body(v) | {"model": v.model, "submitted_at": v.submitted_at} for v in views]}
