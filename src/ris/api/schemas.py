"""Request and response bodies of the seed's REST API (the OpenAPI schema is built from these)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from ris.api.limits import (
    IMAGE_SIDE_MULTIPLE,
    MAX_IMAGE_PROMPT_CHARS,
    MAX_IMAGE_SIDE,
    MAX_MESSAGE_CHARS,
    MAX_MESSAGES,
    MAX_STOPS,
    MAX_TEMPERATURE,
    MIN_IMAGE_SIDE,
    SEED_MAX,
    Bool,
    Float,
    Int,
    RequestBody,
    image_side_ok,
)
from ris.runtime.views import TaskView
from ris.services.speech_encoding import SpeechFormat

# espeak-ng speaks 80 to 450 words a minute (175 at speed 1): past 0.46 and 2.57 its own limits
# hold; Piper takes the whole range.
SPEED_NOTE = "speech rate, 1 = the voice's own; espeak-ng: 0.46 to 2.57 (its limits), Piper: all"


# Said where priority is: a user's priority-10 picture ran after another user's -10 one, as
# clients take turns on a lane they share (the lane's client_share), which the docs said nowhere.
PRIORITY = (
    "higher runs earlier among the waiting tasks; where several clients (API keys, else addresses) "
    "share the lane, a client holding its share of the lane's slots (client_share) waits for the "
    "others' turn first, whatever its priority"
)


class _Body(RequestBody):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)


class LLMFields(_Body):
    """What the seed API's LLM routes share (/api/llm/generate, /api/chat/speak)."""

    prompt: str | None = Field(
        default=None,
        description="what to answer: the user's message, through the model's chat template "
        "(raw completion with `raw: true`); or give `messages`",
    )
    system: str | None = Field(
        default=None, max_length=MAX_MESSAGE_CHARS, description="a system message before `prompt`"
    )
    raw: Bool = Field(default=False, description="complete `prompt` as written, without the chat template")
    messages: list[ChatMessage] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MESSAGES,
        description="chat turns; the chat template applies",
    )
    model: str | None = Field(default=None, description="a configured LLM name; default if absent")
    temperature: Float = Field(default=0.7, ge=0.0, le=MAX_TEMPERATURE)
    top_p: Float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: Int = Field(
        default=256, ge=1, description="at most server.max_new_tokens and the model's context"
    )
    stop: str | list[str] | None = Field(default=None, description=f"up to {MAX_STOPS} stop strings")
    seed: Int | None = Field(default=None, ge=0, le=SEED_MAX)
    ignore_eos: Bool = Field(default=False, description="generate exactly max_tokens (benchmarks)")


class LLMGenerateRequest(LLMFields):
    json_schema: dict[str, Any] | None = Field(
        default=None,
        description="a JSON Schema the answer must match, enforced while decoding ({} or "
        '{"type": "object"}: any JSON object); not with stop or ignore_eos',
    )
    stream: Bool = Field(default=False, description="stream tokens as server-sent events")
    priority: Int = Field(default=0, ge=-10, le=10, description=PRIORITY)
    timeout_s: Float | None = Field(default=None, ge=1, le=86_400, description="deadline, seconds")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Timings(BaseModel):
    queue_ms: float | None = None
    first_output_ms: float | None = None
    total_ms: float | None = None


class LLMGenerateResponse(BaseModel):
    task_id: str
    model: str
    text: str
    finish_reason: str
    usage: Usage
    timings: Timings
    warnings: list[str] = Field(
        default_factory=list,
        description="what the answer may not be as asked (its language; an answer the model's context "
        "cut short of max_tokens)",
    )


class TTSSynthesizeRequest(_Body):
    text: str = Field(min_length=1, description="text to speak")
    voice: str | None = Field(
        default=None,
        description="e.g. en-US, zh-CN, or a model's voice; none: the model's own, but text mostly "
        "in a script other than Latin (Chinese, Russian, Arabic, Hindi, ...) gets a loaded voice of "
        "its language (else of another language written in that script), with a warning",
    )
    speed: Float = Field(default=1.0, ge=0.25, le=4.0, description=SPEED_NOTE)
    model: str | None = Field(default=None, description="a configured TTS model; else by voice")
    priority: Int = Field(default=0, ge=-10, le=10, description=PRIORITY)
    timeout_s: Float | None = Field(default=None, ge=1, le=86_400, description="deadline, seconds")
    format: SpeechFormat | None = Field(
        default=None,
        description="the audio's format: the bytes' when Accept asks for audio, and audio_url's; "
        "else the type Accept names, else wav",
    )


class TTSSynthesizeResponse(BaseModel):
    task_id: str
    model: str
    voice: str
    sample_rate: int
    duration_s: float
    audio_url: str = Field(
        description="GET it for the audio; with server.api_keys set it is signed for an hour and "
        "opens without the key (an <audio src>)"
    )
    timings: Timings
    warnings: list[str] = Field(
        default_factory=list, description="where the server served something other than asked"
    )


_SIDE = f"pixels, multiple of {IMAGE_SIDE_MULTIPLE}"


def _image_side(pixels: int) -> int:
    """The whole rule in one message: `"width": 1` was "a multiple of 8", then 8 was ">= 64"."""
    if not image_side_ok(pixels):
        raise ValueError(
            f"each side is {MIN_IMAGE_SIDE} to {MAX_IMAGE_SIDE} and a multiple of {IMAGE_SIDE_MULTIPLE} "
            f"(pixels; got {pixels})"
        )
    return pixels


