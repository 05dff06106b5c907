"""Request bodies of the OpenAI-compatible API. Clients send fields we do not use (user,
presence_penalty, ...): they are accepted and ignored, as OpenAI's own SDKs expect. The limits
are the seed API's (ris.api.limits)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from ris.api.limits import (
    MAX_IMAGE_PROMPT_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_MESSAGES,
    MAX_TEMPERATURE,
    SEED_MAX,
    RequestBody,
)


class _OpenAIBody(RequestBody):
    model_config = ConfigDict(extra="allow")


class ContentPart(RequestBody):
    type: str
    text: str | None = Field(default=None, max_length=MAX_MESSAGE_CHARS)


class OAMessage(_OpenAIBody):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)] | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(RequestBody):
    include_usage: bool = False


class SamplingBody(_OpenAIBody):
    model: str
    temperature: float | None = Field(default=None, ge=0.0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    n: int = Field(default=1, ge=1, le=1, description="only n=1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    # An extension llama-server and vLLM share: generate exactly max_tokens (benchmarks, tests).
    ignore_eos: bool = False


class ChatCompletionRequest(SamplingBody):
    messages: list[OAMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(SamplingBody):
    prompt: str | list[str]


class SpeechRequest(_OpenAIBody):
    model: str
    input: str = Field(min_length=1)
    voice: str
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    response_format: Literal["wav", "pcm", "mp3", "opus", "aac", "flac"] = "mp3"


class ImageGenerationRequest(_OpenAIBody):
    prompt: str = Field(min_length=1, max_length=MAX_IMAGE_PROMPT_CHARS)
    model: str | None = None
    n: int = Field(default=1, ge=1, le=4)
    size: str = "512x512"
    response_format: Literal["url", "b64_json"] = "url"
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
