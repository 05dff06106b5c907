"""Request bodies of the OpenAI-compatible API. A top-level body or a message keeps the fields
it does not declare (`model_extra`) for `openai_strict`, the one list of what is ignored and
what is refused; nested objects (tools, formats, options) refuse undeclared fields outright.
The limits are the seed API's (ris.api.limits)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from ris.api.limits import (
    INT64_MAX,
    INT64_MIN,
    MAX_IMAGE_PROMPT_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_MESSAGES,
    MAX_TEMPERATURE,
    MAX_TOOL_DESCRIPTION_CHARS,
    MAX_TOOLS,
    SEED_MAX,
    TOOL_NAME_PATTERN,
    Bool,
    Float,
    Int,
    RequestBody,
    refuse_surrogates,
    without_nulls,
)
from ris.api.schemas import SPEED_NOTE
from ris.services.speech_encoding import SpeechFormat


class _OpenAIBody(RequestBody):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        """A null field is an absent one: OpenAI's API marks its optional fields nullable, and
        clients forward unset settings as null (`"n": null`, `"stream": null`)."""
        return without_nulls(data)

    @model_validator(mode="after")
    def _extra_text_is_unicode(self) -> Self:
        """Fields accepted and ignored (`user`, ...) are text like the rest: the field
        validator of RequestBody sees only declared fields."""
        for name, value in (self.model_extra or {}).items():
            refuse_surrogates(value, name)
        return self


class _Part(RequestBody):
    """A nested object: a field it does not declare is a 400 naming it (no silent drops)."""

    model_config = ConfigDict(extra="forbid")


class ContentPart(_OpenAIBody):
    """A part of a message; parts other than text are refused by openai_strict, naming them."""

    type: str
    text: str | None = Field(default=None, max_length=MAX_MESSAGE_CHARS)


class CalledFunction(_Part):
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    arguments: str = Field(default="{}", max_length=MAX_MESSAGE_CHARS, description="a JSON object")
    # The openai SDK's parse()/stream() helpers add their own reading of `arguments` to a call
    # they return; sent back on the next turn, it is ignored (`arguments` says the same).
    parsed_arguments: Any = Field(default=None, description="ignored: the SDK's parse of arguments")


class MessageToolCall(_OpenAIBody):
    """A call an assistant turn made (sent back on the next turn)."""

    id: str = Field(max_length=128)
    type: Literal["function"] = "function"
    function: CalledFunction


class OAMessage(_OpenAIBody):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)] | list[ContentPart] | None = None
    tool_calls: list[MessageToolCall] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(default=None, max_length=128, description="on role tool")

    @model_validator(mode="after")
    def _has_content(self) -> Self:
        """Content is required, as on OpenAI, but for an assistant turn that made calls: a
        turn without it would be answered as an empty one, a silent drop."""
        if isinstance(self.content, list) and not self.content:
            raise ValueError("content is an empty list: send a string, or at least one part")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            made = " (or tool_calls)" if self.role == "assistant" else ""
            raise ValueError(
                f"a message of role {self.role!r} needs content{made}: a string or a list of parts"
            )
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(_Part):
    include_usage: Bool = False
    # OpenAI pads streamed chunks against side channels unless this is false; ours carry no
    # padding either way.
    include_obfuscation: Bool = True


class JSONSchemaFormat(_Part):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    name: str = Field(default="response", pattern=TOOL_NAME_PATTERN)
    description: str | None = Field(default=None, max_length=MAX_TOOL_DESCRIPTION_CHARS)
    schema_: dict[str, Any] = Field(
        default_factory=dict, alias="schema", description="the JSON Schema the answer matches"
    )
    # Enforced by a grammar either way: true and false both get output that validates.
    strict: Bool | None = None


class ResponseFormat(_Part):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class FunctionDef(_Part):
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str = Field(default="", max_length=MAX_TOOL_DESCRIPTION_CHARS)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: Bool | None = None  # arguments are held to `parameters` by a grammar when required


class ToolDef(_Part):
    type: Literal["function"]
    function: FunctionDef


class ChosenFunction(_Part):
    name: str


class NamedToolChoice(_Part):
    type: Literal["function"]
    function: ChosenFunction


class SamplingBody(_OpenAIBody):
    model: str
    temperature: Float | None = Field(default=None, ge=0.0, le=MAX_TEMPERATURE)
    top_p: Float | None = Field(default=None, ge=0.0, le=1.0)
    max_tokens: Int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: Int | None = Field(
        default=None,
        ge=INT64_MIN,
        le=INT64_MAX,
        description=f"any 64-bit integer, taken modulo {SEED_MAX + 1}",
    )
    n: Int = Field(default=1, ge=1, description="only n=1 is supported")
    stream: Bool = False
    stream_options: StreamOptions | None = None
    # OpenAI's range; applied over the last 64 tokens of prompt and answer, as llama-server does.
    frequency_penalty: Float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: Float | None = Field(default=None, ge=-2.0, le=2.0)
    # An extension llama-server and vLLM share: generate exactly max_tokens (benchmarks, tests).
    ignore_eos: Bool = False
    response_format: ResponseFormat | None = None


class ChatCompletionRequest(SamplingBody):
    messages: list[OAMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: Int | None = Field(default=None, ge=1)
    tools: list[ToolDef] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: Bool | None = None


class CompletionRequest(SamplingBody):
    prompt: str | list[str]


class SpeechRequest(_OpenAIBody):
    model: str
    input: str = Field(min_length=1)
    voice: str
    speed: Float = Field(default=1.0, ge=0.25, le=4.0, description=SPEED_NOTE)
    response_format: SpeechFormat = Field(
        default="mp3", description="the audio's format; OpenAI's default, mp3, when absent"
    )


class ImageGenerationRequest(_OpenAIBody):
    prompt: str = Field(min_length=1, max_length=MAX_IMAGE_PROMPT_CHARS)
    model: str | None = None
    n: Int = Field(default=1, ge=1, le=4)
    # "auto" (gpt-image-1's default): the default size.
    size: str = "512x512"
    # Absent: OpenAI's default for the model named, base64 for gpt-image-1 (which has no url), else url.
    response_format: Literal["url", "b64_json"] | None = None
    # As on the chat routes (the API reference says so of every /v1 seed): -1 was a 400 here.
    seed: Int | None = Field(
        default=None,
        ge=INT64_MIN,
        le=INT64_MAX,
        description=f"any 64-bit integer, taken modulo {SEED_MAX + 1} (the n images: seed, seed + 1, ...)",
    )
