"""POST /api/tts/synthesize and GET /api/tts/audio/{task_id}: speech, as JSON or audio bytes in
any of the OpenAI formats (mp3, opus, aac, flac, wav, pcm)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from ris.api.deps import (
    body_doc,
    client_of,
    engine_of,
    json_body,
    owner_of,
    result_or_failure,
    view_or_404,
    wait_task,
)
from ris.api.errors import APIError, no_result
from ris.api.schemas import ERRORS, TTSSynthesizeRequest, TTSSynthesizeResponse
from ris.api.signed_urls import opened_by_url
from ris.api.streams import RESULT_CACHING, ResultFile, json_response, warnings_header
from ris.api.tts_support import accepted_format, pick_tts_model, require_speakable, voice_for_text
from ris.lanes.base import timings_json
from ris.lanes.tts import AUDIO_FOLDER, TTSRequest, speed_note
from ris.lanes.tts import LANE as TTS
from ris.services.audio import AUDIO_PIECE_BYTES
from ris.services.speech_encoding import (
    MEDIA_TYPES,
    SpeechFormat,
    encode_stream,
    encoded_file,
    stream_rate,
    wav_file_pcm,
)

router = APIRouter(tags=["tts"])

_AUDIO_TYPES: dict[str | int, dict[str, Any]] = {200: {"content": {m: {} for m in MEDIA_TYPES.values()}}}


def audio_url(task_id: str, fmt: SpeechFormat | None = None) -> str:
    """Where a synthesis's audio is served (`tts_audio`); WAV unless `fmt` says otherwise."""
    url = f"/api/tts/audio/{task_id}"
    return url if fmt in (None, "wav") else f"{url}?format={fmt}"


def audio_response(path: Path, fmt: SpeechFormat, sample_rate: int, headers: dict[str, str]) -> Response:
    """A finished synthesis's WAV file in `fmt`: the file itself for wav, else encoded as it
    is read, a piece at a time in a worker thread (a long answer is never all in memory).
    X-Sample-Rate says the rate (raw PCM has no header: GET /api/tts/audio/{id}?format=pcm
    said nothing, and its 22,050 Hz read as /v1's 24,000)."""
    headers = {**headers, "X-Sample-Rate": str(stream_rate(fmt, sample_rate))}
    if fmt == "wav":
        return ResultFile(path, media_type=MEDIA_TYPES[fmt], headers={**headers, **RESULT_CACHING})
    body = encode_stream(wav_file_pcm(path, AUDIO_PIECE_BYTES), fmt, sample_rate)
    return StreamingResponse(body, media_type=MEDIA_TYPES[fmt], headers=headers)


