"""The seed's work endpoints: /api/llm/generate, /api/tts/synthesize, /api/image/generate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from ris import messages as m
from ris.api.common import check_prompt, failure, pick_tts_model, resolve_model, sse_event, submit, wait_task
from ris.api.deps import engine_of, view_or_404
from ris.api.errors import APIError
from ris.api.schemas import (
    ErrorBody,
    LLMGenerateRequest,
    LLMGenerateResponse,
    TTSSynthesizeRequest,
    TTSSynthesizeResponse,
)
from ris.runtime.engine import Engine, TaskHandle
from ris.scheduler import Lane, Task, TaskState

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody} for s in (404, 413, 422, 429, 500, 503, 504)
}


# ----- LLM -----------------------------------------------------------------------------------


@router.post(
    "/api/llm/generate",
    response_model=LLMGenerateResponse,
    responses={**ERRORS, 200: {"content": {"application/json": {}, "text/event-stream": {}}}},
    tags=["llm"],
    summary="Generate text (streams server-sent events with stream=true)",
)
async def llm_generate(body: LLMGenerateRequest, request: Request) -> Any:
    engine = engine_of(request)
    contents = [x.content for x in body.messages] if body.messages is not None else None
    check_prompt(engine, body.prompt, contents, body.max_tokens)
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4 or any(not s or len(s) > 64 for s in stops):
        raise APIError(422, "invalid_request", "stop: at most 4 strings of 1 to 64 characters")
    model = resolve_model(engine, Lane.LLM, body.model)
    req = m.LLMRequest(
        prompt=body.prompt,
        messages=tuple((x.role, x.content) for x in body.messages) if body.messages else None,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=tuple(stops),
        seed=body.seed,
        ignore_eos=body.ignore_eos,
    )
    handle = submit(engine, Lane.LLM, model, req, body.priority, body.timeout_s)
    if body.stream:
        return StreamingResponse(
            _sse(engine, handle),
            media_type="text/event-stream",
            headers={"X-Task-Id": handle.task_id, "Cache-Control": "no-cache"},
        )
    task = await wait_task(engine, handle)
    if task.state is not TaskState.SUCCEEDED:
        raise failure(task)
    return _llm_body(task)


def _llm_body(task: Task) -> dict[str, Any]:
    r = task.result
    return {
        "task_id": task.id,
        "model": r["model"],
        "text": r["text"],
        "finish_reason": r["finish_reason"],
        "usage": {
            "prompt_tokens": r["prompt_tokens"],
            "completion_tokens": r["completion_tokens"],
            "total_tokens": r["prompt_tokens"] + r["completion_tokens"],
        },
        "timings": r["timings"],
    }


async def _sse(engine: Engine, handle: TaskHandle) -> AsyncIterator[bytes]:
    finished = False
    try:
        yield sse_event("start", {"task_id": handle.task_id, "model": handle.model})
        while True:
            item = await handle.events.get()
            if item is None:
                break
            if isinstance(item, m.TextDelta):
                yield sse_event("token", {"text": item.text})
        task = await handle.done
        finished = True
        if task.state is TaskState.SUCCEEDED:
            yield sse_event("done", _llm_body(task))
        else:
            err = failure(task)
            yield sse_event("error", {"code": err.code, "message": err.message})
    finally:
        if not finished:  # the client went away mid-stream: stop spending the lane on it
            engine.cancel(handle.task_id)


# ----- TTS -----------------------------------------------------------------------------------


@router.post(
    "/api/tts/synthesize",
    response_model=TTSSynthesizeResponse,
    responses={
        **ERRORS,
        200: {
            "content": {"audio/wav": {}},
            "description": "JSON, or the WAV bytes when the request sends Accept: audio/wav",
        },
    },
    tags=["tts"],
    summary="Synthesize speech; the WAV is fetchable by task id",
)
async def tts_synthesize(body: TTSSynthesizeRequest, request: Request) -> Any:
    engine = engine_of(request)
    limit = engine.config.server.max_tts_chars
    if len(body.text) > limit:
        raise APIError(413, "text_too_long", f"the text is {len(body.text)} characters; the limit is {limit}")
    model = pick_tts_model(engine, body.model, body.voice)
    req = m.TTSRequest(text=body.text, voice=body.voice, speed=body.speed)
    handle = submit(engine, Lane.TTS, model, req, body.priority, body.timeout_s)
    task = await wait_task(engine, handle)
    if task.state is not TaskState.SUCCEEDED:
        raise failure(task)
    r = task.result
    accept = request.headers.get("accept", "")
    if "audio/wav" in accept and "application/json" not in accept:
        return FileResponse(
            r["audio_path"],
            media_type="audio/wav",
            headers={
                "X-Task-Id": task.id,
                "X-Duration-S": f"{r['duration_s']:.3f}",
                "X-Sample-Rate": str(r["sample_rate"]),
            },
        )
    return {
        "task_id": task.id,
        "model": r["model"],
        "voice": r["voice"],
        "sample_rate": r["sample_rate"],
        "duration_s": r["duration_s"],
        "audio_url": f"/api/tts/audio/{task.id}",
        "timings": r["timings"],
    }


@router.get(
    "/api/tts/audio/{task_id}",
    responses={**ERRORS, 200: {"content": {"audio/wav": {}}}},
    tags=["tts"],
    summary="The WAV of a finished synthesis",
    response_class=Response,
)
async def tts_audio(task_id: str, request: Request) -> Any:
    engine = engine_of(request)
    view = view_or_404(engine, task_id)
    if view.lane is not Lane.TTS:
        raise APIError(404, "not_found", f"task {task_id} is not a TTS task")
    if view.state != "succeeded" or not view.result:
        raise APIError(409, "not_ready", f"task {task_id} is {view.state}, no audio")
    return FileResponse(view.result["audio_path"], media_type="audio/wav")
