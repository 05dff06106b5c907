"""The OpenAI-compatible media API: /v1/audio/speech and /v1/images/generations."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
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
    require_lane,
    resolve_model,
    result_or_failure,
    unknown_model_message,
    wait_tasks,
)
from ris.api.errors import APIError
from ris.api.limits import IMAGE_SIDE_MULTIPLE, MAX_IMAGE_SIDE, MIN_IMAGE_SIDE, image_side_ok, wrap_seed
from ris.api.openai_schemas import ImageGenerationRequest, SpeechRequest
from ris.api.openai_strict import IMAGES, SPEECH, refuse_other_lane, refuse_unknown
from ris.api.routes.image import capped_steps, cut_prompts, result_url
from ris.api.signed_urls import opened_by_url
from ris.api.streams import json_response, warnings_header
from ris.api.tts_support import first_audio, pick_tts_model, require_speakable, task_pcm, tts_rate
from ris.lanes import Lane
from ris.lanes.image import LANE as IMAGE
from ris.lanes.image import ImageRequest
from ris.lanes.tts import LANE as TTS
from ris.lanes.tts import TTSRequest, speaks, speed_note, voice_key
from ris.languages import text_script
from ris.runtime.engine import Engine
from ris.services.audio import AudioStream
from ris.services.speech_encoding import MEDIA_TYPES, encode_stream, stream_rate

router = APIRouter(prefix="/v1", tags=["openai"])

# OpenAI's own model names, which its clients send by default: they mean the lane's default model.
OPENAI_SPEECH_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
OPENAI_IMAGE_MODELS = ("dall-e-2", "dall-e-3", "gpt-image-1")

# OpenAI's voice names. Its voices speak the input's language: one of them here is a voice of
# the language the input's script stands for (ris.languages: Chinese, Russian, Arabic, Hindi,
# ...; Latin letters: English), unless config's openai_voices names one for it.
OPENAI_VOICES = frozenset(
    ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage")
    + ("shimmer", "verse")
)
SCRIPT_VOICES = {"zh": "zh-CN"}
# OpenAI's pcm: 24 kHz, which its clients play it at (the SDK's LocalAudioPlayer among them).
OPENAI_PCM_RATE = 24_000


def openai_voice(voice: str, text: str, configured: Mapping[str, str], loaded: Collection[str] = ()) -> str:
    """The voice an OpenAI voice name stands for: the configured one (names compared without
    case), else one of the input's language (a loaded voice of another language written in
    its script where none of that language is: Ukrainian read by a Russian voice); any other
    name is a voice of ours, as given. `loaded`: every voice the TTS models speak."""
    name = voice.lower()
    chosen = {k.lower(): v for k, v in configured.items()}.get(name)
    if chosen is not None:
        return chosen
    if name not in OPENAI_VOICES:
        return voice
    found = text_script(text)
    if found is None:
        return "en-US"
    voices = [SCRIPT_VOICES.get(tag, tag) for tag in found.candidates]
    keys = {voice_key(v) for v in loaded}
    return next((v for v in voices if voice_key(v) in keys), voices[0])


@router.post(
    "/audio/speech",
    responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}},
    response_class=StreamingResponse,
    summary="Speech, encoded and streamed as it is synthesized (mp3, opus, aac, flac, wav, pcm)",
    openapi_extra=body_doc(SpeechRequest),
)
async def speech(request: Request) -> Any:
    body = await json_body(request, SpeechRequest)
    refuse_unknown(body, SPEECH)
    engine = engine_of(request)
    limit = engine.config.server.max_tts_chars
    if len(body.input) > limit:
        raise APIError(
            400,
            "input_too_long",
            f"input is {len(body.input)} characters; the limit is {limit} (server.max_tts_chars)",
            param="input",
        )
    require_speakable(body.input, 400, param="input")  # /v1 answers bad parameters with 400
    configured = engine.config.server.openai_voices
    loaded = [v for info in engine.known_model_infos(Lane.TTS).values() for v in info.details.voices]
    voice = openai_voice(body.voice, body.input, configured, loaded)
    wanted = _media_model(engine, Lane.TTS, body.model, OPENAI_SPEECH_MODELS)
    warnings: list[str] = []
    try:
        model = pick_tts_model(engine, wanted, voice)
    except APIError as e:
        # No voice of the input's language here (a lane of English voices only): spoken as
        # the name alone would be, not refused, and the answer says so.
        plain = openai_voice(body.voice, "", configured)
        if e.code != "unknown_voice" or plain == voice:
            raise
        # With a model named, another may well read it (espeak beside piper): said, not "none".
        others = [
            n
            for n, info in engine.known_model_infos(Lane.TTS).items()
            if n != wanted and speaks(info.details.voices, voice)
        ]
        where = (
            f"{wanted!r} has no voice for the input's language ({voice!r}; model {others[0]!r} has)"
            if wanted is not None and others
            else f"no loaded voice reads the input's language ({voice!r})"
        )
        warnings.append(
            f"voice: {where}; {plain!r} reads it as its own language would (pull a voice of that "
            "language: docs/MODELS_TTS.md)"
        )
        voice, model = plain, pick_tts_model(engine, wanted, plain)
    slow_or_fast = speed_note(engine.config.lane(TTS.name).models[model].backend, body.speed)
    warnings += [slow_or_fast] if slow_or_fast else []
    rate = tts_rate(engine, model)
    # Streamed, not kept: no WAV and no stored record outlive the answer (the native
    # /api/tts/synthesize is where a fetchable file is asked for).
    req = TTSRequest(text=body.input, voice=voice, speed=body.speed)
    handle = engine.submit(
        TTS, model, req, client=client_of(request), owner=owner_of(request), keep_files=False
    )
    audio = AudioStream(handle)
    first = await first_audio(engine, audio, request)  # a task that fails before any sound is an error

    async def stream() -> AsyncIterator[bytes]:
        with cancel_unless_ended(engine, handle):
            async for data in encode_stream(
                task_pcm(audio, first), body.response_format, rate, OPENAI_PCM_RATE
            ):
                yield data

    return StreamingResponse(
        stream(),
        media_type=MEDIA_TYPES[body.response_format],
        headers={
            "X-Task-Id": handle.task_id,
            "X-Sample-Rate": str(stream_rate(body.response_format, rate, OPENAI_PCM_RATE)),
            **warnings_header(warnings),
        },
    )


def _media_model(engine: Engine, lane: str, name: str | None, openai_names: tuple[str, ...]) -> str | None:
    """A configured model by name; None (the lane's default) for no name or one of OpenAI's;
    any other name is refused, never quietly replaced by the default."""
    models = engine.config.lane(lane).models
    if name is None or name in openai_names:
        return None
    if name in models:
        return name
    refuse_other_lane(
        engine, name, lane, f"/v1/{'audio/speech' if lane == Lane.TTS else 'images/generations'}"
    )
    message = (
        f"The model '{name}' does not exist; {lane} models: {', '.join(models) or 'none'} "
        f"(OpenAI's {', '.join(openai_names)} mean the default)"
    )
    raise APIError(404, "model_not_found", unknown_model_message(message, name, lane), param="model")


def _size(text: str, max_pixels: int) -> tuple[int, int]:
    try:
        width, height = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise APIError(
            400, "invalid_value", f"size {text!r} must look like '512x512'", param="size"
        ) from None
    if not (image_side_ok(width) and image_side_ok(height)):
        sides = f"each side {MIN_IMAGE_SIDE} to {MAX_IMAGE_SIDE} and a multiple of {IMAGE_SIDE_MULTIPLE}"
        raise APIError(400, "invalid_value", f"size {text!r}: {sides}", param="size")
    if width * height > max_pixels:
        raise APIError(400, "invalid_value", f"size {text!r} is over {max_pixels} pixels", param="size")
    return width, height


@router.post(
    "/images/generations",
    summary="Text to image; waits for the images",
    openapi_extra=body_doc(ImageGenerationRequest),
)
async def images_generations(request: Request) -> Any:
    body = await json_body(request, ImageGenerationRequest)
    refuse_unknown(body, IMAGES)
    engine = engine_of(request)
    require_lane(engine, Lane.IMAGE)
    size = "512x512" if body.size == "auto" else body.size
    width, height = _size(size, engine.config.server.max_image_pixels)
    fmt = body.response_format or ("b64_json" if body.model == "gpt-image-1" else "url")
    model = resolve_model(
        engine, Lane.IMAGE, _media_model(engine, Lane.IMAGE, body.model, OPENAI_IMAGE_MODELS)
    )
    seeds = [None if body.seed is None else wrap_seed(body.seed + i) for i in range(body.n)]
    # Its model's default steps, held to server.max_image_steps (OpenAI's API names no steps):
    # said in X-Warnings, OpenAI's body having no place for it.
    first, warnings = capped_steps(
        engine, model, ImageRequest(prompt=body.prompt, width=width, height=height)
    )
    warnings += cut_prompts(first)  # said on /api/image/generate, and nowhere here
    reqs = [dataclasses.replace(first, seed=seed) for seed in seeds]
    # All n or none: a 429 after some were queued would leave tasks running whose ids the
    # client never gets.
    # Not resumed after a restart: the client waits on this connection, which a stop closes.
    handles = engine.submit_many(
        IMAGE, model, reqs, client=client_of(request), owner=owner_of(request), resumable=False
    )
    views = await wait_tasks(engine, handles, request)
    data = []
    for view in views:
        image = result_or_failure(view)
        if fmt == "b64_json":
            # A file read and a base64 of megabytes: off the loop that streams others' tokens.
            b64 = await asyncio.to_thread(_b64_file, Path(image.path))
            data.append({"b64_json": b64, "revised_prompt": None})
        else:
            # Opens without the API key, as OpenAI's URLs do (<img src>): signed where keys are set.
            path = opened_by_url(request.app.state.url_signer, result_url(view.id))
            data.append({"url": f"{str(request.base_url).rstrip('/')}{path}"})
    # The tasks' ids, as every RIS answer names its task (the first is x-request-id too): a
    # client can find them in /api/tasks, the log and the console.
    named = {"X-Task-Id": ",".join(h.task_id for h in handles), "x-request-id": handles[0].task_id}
    return json_response(
        {"created": int(time.time()), "data": data}, headers={**named, **warnings_header(warnings)}
    )


def _b64_file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()