@router.post(
    "/api/tts/synthesize",
    responses={
        **ERRORS,
        200: {
            "model": TTSSynthesizeResponse,
            "content": {m: {} for m in MEDIA_TYPES.values()},
            "description": "JSON, or the audio's bytes when Accept asks for audio (audio/mpeg, "
            "audio/ogg, audio/aac, audio/flac, audio/wav, audio/pcm or audio/*) and not JSON; "
            "answered once the whole text is spoken (for sound as it is made: /v1/audio/speech, "
            "or /api/chat/speak for an LLM's answer)",
        },
        406: {"description": "Accept names no audio type served, or not the one `format` asks for"},
    },
    summary="Synthesize speech; the audio is fetchable by task id",
    openapi_extra=body_doc(TTSSynthesizeRequest),
)
async def tts_synthesize(request: Request) -> Any:
    body = await json_body(request, TTSSynthesizeRequest)
    engine = engine_of(request)
    limit = engine.config.server.max_tts_chars
    if len(body.text) > limit:
        raise APIError(
            413,
            "text_too_long",
            f"the text is {len(body.text)} characters; the limit is {limit} (server.max_tts_chars)",
        )
    require_speakable(body.text)
    # Before queueing: a request whose answer cannot be written is refused without work.
    fmt = accepted_format(request.headers.get("accept", ""), body.format)
    if body.voice is None:
        model, voice, warnings = voice_for_text(engine, body.model, body.text)
    else:
        model, voice, warnings = pick_tts_model(engine, body.model, body.voice), body.voice, []
    slow_or_fast = speed_note(engine.config.lane(TTS.name).models[model].backend, body.speed)
    warnings += [slow_or_fast] if slow_or_fast else []
    req = TTSRequest(text=body.text, voice=voice, speed=body.speed)
    handle = engine.submit(
        TTS,
        model,
        req,
        priority=body.priority,
        timeout_s=body.timeout_s,
        client=client_of(request),
        owner=owner_of(request),
        streamed=False,  # answered once it ended: no piece of audio needs to leave early
    )
    view = await wait_task(engine, handle, request)
    r = result_or_failure(view)
    if fmt is not None:
        headers = {
            "X-Task-Id": view.id,
            "X-Duration-S": f"{r.duration_s:.3f}",
            **warnings_header(warnings),  # the JSON answer's `warnings`, for audio bytes
        }
        return audio_response(Path(r.audio_path), fmt, r.sample_rate, headers)
    return json_response(
        {
            "task_id": view.id,
            "model": r.model,
            "voice": r.voice,
            # The rate of the audio audio_url serves: opus is 24 kHz whatever the voice's.
            "sample_rate": stream_rate(body.format or "wav", r.sample_rate),
            "duration_s": r.duration_s,
            # Signed where keys are configured: it goes into <audio src> as it is (signed_urls).
            "audio_url": opened_by_url(request.app.state.url_signer, audio_url(view.id, body.format)),
            "timings": timings_json(r.timings),
            "warnings": warnings,
        }
    )


@router.get(
    "/api/tts/audio/{task_id}",
    responses={**ERRORS, **_AUDIO_TYPES, 406: {"description": "Accept names no audio type served"}},
    summary="The audio of a finished synthesis (WAV unless `format` or Accept asks otherwise)",
    response_class=Response,
)
async def tts_audio(
    task_id: str,
    request: Request,
    format: Annotated[
        SpeechFormat | None,
        Query(description="mp3, opus, aac, flac, wav or pcm; else the type Accept names, else wav"),
    ] = None,
) -> Any:
    engine = engine_of(request)
    fmt = accepted_format(request.headers.get("accept", ""), format) or format or "wav"
    view = view_or_404(request, task_id, TTS)
    if not view.succeeded or view.result is None:
        raise no_result(view, "audio")
    path = engine.files.servable(AUDIO_FOLDER, view.result.audio_path)
    if path is None:
        raise APIError(404, "not_found", f"the audio of task {task_id} is no longer on disk")
    rate = view.result.sample_rate
    if fmt != "wav" and "range" in request.headers:
        # A player that seeks (a browser's <audio>): the encoded file, whose ranges it can ask.
        try:
            encoded = await encoded_file(path, fmt, rate, AUDIO_PIECE_BYTES)
        except OSError:  # no room to keep it (a full disk): streamed as before
            if not path.exists():  # or its task's files went (a retention sweep) meanwhile
                gone = f"the audio of task {task_id} is no longer on disk"
                raise APIError(404, "not_found", gone) from None
        else:
            headers = {"X-Task-Id": view.id, "X-Sample-Rate": str(stream_rate(fmt, rate))}
            return ResultFile(encoded, media_type=MEDIA_TYPES[fmt], headers={**headers, **RESULT_CACHING})
    if request.method == "HEAD" and fmt != "wav":  # the headers alone: nothing encoded for nobody
        said = str(stream_rate(fmt, rate))
        head = Response(media_type=MEDIA_TYPES[fmt], headers={"X-Task-Id": view.id, "X-Sample-Rate": said})
        # As GET's: encoded as it is read, of no length known before (it said 0).
        del head.headers["content-length"]
        return head
    return audio_response(path, fmt, rate, {"X-Task-Id": view.id})


# HEAD as GET (a player or a proxy asking the type and length first): it was 405.
router.add_api_route("/api/tts/audio/{task_id}", tts_audio, methods=["HEAD"], include_in_schema=False)
