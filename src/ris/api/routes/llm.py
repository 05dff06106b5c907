"""POST /api/llm/generate: text generation, whole or streamed as server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ris.api.deps import (
    body_doc,
    engine_of,
    json_body,
    llm_context,
    llm_warnings,
    require_constraining_backend,
    resolve_model,
    submit,
    wait_task,
)
from ris.api.errors import failure
from ris.api.llm_request import seed_llm_request
from ris.api.schemas import ERRORS, LLMGenerateRequest, LLMGenerateResponse
from ris.api.streams import json_response, sse_event, texts
from ris.lanes import Lane
from ris.lanes.base import timings_json
from ris.lanes.llm import LLMResult
from ris.runtime.engine import Engine
from ris.runtime.views import TaskHandle, TaskView

router = APIRouter(tags=["llm"])


@router.post(
    "/api/llm/generate",
    responses={
        **ERRORS,
        200: {"model": LLMGenerateResponse, "content": {"text/event-stream": {}}},
    },
    summary="Generate text (streams server-sent events with stream=true)",
    openapi_extra=body_doc(LLMGenerateRequest),
)
async def llm_generate(request: Request) -> Any:
    body = await json_body(request, LLMGenerateRequest)
    engine = engine_of(request)
    model = resolve_model(engine, Lane.LLM, body.model)
    if body.json_schema is not None:
        require_constraining_backend(engine, model, "json_schema")
    req = seed_llm_request(engine.config.server, body, llm_context(engine, model), body.json_schema)
    texts_in = [body.system, body.prompt, *(m.content for m in body.messages or ())]
    warnings = llm_warnings(engine, model, texts_in)
    handle = submit(engine, Lane.LLM, model, req, body.priority, body.timeout_s)
    if body.stream:
        return StreamingResponse(
            _sse(engine, handle, warnings),
            media_type="text/event-stream",
            headers={"X-Task-Id": handle.task_id, "Cache-Control": "no-cache"},
        )
    view = await wait_task(engine, handle, request)
    if not view.succeeded:
        raise failure(view)
    # A plain response: the body is built from a typed result, so FastAPI's response-model
    # validation would only check it a second time, on the hot path.
    return json_response(generation_body(view, warnings))


def generation_body(view: TaskView, warnings: list[str]) -> dict[str, Any]:
    """The answer; `warnings`: what the client may not expect of it (a prompt in a language
    the model does not write), always present, empty when there is nothing to say."""
    r = view.result
    assert isinstance(r, LLMResult)
    return {
        "task_id": view.id,
        "model": r.model,
        "text": r.text,
        "finish_reason": r.finish_reason,
        "usage": {
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
        },
        "timings": timings_json(r.timings),
        "warnings": warnings,
    }


async def _sse(engine: Engine, handle: TaskHandle, warnings: list[str]) -> AsyncIterator[bytes]:
    finished = False
    try:
        yield sse_event("start", {"task_id": handle.task_id, "model": handle.model, "warnings": warnings})
        async for text in texts(handle):
            yield sse_event("token", {"text": text})
        view = await handle.done
        finished = True
        if view.succeeded:
            yield sse_event("done", generation_body(view, warnings))
        else:
            err = failure(view)
            yield sse_event("error", {"code": err.code, "message": err.message})
    finally:
        if not finished:  # the client went away mid-stream: stop spending the lane on it
            engine.cancel(handle.task_id)