# Checked by _image_side; the schema still says the bounds to a client that reads it.
ImageSide = Annotated[
    Int,
    AfterValidator(_image_side),
    Field(
        description=_SIDE,
        json_schema_extra={
            "minimum": MIN_IMAGE_SIDE,
            "maximum": MAX_IMAGE_SIDE,
            "multipleOf": IMAGE_SIDE_MULTIPLE,
        },
    ),
]


class ImageGenerateRequest(_Body):
    prompt: str = Field(min_length=1, max_length=MAX_IMAGE_PROMPT_CHARS)
    negative_prompt: str | None = Field(default=None, max_length=MAX_IMAGE_PROMPT_CHARS)
    width: ImageSide = 512
    height: ImageSide = 512
    use_turbo: Bool = Field(default=False, description="use the configured turbo model (few steps)")
    steps: Int | None = Field(default=None, ge=1, le=1000, description="default: the model's")
    guidance: Float | None = Field(default=None, ge=0.0, le=30.0, description="default: the model's")
    seed: Int | None = Field(default=None, ge=0, le=SEED_MAX)
    model: str | None = None
    priority: Int = Field(default=0, ge=-10, le=10, description=PRIORITY)
    timeout_s: Float | None = Field(default=None, ge=1, le=7 * 86_400, description="deadline, seconds")


class ImageAccepted(BaseModel):
    task_id: str
    status: str
    queue_position: int | None
    model: str
    progress_url: str
    result_url: str = Field(
        description="GET it for the PNG once done; with server.api_keys set it is signed for an hour "
        "and opens without the key (an <img src>); GET /api/tasks/{id} gives a fresh one"
    )
    warnings: list[str] = Field(
        default_factory=list, description="how the request was served other than asked (use_turbo)"
    )


class ImageProgress(BaseModel):
    task_id: str
    status: str
    step: int
    total_steps: int | None
    progress: float = Field(
        description="0 to 1, by time once it runs: its run so far against that plus eta_s (the "
        "decode after the last step moves it too); short of 1 until the image is done, and never "
        "lower than a value shown before"
    )
    queue_position: int | None
    eta_s: float | None = Field(
        description="seconds until it ends, estimated: once it runs, its steps left at its pace so "
        "far plus what the lane's images of its size took after their last step (the decode), "
        "counting down between steps; before that from the lane's learned time per 512 x 512 "
        "step times its own steps and size, and the work queued ahead of it"
    )
    waiting_for: str | None = Field(
        default=None,
        description='"model_load" while its worker loads a model for it, or holds it until a switch can '
        'load; "worker_start" while queued on a lane whose worker is starting or restarting (both '
        "counted in eta_s: a start as long as the lane's last, kept across server restarts); "
        '"lane_pending" while its cluster has placed none of the lane\'s workers '
        '(a Ray head or node lost: eta_s null); "disk_space" while queued with the data folder\'s disk '
        "under 64 MiB free (an eighth of a volume under 512 MiB): it starts once there is room for "
        'its picture (eta_s null); "lane_disabled" while kept from before a restart for a lane this '
        "server's config turns off: it runs at a start with the lane on",
    )
    waiting_for_model: str | None = Field(
        default=None, description="the model whose load it waits for (with waiting_for)"
    )
    error: dict[str, str] | None


class TaskSubmit(_Body):
    lane: str = Field(description="a lane whose kind takes generic submissions (registered kinds)")
    model: str | None = Field(default=None, description="a configured model of the lane; default if absent")
    request: dict[str, Any] = Field(default_factory=dict, description="the lane's request fields")
    priority: Int = Field(default=0, ge=-10, le=10, description=PRIORITY)
    timeout_s: Float | None = Field(default=None, ge=1, le=7 * 86_400, description="deadline, seconds")


def _task_info() -> type[BaseModel]:
    """TaskInfo, a task as JSON: the engine's TaskView with `task_id`, an `error` object and
    the result's public JSON, derived from TaskView so the two field lists cannot drift."""
    hints = typing.get_type_hints(TaskView)
    fields: dict[str, Any] = {"task_id": (str, ...)}
    for f in dataclasses.fields(TaskView):
        if f.name not in TASK_VIEW_SPECIAL:
            fields[f.name] = (hints[f.name], ...)
    fields["error"] = (ErrorDetail | None, None)
    fields["result"] = (dict[str, Any] | None, None)
    return create_model("TaskInfo", **fields)


# TaskView fields TaskInfo shows differently.
TASK_VIEW_SPECIAL = frozenset({"id", "error_code", "error_message", "result"})


class SpeakRequest(LLMFields):
    voice: str | None = Field(
        default=None,
        description="e.g. en-US, zh-CN; absent: a model with a voice for the prompt's language, "
        "each sentence read by the voice of its script where that model has one",
    )
    speed: Float = Field(default=1.0, ge=0.25, le=4.0, description=SPEED_NOTE)
    tts_model: str | None = None
    audio_format: Literal["wav", "pcm"] = "wav"
    stream_format: Literal["audio", "events"] = "audio"


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


TaskInfo = _task_info()

# The error answers a work route documents (each in the ErrorBody shape).
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody} for s in (404, 409, 413, 422, 429, 500, 503, 504)
}
