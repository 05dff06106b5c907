"""Tasks of every lane: list, look up, cancel; and submit to lanes without routes of their own."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError

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
from ris.api.errors import APIError
from ris.api.routes.image import result_url
from ris.api.routes.tts import audio_url
from ris.api.schemas import ERRORS, TASK_VIEW_SPECIAL, TaskInfo, TaskSubmit
from ris.api.signed_urls import UrlSigner, opened_by_url
from ris.lanes.image import LANE as IMAGE
from ris.lanes.tts import LANE as TTS
from ris.runtime.engine import Engine
from ris.runtime.views import TaskView
from ris.scheduler import CancelOutcome

router = APIRouter(tags=["tasks"])
STATES = "^(queued|running|succeeded|failed|cancelled)$"
# Lanes whose results name a file: the key of its URL in the result's JSON, and the URL
# of the route that serves it.
FILE_LINKS: dict[str, tuple[str, Callable[[str], str]]] = {
    TTS.name: ("audio_url", audio_url),
    IMAGE.name: ("result_url", result_url),
}


def public_result(view: TaskView[Any], signer: UrlSigner | None) -> dict[str, Any] | None:
    """A task's result as clients see it: the lane's public fields, and its file's URL (signed
    where keys are configured: signed_urls)."""
    if view.result is None:
        return None
    data: dict[str, Any] = view.result.public_json()
    link = FILE_LINKS.get(view.lane)
    if link is None:
        return data
    # Speech that was only streamed keeps no file: no link to a 404.
    return {**data, link[0]: opened_by_url(signer, link[1](view.id)) if view.result.files() else None}


def task_info(
    view: TaskView[Any], with_result: bool = True, signer: UrlSigner | None = None
) -> dict[str, Any]:
    """A task as JSON (the shape of schemas.TaskInfo); lists leave results out (they can be
    long, and a listing is not the place to read another caller's answer)."""
    fields = {
        f.name: getattr(view, f.name) for f in dataclasses.fields(view) if f.name not in TASK_VIEW_SPECIAL
    }
    failed = view.error_code or view.error_message
    return {
        "task_id": view.id,
        **fields,
        "error": {"code": view.error_code or "failed", "message": view.error_message or ""}
        if failed
        else None,
        "result": public_result(view, signer) if with_result else None,
    }


def _known_lane(engine: Engine, lane: str) -> None:
    if lane not in engine.config.lanes:
        known = ", ".join(engine.config.lanes)
        raise APIError(422, "invalid_request", f"lane: unknown lane {lane!r}; lanes: {known}")


@router.post(
    "/api/tasks",
    status_code=202,
    response_model=TaskInfo,
    responses=ERRORS,
    summary="Submit a task to a lane that has no route of its own (a registered lane kind)",
    openapi_extra=body_doc(TaskSubmit),
)
async def submit_task(request: Request) -> Any:
    body = await json_body(request, TaskSubmit)
    engine = engine_of(request)
    _known_lane(engine, body.lane)
    kind = engine.kinds[body.lane]
    if not kind.generic_api:
        raise APIError(
            422,
            "invalid_request",
            f"lane: the {body.lane} lane takes its requests at its own routes (/api/{body.lane}/...)",
        )
    require_lane(engine, body.lane)
    fields = [f.name for f in dataclasses.fields(kind.request_type)]
    unknown = sorted(set(body.request) - set(fields))
    if unknown:
        raise APIError(
            422, "invalid_request", f"request: unknown field {unknown[0]!r}; fields: {', '.join(fields)}"
        )
    try:
        req: Any = TypeAdapter(kind.request_type).validate_python(body.request)
    except ValidationError as e:
        problems = "; ".join(f"request.{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise APIError(422, "invalid_request", problems) from None
    model = resolve_model(engine, body.lane, body.model)
    handle = engine.submit(
        kind,
        model,
        req,
        priority=body.priority,
        timeout_s=body.timeout_s,
        client=client_of(request),
        owner=owner_of(request),
    )
    view = engine.lookup(handle.task_id)
    assert view is not None
    return JSONResponse(task_info(view, signer=request.app.state.url_signer), status_code=202)


@router.get(
    "/api/tasks",
    summary="Live and recent tasks of every lane, newest first (images, speech: from before restarts too)",
)
async def list_tasks(
    request: Request,
    lane: str | None = Query(default=None, description="llm, tts, image, ..."),
    state: str | None = Query(default=None, pattern=STATES),
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    engine = engine_of(request)
    if lane is not None:
        _known_lane(engine, lane)
    views = engine.tasks(lane, state, limit, viewer=viewer_of(request))
    return {"tasks": [task_info(v, with_result=False) for v in views]}


@router.get("/api/tasks/{task_id}", responses=ERRORS, response_model=TaskInfo)
async def get_task(task_id: str, request: Request) -> dict[str, Any]:
    return task_info(view_or_404(request, task_id), signer=request.app.state.url_signer)


@router.post("/api/tasks/{task_id}/cancel", responses=ERRORS, summary="Cancel a queued or running task")
async def cancel_task(task_id: str, request: Request) -> dict[str, Any]:
    engine = engine_of(request)
    view = view_or_404(request, task_id)
    outcome = await engine.cancel_recorded(view.id)  # on disk before the answer
    after = engine.lookup(view.id) or view
    return {
        "task_id": view.id,
        "outcome": outcome.value,
        "state": after.state,
        "cancelled": outcome in (CancelOutcome.CANCELLED, CancelOutcome.REQUESTED),
    }


@router.delete(
    "/api/tasks/{task_id}",
    responses=ERRORS,
    summary="Delete a finished task: its record and its result file (a picture, a recording), now",
)
async def delete_task(task_id: str, request: Request) -> dict[str, Any]:
    """A finished task of any lane, deleted with its files before the answer; its id then
    answers 404 everywhere. A task still queued or running is refused (409 task_not_finished):
    cancel it first, then delete it once it has ended. A user key deletes its own tasks, an
    admin key any."""
    engine = engine_of(request)
    view = view_or_404(request, task_id)
    if view.state in ("queued", "running"):
        raise APIError(
            409,
            "task_not_finished",
            f"task {view.id} is {view.state}: only a finished task is deleted; cancel it first "
            f"(POST /api/tasks/{view.id}/cancel), then delete it once it has ended (one that has "
            "just ended reads as running for the moment its record takes to reach the disk)",
        )
    await engine.delete(view)
    return {"task_id": view.id, "object": "task.deleted", "deleted": True}
