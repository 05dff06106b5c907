"""The OpenAI-compatible API on the same lanes and scheduler: models, chat and text completions,
speech and image generation. Errors use OpenAI's shape (see errors.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ris import messages as m
from ris.api.common import failure, pick_tts_model, resolve_model, submit, wait_task
from ris.api.deps import engine_of
from ris.api.errors import APIError
from ris.runtime.engine import Engine, TaskHandle
from ris.scheduler import Lane, Task, TaskState

router = APIRouter(prefix="/v1", tags=["openai"])
JSON_OR_SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {}, "text/event-stream": {}}}
}

# OpenAI's voice names, mapped to voices our TTS models speak (override in config: openai_voices).
DEFAULT_VOICES = {
    name: "en-US"
    for name in (
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "nova",
        "onyx",
        "sage",
        "shimmer",
        "verse",
    )
}


class _OpenAIBody(BaseModel):
    # Clients send fields we do not use (user, presence_penalty, ...): accept and ignore them.
    model_config = ConfigDict(extra="allow")


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class OAMessage(_OpenAIBody):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingBody(_OpenAIBody):
    model: str
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1, description="only n=1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None


class ChatCompletionRequest(_SamplingBody):
    messages: list[OAMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_SamplingBody):
    prompt: str | list[str]


class SpeechRequest(_OpenAIBody):
    model: str
    input: str = Field(min_length=1)
    voice: str
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    response_format: Literal["wav", "pcm", "mp3", "opus", "aac", "flac"] = "mp3"


class ImageGenerationRequest(_OpenAIBody):
    prompt: str = Field(min_length=1, max_length=4000)
    model: str | None = None
    n: int = Field(default=1, ge=1, le=4)
    size: str = "512x512"
    response_format: Literal["url", "b64_json"] = "url"
    seed: int | None = None


# ----- models ---------------------------------------------------------------------------------


@router.get("/models", summary="Configured models of every lane")
async def list_models(request: Request) -> dict[str, Any]:
    engine = engine_of(request)
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": f"ris:{lane.value}"}
        for lane in Lane
        if engine.config.lane(lane).enabled
        for name in engine.config.lane(lane).models
    ]
    return {"object": "list", "data": data}


# ----- text -----------------------------------------------------------------------------------


def _llm_model(engine: Engine, name: str) -> str:
    if name not in engine.config.lane(Lane.LLM).models:
        known = ", ".join(engine.config.lane(Lane.LLM).models) or "none"
        raise APIError(
            404, "model_not_found", f"The model '{name}' does not exist; available: {known}", param="model"
        )
    return name


def _llm_request(
    engine: Engine,
    body: _SamplingBody,
    prompt: str | None,
    messages: tuple[tuple[str, str], ...] | None,
    max_tokens: int | None,
) -> m.LLMRequest:
    limits = engine.config.server
    chars = len(prompt or "") + sum(len(c) for _, c in messages or ())
    if chars > limits.max_prompt_chars:
        raise APIError(
            400,
            "context_length_exceeded",
            f"the prompt is {chars} characters; the limit is {limits.max_prompt_chars}",
        )
    max_tokens = max_tokens or 256
    if max_tokens > limits.max_new_tokens:
        raise APIError(
            400,
            "invalid_value",
            f"max_tokens {max_tokens} is over the limit of {limits.max_new_tokens}",
            param="max_tokens",
        )
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4:
        raise APIError(400, "invalid_value", "stop: at most 4 sequences", param="stop")
    return m.LLMRequest(
        prompt=prompt,
        messages=messages,
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=tuple(s for s in stops if s),
        seed=body.seed,
    )


def _usage(task: Task) -> dict[str, int]:
    r = task.result
    return {
        "prompt_tokens": r["prompt_tokens"],
        "completion_tokens": r["completion_tokens"],
        "total_tokens": r["prompt_tokens"] + r["completion_tokens"],
    }


def _finish_reason(task: Task) -> str:
    reason = str(task.result["finish_reason"])
    return reason if reason in ("stop", "length") else "stop"


@router.post(
    "/chat/completions",
    responses={200: {"content": {"application/json": {}, "text/event-stream": {}}}},
    summary="Chat completion (streams chat.completion.chunk events)",
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    engine = engine_of(request)
    model = _llm_model(engine, body.model)
    roles = {"developer": "system", "tool": "user"}
    messages = tuple((roles.get(x.role, x.role), x.text()) for x in body.messages)
    req = _llm_request(engine, body, None, messages, body.max_completion_tokens or body.max_tokens)
    handle = submit(engine, Lane.LLM, model, req, 0, None)
    created = int(time.time())
    cid = f"chatcmpl-{handle.task_id}"
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _chat_stream(engine, handle, cid, created, model, usage),
            media_type="text/event-stream",
            headers={"X-Task-Id": handle.task_id},
        )
    task = await wait_task(engine, handle)
    if task.state is not TaskState.SUCCEEDED:
        raise failure(task)
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": task.result["text"]},
                "logprobs": None,
                "finish_reason": _finish_reason(task),
            }
        ],
        "usage": _usage(task),
    }


def _data(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def _chat_stream(
    engine: Engine, handle: TaskHandle, cid: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _data(
            {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        )

    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for text in _texts(handle):
            yield chunk({"content": text})
        task = await handle.done
        finished = True
        if task.state is not TaskState.SUCCEEDED:
            err = failure(task)
            yield _data({"error": {"message": err.message, "type": "server_error", "code": err.code}})
        else:
            yield chunk({}, _finish_reason(task))
            if include_usage:
                yield _data({**base, "choices": [], "usage": _usage(task)})
        yield b"data: [DONE]\n\n"
    finally:
        if not finished:
            engine.cancel(handle.task_id)


async def _texts(handle: TaskHandle) -> AsyncIterator[str]:
    while (item := await handle.events.get()) is not None:
        if isinstance(item, m.TextDelta):
            yield item.text


@router.post(
    "/completions",
    responses={200: {"content": {"application/json": {}, "text/event-stream": {}}}},
    summary="Text completion (legacy); streams text_completion events",
)
async def completions(body: CompletionRequest, request: Request) -> Any:
    engine = engine_of(request)
    model = _llm_model(engine, body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise APIError(400, "invalid_value", "exactly one prompt is supported", param="prompt")
    req = _llm_request(engine, body, prompts[0], None, body.max_tokens or 16)
    handle = submit(engine, Lane.LLM, model, req, 0, None)
    created = int(time.time())
    cid = f"cmpl-{handle.task_id}"
    base = {"id": cid, "object": "text_completion", "created": created, "model": model}
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)

        async def stream() -> AsyncIterator[bytes]:
            finished = False
            try:
                async for text in _texts(handle):
                    yield _data(
                        {
                            **base,
                            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}],
                        }
                    )
                task = await handle.done
                finished = True
                if task.state is TaskState.SUCCEEDED:
                    yield _data(
                        {
                            **base,
                            "choices": [
                                {
                                    "index": 0,
                                    "text": "",
                                    "logprobs": None,
                                    "finish_reason": _finish_reason(task),
                                }
                            ],
                        }
                    )
                    if usage:
                        yield _data({**base, "choices": [], "usage": _usage(task)})
                else:
                    err = failure(task)
                    yield _data({"error": {"message": err.message, "type": "server_error", "code": err.code}})
                yield b"data: [DONE]\n\n"
            finally:
                if not finished:
                    engine.cancel(handle.task_id)

        return StreamingResponse(stream(), media_type="text/event-stream")
    task = await wait_task(engine, handle)
    if task.state is not TaskState.SUCCEEDED:
        raise failure(task)
    return {
        **base,
        "choices": [
            {"index": 0, "text": task.result["text"], "logprobs": None, "finish_reason": _finish_reason(task)}
        ],
        "usage": _usage(task),
    }


# ----- speech ---------------------------------------------------------------------------------


def wav_header(sample_rate: int, data_bytes: int = 0xFFFFFFFF - 36) -> bytes:
    """A 16-bit mono WAV header; the default sizes mark a stream of unknown length."""
    riff = min(0xFFFFFFFF, data_bytes + 36)
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


async def audio_chunks(handle: TaskHandle) -> AsyncIterator[bytes]:
    while (item := await handle.events.get()) is not None:
        if isinstance(item, m.AudioChunk):
            yield item.pcm


def tts_rate(engine: Engine, model: str) -> int:
    info = engine.model_infos(Lane.TTS).get(model)
    if info is None or not info.sample_rate:
        raise APIError(503, "lane_unavailable", "the TTS worker is still starting", {"Retry-After": "5"})
    return info.sample_rate


@router.post(
    "/audio/speech",
    responses={200: {"content": {"audio/wav": {}, "audio/pcm": {}}}},
    response_class=StreamingResponse,
    summary="Speech, streamed as it is synthesized (wav or pcm)",
)
async def speech(body: SpeechRequest, request: Request) -> Any:
    engine = engine_of(request)
    if body.response_format not in ("wav", "pcm"):
        raise APIError(
            400,
            "unsupported_format",
            f"response_format {body.response_format!r} is not supported; use 'wav' or 'pcm' (16-bit mono)",
            param="response_format",
        )
    limit = engine.config.server.max_tts_chars
    if len(body.input) > limit:
        raise APIError(
            400,
            "input_too_long",
            f"input is {len(body.input)} characters; the limit is {limit}",
            param="input",
        )
    voices = {**DEFAULT_VOICES, **engine.config.server.openai_voices}
    voice = voices.get(body.voice.lower(), body.voice)
    tts = engine.config.lane(Lane.TTS).models
    model = pick_tts_model(engine, body.model if body.model in tts else None, voice)
    rate = tts_rate(engine, model)
    handle = submit(
        engine, Lane.TTS, model, m.TTSRequest(text=body.input, voice=voice, speed=body.speed), 0, None
    )

    async def stream() -> AsyncIterator[bytes]:
        finished = False
        try:
            if body.response_format == "wav":
                yield wav_header(rate)
            async for pcm in audio_chunks(handle):
                yield pcm
            finished = True
        finally:
            if not finished:
                engine.cancel(handle.task_id)

    media = "audio/wav" if body.response_format == "wav" else "audio/pcm"
    return StreamingResponse(
        stream(), media_type=media, headers={"X-Task-Id": handle.task_id, "X-Sample-Rate": str(rate)}
    )


# ----- images ---------------------------------------------------------------------------------


@router.post("/images/generations", summary="Text to image; waits for the images")
async def images_generations(body: ImageGenerationRequest, request: Request) -> Any:
    engine = engine_of(request)
    if Lane.IMAGE not in engine.workers:
        raise APIError(503, "lane_unavailable", "the image lane is disabled in the configuration")
    try:
        width, height = (int(x) for x in body.size.lower().split("x"))
    except ValueError:
        raise APIError(
            400, "invalid_value", f"size {body.size!r} must look like '512x512'", param="size"
        ) from None
    limits = engine.config.server
    if not (64 <= width <= 2048 and 64 <= height <= 2048 and width % 8 == 0 and height % 8 == 0):
        raise APIError(
            400,
            "invalid_value",
            f"size {body.size!r}: each side 64 to 2048 and a multiple of 8",
            param="size",
        )
    if width * height > limits.max_image_pixels:
        raise APIError(
            400, "invalid_value", f"size {body.size!r} is over {limits.max_image_pixels} pixels", param="size"
        )
    cfg = engine.config.lane(Lane.IMAGE)
    model = body.model if body.model in cfg.models else resolve_model(engine, Lane.IMAGE, None)
    handles = []
    for i in range(body.n):
        seed = None if body.seed is None else body.seed + i
        req = m.ImageRequest(prompt=body.prompt, width=width, height=height, seed=seed)
        handles.append(submit(engine, Lane.IMAGE, model, req, 0, None))
    tasks = await asyncio.gather(*(wait_task(engine, h) for h in handles))
    data = []
    for task in tasks:
        if task.state is not TaskState.SUCCEEDED:
            raise failure(task)
        if body.response_format == "b64_json":
            png = Path(task.result["path"]).read_bytes()
            data.append({"b64_json": base64.b64encode(png).decode(), "revised_prompt": None})
        else:
            data.append({"url": f"{str(request.base_url).rstrip('/')}/api/image/result/{task.id}"})
    return {"created": int(time.time()), "data": data}
