"""POST /api/llm/generate: text generation, whole or streamed as server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ris.api.deps import (
    body_doc,
    cancel_unless_ended,
    client_of,
    engine_of,
    json_body,
    owner_of,
    resolve_model,
    result_or_failure,
    wait_task,
)
from ris.api.errors import failure
from ris.api.llm_request import seed_llm_request
from ris.api.llm_support import context_full, llm_context, llm_warnings, require_constraining_backend
from ris.api.schemas import ERRORS, LLMGenerateRequest, LLMGenerateResponse
from ris.api.streams import json_response, sse_event, texts
from ris.lanes import Lane
from ris.lanes.base import timings_json
from ris.lanes.json_schemas import unenforced
from ris.lanes.llm import LANE as LLM
from ris.lanes.llm import LLMResult
from ris.runtime.engine import Engine
from ris.runtime.views import TaskHandle

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
    loose = unenforced(body.json_schema) if body.json_schema is not None else []
    if loose:  # served, as /v1 serves a schema that is not strict, and said
        warnings.append(f"json_schema: the grammar does not enforce {', '.join(loose[:5])}")
    handle = engine.submit(
        LLM,
        model,
        req,
        priority=body.priority,
        timeout_s=body.timeout_s,
        client=client_of(request),
        owner=owner_of(request),
    )
    # What the client asked, not the default: an answer with none asked ends where it ends.
    asked = req.max_tokens if "max_tokens" in body.model_fields_set else None
    if body.stream:
        return StreamingResponse(
            _sse(engine, handle, warnings, asked),
            media_type="text/event-stream",
            headers={"X-Task-Id": handle.task_id, "Cache-Control": "no-cache"},
        )
    r = result_or_failure(await wait_task(engine, handle, request))
    # A plain response: the body is built from a typed result, so FastAPI's response-model
    # validation would only check it a second time, on the hot path.
    return json_response(generation_body(handle.task_id, r, warnings + context_full(r, asked)))


def generation_body(task_id: str, r: LLMResult, warnings: list[str]) -> dict[str, Any]:
    """The answer; `warnings`: what the client may not expect of it (a prompt in a language
    the model does not write), always present, empty when there is nothing to say."""
    return {
        "task_id": task_id,
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


async def _sse(
    engine: Engine, handle: TaskHandle[LLMResult], warnings: list[str], asked: int | None
) -> AsyncIterator[bytes]:
    with cancel_unless_ended(engine, handle):
        yield sse_event("start", {"task_id": handle.task_id, "model": handle.model, "warnings": warnings})
        async for text in texts(handle):
            yield sse_event("token", {"text": text})
        view = await handle.done
        if view.succeeded and view.result is not None:
            notes = warnings + context_full(view.result, asked)
            yield sse_event("done", generation_body(view.id, view.result, notes))
        else:
            err = failure(view)
            yield sse_event("error", {"code": err.code, "message": err.message})
