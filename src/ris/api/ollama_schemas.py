"""Request bodies of the Ollama-compatible API (routes/ollama.py; docs/OLLAMA_COMPATIBILITY.md).

Ollama's clients send more than RIS uses: fields that change nothing here (`shift`, ...) are
accepted and ignored, as Ollama itself ignores what a model does not support; `think` and
`logprobs`, asked for, are refused, as Ollama refuses thinking of a model that does not think.
The limits are the seed API's (ris.api.limits).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ris.api.limits import (
    INT64_MAX,
    INT64_MIN,
    MAX_MESSAGE_CHARS,
    MAX_MESSAGES,
    MAX_TEMPERATURE,
    MAX_TOOL_DESCRIPTION_CHARS,
    MAX_TOOLS,
    OLLAMA_TOOL_NAME_PATTERN,
    RequestBody,
    without_nulls,
)


class _OllamaBody(RequestBody):
    # Ollama's clients add fields as Ollama grows: unknown ones are ignored, as Ollama ignores
    # them (`think` and `logprobs` are known: refused when asked for, _GenerationBody).
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        """A null field is an absent one, as Go reads it into Ollama's structs (its zero value,
        or the default a nil pointer means: `"stream": null` streams): JavaScript clients send
        `"content": null` on an assistant turn that carries tool calls."""
        return without_nulls(data)


class OllamaOptions(_OllamaBody):
    """Ollama's `options`. Those listed here shape the answer (the penalties on a backend that
    applies them); Ollama's others (top_k, min_p, num_ctx, mirostat, ...) are accepted and
    ignored, as Ollama ignores an option its runner does not know: `POST /api/show` lists what
    applies."""

    model_config = ConfigDict(extra="allow")

    temperature: float | None = Field(default=None, ge=0.0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)  # 0: the likeliest token alone, as on /v1
    # Any 64-bit integer, as Ollama takes it (ChatOllama(seed=2**40) was a 400, and the same
    # seed was taken on /v1): wrapped to the backends' 32 bits; below 0, a random seed.
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX, description="below 0: a random seed")
    num_predict: int | None = Field(
        default=None,
        ge=-2,
        description="tokens to generate at most; 0, -1 or -2 (or absent): up to the context",
    )
    stop: list[str] | None = None
    # Applied by llama.cpp models (by others named in X-Ignored-Options); unset, none applies
    # (Ollama's own default repeat_penalty is 1.1: send it to have it).
    repeat_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    frequency_penalty: float | None = Field(default=None, ge=-10.0, le=10.0)
    presence_penalty: float | None = Field(default=None, ge=-10.0, le=10.0)
    repeat_last_n: int | None = Field(default=None, ge=-1, le=1 << 20, description="-1: the whole context")

    def penalty_names(self) -> list[str]:
        """The penalties this asks for, by name (those not neutral)."""
        neutral = {"repeat_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}
        return [n for n, v in neutral.items() if getattr(self, n) not in (None, v)]

    def penalty_options(self) -> list[str]:
        """Every penalty option given, repeat_last_n too: what a request that applies no
        penalty ignores."""
        return sorted([*self.penalty_names(), *(["repeat_last_n"] if self.repeat_last_n is not None else [])])


# Ollama's sampling defaults, for a request that sets none (and /api/show's `parameters`).
OLLAMA_TEMPERATURE = 0.8
OLLAMA_TOP_P = 0.9


class OllamaCalledFunction(RequestBody):
    name: str = Field(pattern=OLLAMA_TOOL_NAME_PATTERN)
    arguments: dict[str, Any] = Field(default_factory=dict)


class OllamaMessageToolCall(_OllamaBody):
    function: OllamaCalledFunction


class OllamaChatMessage(_OllamaBody):
    role: Literal["system", "user", "assistant", "tool"]

    @field_validator("role", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        # Ollama lowercases roles; "developer" is OpenAI's newer name for system, which
        # clients written for both send (it is so on /v1 too).
        role = value.lower()
        return "system" if role == "developer" else role

    content: Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)] = ""
    images: list[str] | None = Field(default=None, description="refused: no model here reads images")
    tool_calls: list[OllamaMessageToolCall] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_name: str | None = Field(default=None, max_length=128, description="on role tool: the function")


class OllamaFunctionDef(RequestBody):
    name: str = Field(pattern=OLLAMA_TOOL_NAME_PATTERN)
    description: str = Field(default="", max_length=MAX_TOOL_DESCRIPTION_CHARS)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class OllamaToolDef(RequestBody):
    type: Literal["function"] = "function"
    function: OllamaFunctionDef


# `format`: "json" (any JSON value, as Ollama's "json"), a JSON schema, or ""/absent (text).
Format = Literal["", "json"] | dict[str, Any] | None
# Ollama's keep_alive: a duration ("5m", "1h", "-1") or seconds.
KeepAlive = str | float | None


def _no_bool(value: Any) -> Any:
    # JSON's true is no duration: Ollama refuses it ("Unsupported type: 'bool'"), where
    # pydantic would read it as 1 second.
    if isinstance(value, bool):
        raise ValueError("keep_alive takes seconds (300, -1) or a duration ('5m'), not true or false")
    return value


class _GenerationBody(_OllamaBody):
    model: str = Field(min_length=1)
    stream: bool = Field(default=True, description="NDJSON lines as the answer grows (Ollama's default)")
    format: Format = None
    options: OllamaOptions | None = None
    keep_alive: KeepAlive = Field(
        default=None,
        description="how long the model stays loaded once idle after this request: seconds or a "
        "duration ('5m', '1h'); negative: until evicted; 0: unloaded once idle; absent: the "
        "lane's keep_alive_s",
    )
    truncate: bool = Field(
        default=True,
        description="a chat over the model's context (or the server's max_prompt_chars) leaves "
        "out its oldest turns, never a system turn nor the last, until it fits with room for "
        "the answer (num_predict, at most a quarter of the context) (Ollama's default); false: "
        "refused with 400 instead",
    )
    # Refused when asked for, as Ollama refuses thinking of a model that does not think (clients
    # catch that and ask again without it); dropped in silence, a client waited for thoughts or
    # probabilities that never came. false or absent passes.
    think: bool | Literal["low", "medium", "high"] | None = Field(
        default=None, description="refused when true or a level: no model here thinks"
    )
    logprobs: bool | None = Field(
        default=None, description="refused when true: no backend gives token probabilities"
    )
    top_logprobs: int | None = Field(default=None, ge=0, description="refused above 0, as logprobs")
    _keep_alive_no_bool = field_validator("keep_alive", mode="before")(_no_bool)


class OllamaChatRequest(_GenerationBody):
    """POST /api/chat."""

    messages: list[OllamaChatMessage] = Field(default_factory=list, max_length=MAX_MESSAGES)
    tools: list[OllamaToolDef] | None = Field(default=None, max_length=MAX_TOOLS)


class OllamaGenerateRequest(_GenerationBody):
    """POST /api/generate."""

    prompt: Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)] = ""
    suffix: str | None = Field(default=None, description="refused when set: no fill-in-the-middle")
    system: Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)] | None = None
    raw: bool = Field(default=False, description="true: the prompt as it is, no chat template")
    images: list[str] | None = Field(default=None, description="refused: no model here reads images")
    template: str | None = Field(default=None, description="refused when set: the model's own applies")
    context: list[int] | None = Field(default=None, description="refused when set: send the text again")


class OllamaModelRequest(_OllamaBody):
    """POST /api/show."""

    model: str = Field(default="", description="`name` is Ollama's older spelling")
    name: str = ""
    verbose: bool = False


class OllamaPullRequest(_OllamaBody):
    """POST /api/pull: `ris pull` (a model of the catalogue, from the Hugging Face hub)."""

    model: str = Field(default="", description="a catalogue name, e.g. qwen2.5; `name` is the older spelling")
    name: str = ""
    stream: bool = True
    insecure: bool = False  # Ollama's registry option; the hub is reached as huggingface_hub does


class OllamaError(BaseModel):
    """Ollama's error body: the message alone (its clients read it and the status)."""

    error: str


# The error answers of every Ollama route, in Ollama's shape (the app's default is RIS's).
OLLAMA_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OllamaError} for code in (400, 401, 403, 404, 413, 422, 429, 500, 502, 503, 504)
}
