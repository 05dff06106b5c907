"""POST /api/chat/speak: an LLM answer spoken while it is generated (ris.services.speaking).

The response is audio (a streaming WAV or raw PCM), or, with `"stream_format": "events"`,
server-sent events: `text` (a sentence as it goes to TTS), `audio` (base64 PCM), `llm_done`,
`done` or `error`, in the order they happened. Audio starts (status line and all) with the
first sound: a failure before it is an HTTP error; a failure after it breaks the body off.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator, AsyncIterator
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
    unless_gone,
)
from ris.api.errors import APIError, task_error
from ris.api.llm_request import seed_llm_request
from ris.api.llm_support import llm_context, llm_warnings
from ris.api.schemas import SpeakRequest
from ris.api.streams import StreamBroken, sse_event, warnings_header
from ris.api.tts_support import pick_tts_model, tts_rate, voice_for_text
from ris.lanes import Lane
from ris.lanes.llm import LANE as LLM
from ris.lanes.tts import speed_note
from ris.lanes.tts_audio import wav_header
from ris.services.speaking import SpeakingPipeline

router = APIRouter(tags=["speak"])


@router.post(
    "/api/chat/speak",
    responses={200: {"content": {"audio/wav": {}, "audio/pcm": {}, "text/event-stream": {}}}},
    response_class=StreamingResponse,
    summary="Chat answer spoken as it is generated (audio or events)",
    openapi_extra=body_doc(SpeakRequest),
)
async def chat_speak(request: Request) -> Any:
    body = await json_body(request, SpeakRequest)
    if body.messages is None and not (body.prompt or "").strip():
        # Spoken as it was: the model talking about nothing for seconds (/api/tts/synthesize
        # and /v1/audio/speech refuse an empty text too).
        raise APIError(
            422,
            "invalid_request",
            "prompt is empty: give what to answer (prompt, or messages)",
            param="prompt",
        )
    engine = engine_of(request)
    llm_model = resolve_model(engine, Lane.LLM, body.model)
    req = seed_llm_request(engine.config.server, body, llm_context(engine, llm_model))
    models: dict[str, tuple[str, ...]] = {}
    home = None
    if body.voice is None:
        # The answer is not written yet: a model with a voice for the language the user
        # writes in (a Chinese question was answered in Chinese and read by the English voice
        # as "Chinese letter" after "Chinese letter"), and each sentence read by a voice of
        # its script, of that model or (none named) another of the stream's sample rate; a
        # sentence in Latin letters by the named or default model (the pipeline's `models`).
        users = [m.content for m in body.messages or () if m.role == "user"]
        asked = body.prompt or (users[-1] if users else "")
        tts_model, _, said = voice_for_text(engine, body.tts_model, asked, "the prompt")
        rate = tts_rate(engine, tts_model)
        home = pick_tts_model(engine, body.tts_model, None)
        infos = engine.known_model_infos(Lane.TTS)
        names = [tts_model] if body.tts_model is not None else [tts_model, home, *infos]
        models = {
            n: infos[n].details.voices
            for n in dict.fromkeys(names)
            if n in infos and infos[n].details.sample_rate == rate
        }
    else:
        tts_model, said = pick_tts_model(engine, body.tts_model, body.voice), []
        rate = tts_rate(engine, tts_model)
    # What /api/llm/generate and /api/tts/synthesize would warn of: in `start`, or X-Warnings.
    warnings = llm_warnings(
        engine, llm_model, [body.system, body.prompt, *(m.content for m in body.messages or ())]
    )
    warnings += said
    slow_or_fast = speed_note(engine.config.lane(Lane.TTS).models[tts_model].backend, body.speed)
    warnings += [slow_or_fast] if slow_or_fast else []
    client, owner = client_of(request), owner_of(request)
    llm = engine.submit(LLM, llm_model, req, client=client, owner=owner)
    pipeline = SpeakingPipeline(
        engine, llm, tts_model, body.voice, body.speed, client=client, owner=owner, models=models, home=home
    )
    if body.stream_format == "events":
        return StreamingResponse(
            _events(pipeline, rate, warnings),
            media_type="text/event-stream",
            headers={"X-Task-Id": llm.task_id},
        )
    events = pipeline.run()
    first = await unless_gone(request, _first_sound(events))  # the client may leave meanwhile
    media = "audio/wav" if body.audio_format == "wav" else "audio/pcm"
    return StreamingResponse(
        _audio(first, events, rate, body.audio_format == "wav"),
        media_type=media,
        headers={"X-Task-Id": llm.task_id, "X-Sample-Rate": str(rate), **warnings_header(warnings)},
    )


async def _first_sound(events: AsyncGenerator[tuple[str, dict[str, Any]]]) -> bytes:
    """The answer's first PCM chunk; an error before it (the LLM failed, nothing to speak, the
    TTS lane refused) is the response, with its status, instead of 200 and a silent WAV."""
    try:
        async for kind, data in events:
            if kind == "audio":
                return bytes(data["pcm"])
            if kind == "error":
                raise task_error(data["code"], data["message"])
        raise APIError(500, "synthesis_empty", "the answer was spoken with no audio")
    except BaseException:  # an error, or the client left: stop the answer and its sentences
        await events.aclose()
        raise


async def _audio(
    first: bytes, events: AsyncGenerator[tuple[str, dict[str, Any]]], rate: int, wav: bool
) -> AsyncIterator[bytes]:
    try:
        if wav:
            yield wav_header(rate)
        yield first
        async for kind, data in events:
            if kind == "audio":
                yield data["pcm"]
            elif kind == "error":  # a later sentence failed: break the body, do not end it cleanly
                raise StreamBroken(data["code"], data["message"])
    finally:
        await events.aclose()


async def _events(pipeline: SpeakingPipeline, rate: int, warnings: list[str]) -> AsyncIterator[bytes]:
    # The run's own cleanup cancels the answer, but only once the run has begun: a client gone
    # while `start` was sent left the LLM writing for nobody until its end.
    with cancel_unless_ended(pipeline.engine, pipeline.llm):
        yield sse_event(
            "start",
            {
                "task_id": pipeline.llm.task_id,
                "sample_rate": rate,
                "tts_model": pipeline.tts_model,
                "warnings": warnings,
            },
        )
        async for kind, data in pipeline.run():
            if kind == "audio":
                data = {"index": data["index"], "pcm": base64.b64encode(data["pcm"]).decode()}
            yield sse_event(kind, data)
