"""The fixed limits on request fields, one per field, for both APIs.

The seed API (/api) and the OpenAI-compatible API (/v1) build their schemas from these and
`llm_request` checks the rest, so the two cannot drift apart; only the phrasing of a refusal
differs (422 `invalid_request` on /api, OpenAI's 400 on /v1; see errors.py). Limits a
deployment tunes (prompt and speech characters, new tokens, image pixels and steps, body
bytes) live in config (`ServerConfig`); a model's context window is reported by its worker.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

# A stop string is looked for after every token: a few short ones keep that cheap.
MAX_STOPS = 4
MAX_STOP_CHARS = 64
# Ollama's API bounds none: its clients send longer lists (an editor's completion stops, an
# agent's "Observation:" markers). Scanned at every token all the same: bounded, generously.
OLLAMA_MAX_STOPS = 32
OLLAMA_MAX_STOP_CHARS = 256
# Chat turns in one request. Their characters are bounded by server.max_prompt_chars already;
# this bounds the per-turn cost (an object, a pass of the chat template) that even empty
# turns have. A thousand turns is far more than any chat history that fits a context window.
MAX_MESSAGES = 1_000
MAX_MESSAGE_CHARS = 200_000
# Seeds are unsigned 32-bit for every backend (llama.cpp, torch generators); a request that
# derives several seeds from one (n images) wraps around within the range.
SEED_MAX = 2**32 - 1
MAX_TEMPERATURE = 2.0
# Structured output and tools: a JSON Schema becomes a grammar in the worker; its size bounds
# that work. OpenAI allows 128 tools and names of 64 characters from this set.
MAX_SCHEMA_CHARS = 32_000
# `enum` values in one schema, all its enums together. Each value is a branch the grammar keeps
# open and checks at every token of a string: measured here, 2,000 values cost 60 ms a token
# and a second per resample, 256 values under 2 ms and 0.1 s.
MAX_ENUM_VALUES = 500
MAX_TOOLS = 128
MAX_TOOL_DESCRIPTION_CHARS = 4_000
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule
# Ollama takes any name: MCP bridges name tools `<server>.<tool>` or `<server>:<tool>`. No `/`
# (a tool's schema is referenced by its name in a JSON pointer) and no spaces.
OLLAMA_TOOL_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
MAX_IMAGE_PROMPT_CHARS = 4_000
# An image's width and height, in pixels: diffusion models work in blocks of 8 pixels. The
# pixel count (width x height) is bounded by config (server.max_image_pixels).
MIN_IMAGE_SIDE = 64
MAX_IMAGE_SIDE = 2048
IMAGE_SIDE_MULTIPLE = 8


# The smallest top_p passed on: OpenAI takes 0, the backends a nucleus over 0 (transformers
# refuses 0); this small a nucleus holds the likeliest token alone, as 0 means.
MIN_TOP_P = 1e-6
# OpenAI's seed is any 64-bit integer.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def without_nulls(data: Any) -> Any:
    """A body's fields less those that are null, for a `mode="before"` validator of an API whose
    clients send null for "not set" (OpenAI's, Ollama's): the defaults then apply."""
    if isinstance(data, dict) and None in data.values():
        return {k: v for k, v in data.items() if v is not None}
    return data


def wrap_seed(seed: int) -> int:
    return seed % (SEED_MAX + 1)


def image_side_ok(pixels: int) -> bool:
    """A width or height the image lane takes (the body schemas' `Field`s say the same)."""
    return MIN_IMAGE_SIDE <= pixels <= MAX_IMAGE_SIDE and pixels % IMAGE_SIDE_MULTIPLE == 0


# The value types both APIs hold to: a boolean is true or false, a number is no string or
# boolean (pydantic would read "yes" as true and "5" or true as 5: `"width": true` was refused
# as "a multiple of 8"), an integer no decimal; a float may be written as an integer.
Bool = Annotated[bool, Field(strict=True)]
Int = Annotated[int, Field(strict=True)]
Float = Annotated[float, Field(strict=True)]


class RequestBody(BaseModel):
    """The base of every request body on both APIs: text must be text.

    JSON can escape half of a UTF-16 surrogate pair ("\\ud800"); Python keeps it as a lone
    surrogate, which no model, tokenizer or UTF-8 encoder accepts: left alone it became a 500
    deep in a worker. Every string of every field, nested ones included, is checked here, once,
    before pydantic's own checks (whose words for it, "unable to parse raw data", say less).

    NaN and Infinity, which pydantic's JSON parser reads (JSON has neither), are not numbers
    for any field: `"guidance": NaN` was refused as "less than or equal to 30".
    """

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _text_is_unicode(cls, value: Any, info: ValidationInfo) -> Any:
        refuse_surrogates(value, info.field_name or "")
        return value


def refuse_surrogates(value: Any, path: str) -> None:
    if isinstance(value, str):
        if value.isascii():  # the usual case, and a fast one
            return
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise PydanticCustomError(
                "invalid_unicode",
                "text must be valid Unicode: {path} has a lone surrogate ({char}) at character "
                "{index}; JSON escapes \\ud800-\\udfff must come in high-low pairs",
                {"path": path, "char": f"\\u{ord(value[e.start]):04x}", "index": e.start},
            ) from None
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            refuse_surrogates(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_surrogates(key, f"{path} (a key)")
            refuse_surrogates(item, f"{path}.{key}")
