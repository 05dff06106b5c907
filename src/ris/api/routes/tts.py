"""POST /api/tts/synthesize and GET /api/tts/audio/{task_id}: speech, as JSON or WAV bytes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from ris.api.deps import client_of, engine_of, result_or_failure, view_or_404, wait_task
from ris.api.errors import APIError
from ris.api.schemas import ERRORS, TTSSynthesizeRequest, TTSSynthesizeResponse
from ris.api.streams import json_response
from ris.api.tts_support import pick_tts_model, require_speakable
from ris.lanes.base import timings_json
from ris.lanes.tts import AUDIO_FOLDER, TTSRequest
from ris.lanes.tts import LANE as TTS

router = APIRouter(tags=["tts"])


def audio_url(task_id: str) -> str:
    """Where a synthesis's WAV is served (`tts_audio`)."""
    return f"/api/tts/audio/{task_id}"


@router.post(
    "/api/tts/synthesize",
    responses={
        **ERRORS,
        200: {
            "model": TTSSynthesizeResponse,
            "content": {"audio/wav": {}},
            "description": "JSON, or the WAV bytes when the request sends Accept: audio/wav",
        },
    },
    summary="Synthesize speech; the WAV is fetchable by task id",
)
async def tts_synthesize(body: TTSSynthesizeRequest, request: Request) -> Any:
    engine = engine_of(request)
    limit = engine.config.server.max_tts_chars
    if len(body.text) > limit:
        raise APIError(413, "text_too_long", f"the text is {len(body.text)} characters; the limit is {limit}")
    require_speakable(body.text)
    model = pick_tts_model(engine, body.model, body.voice)
    req = TTSRequest(text=body.text, voice=body.voice, speed=body.speed)
    handle = engine.submit(
        TTS, model, req, priority=body.priority, timeout_s=body.timeout_s, client=client_of(request)
    )
    view = await wait_task(engine, handle, request)
    r = result_or_failure(view)
    accept = request.headers.get("accept", "")
    if "audio/wav" in accept and "application/json" not in accept:
        return FileResponse(
            r.audio_path,
            media_type="audio/wav",
            headers={
                "X-Task-Id": view.id,
                "X-Duration-S": f"{r.duration_s:.3f}",
                "X-Sample-Rate": str(r.sample_rate),
            },
        )
    return json_response(
        {
            "task_id": view.id,
            "model": r.model,
            "voice": r.voice,
            "sample_rate": r.sample_rate,
            "duration_s": r.duration_s,
            "audio_url": audio_url(view.id),
            "timings": timings_json(r.timings),
        }
    )


@router.get(
    "/api/tts/audio/{task_id}",
    responses={**ERRORS, 200: {"content": {"audio/wav": {}}}},
    summary="The WAV of a finished synthesis",
    response_class=Response,
)
async def tts_audio(task_id: str, request: Request) -> Any:
    engine = engine_of(request)
    view = view_or_404(engine, task_id, TTS)
    if not view.succeeded or view.result is None:
        raise APIError(409, "not_ready", f"task {task_id} is {view.state}, no audio")
    path = engine.files.servable(AUDIO_FOLDER, view.result.audio_path)
    if path is None:
        raise APIError(404, "not_found", f"the audio of task {task_id} is no longer on disk")
    return FileResponse(path, media_type="audio/wav")
