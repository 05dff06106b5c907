"""What /v1 does with a field it does not implement: the one list of them.

OpenAI's clients send only what the caller sets, so a field RIS does not act on is a choice
the caller made: a typo (`max_token`), a feature (`reasoning_effort`, an `image_url` part) or
bookkeeping (`user`). Each endpoint's fields fall in exactly three groups:

- declared in `openai_schemas` and honoured;
- IGNORED here: they change nothing about the answer (bookkeeping, routing hints);
- REFUSED here when set to anything but their neutral value, each with its test of "set".

Anything else is a 400 `unknown_parameter` naming the field, as OpenAI answers
"Unrecognized request argument supplied". docs/OPENAI_COMPATIBILITY.md lists the same groups.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ris.api.errors import APIError
from ris.api.openai_schemas import ChatCompletionRequest, OAMessage
from ris.lanes.names import a_lane

if TYPE_CHECKING:
    from ris.runtime.engine import Engine

DOCS = "see docs/OPENAI_COMPATIBILITY.md"


def _given(value: Any) -> bool:
    return value not in (None, False, 0, 0.0, "", [], {})


class _Not:
    """Refused unless absent or one of `neutral` (the values that change nothing here)."""

    def __init__(self, *neutral: Any) -> None:
        self.neutral = neutral

    def __call__(self, value: Any) -> bool:
        return value not in (None, *self.neutral)


_not = _Not


@dataclass(frozen=True)
class FieldRules:
    """An object's undeclared fields: which change nothing, which are refused when set."""

    ignored: frozenset[str] = frozenset()
    refused: Mapping[str, Callable[[Any], bool]] = field(default_factory=dict)


# Bookkeeping on OpenAI's text APIs: ids and tags for the caller's own records, caching and
# tier hints. None of them changes a token of the answer.
_BOOKKEEPING = frozenset(
    {
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)

# Fields of OpenAI's text APIs that would change the answer and are not implemented.
_TEXT_REFUSED: dict[str, Callable[[Any], bool]] = {
    "logprobs": _given,
    "top_logprobs": _given,
    "logit_bias": _given,
    "reasoning_effort": _given,  # no configured model reasons in a separate channel
    "verbosity": _not("medium"),  # OpenAI's default: the answer as the model writes it
}

CHAT = FieldRules(
    ignored=_BOOKKEEPING,
    refused={
        **_TEXT_REFUSED,
        "functions": _given,  # OpenAI's deprecated form of tools
        "function_call": _not("none", "auto"),
        "audio": _given,
        "modalities": _not(["text"]),
        "prediction": _given,
        # {} turns OpenAI's web search on, with its default settings: no neutral value.
        "web_search_options": _not(),
    },
)
COMPLETIONS = FieldRules(
    ignored=frozenset({"user"}),
    refused={**_TEXT_REFUSED, "best_of": _not(1), "echo": _given, "suffix": _given},
)
# A message as OpenAI's clients send it back: an assistant turn from a response carries these.
MESSAGE = FieldRules(
    # `name`: the participant's; our chat templates have no slot for it. `parsed`: what the
    # openai SDK's parse()/stream() helpers read from the content, on a message sent back.
    ignored=frozenset({"name", "parsed"}),
    refused={"refusal": _given, "annotations": _given, "audio": _given, "function_call": _given},
)
_CALL = FieldRules(ignored=frozenset({"index"}))
SPEECH = FieldRules(refused={"instructions": _given, "stream_format": _not("audio")})
IMAGES = FieldRules(
    ignored=frozenset({"user", "moderation"}),
    refused={
        "quality": _not("auto", "standard"),
        "style": _given,
        "background": _not("auto"),
        "output_format": _not("png"),
        "output_compression": _not(100),
        "partial_images": _given,
        "stream": _given,
    },
)


def refuse_unknown(body: BaseModel, rules: FieldRules, where: str = "") -> None:
    """400 naming the first undeclared field of `body` that is neither ignored nor neutral."""
    for name, value in (body.model_extra or {}).items():
        path = f"{where}{name}"
        if name in rules.ignored:
            continue
        wanted = rules.refused.get(name)
        if wanted is None:
            raise APIError(
                400,
                "unknown_parameter",
                f"Unrecognized request argument supplied: {path} ({DOCS} for the fields each route takes)",
                param=path,
            )
        if wanted(value):
            allowed = (
                f"leave it out, or send {' or '.join(json.dumps(v) for v in wanted.neutral)}"
                if isinstance(wanted, _Not)
                else "leave it out"
            )
            raise APIError(
                400,
                "unsupported_parameter",
                f"{path} {_shown(value)} is not supported by this server ({allowed}); {DOCS}",
                param=path,
            )


def _shown(value: Any) -> str:
    """A refused value in a message, cut short (it is the client's own, of any size)."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def refuse_unreadable_messages(body: ChatCompletionRequest) -> None:
    """Each message's own fields, and content parts the model cannot read: a message whose
    only part is an image would otherwise be answered as an empty turn."""
    for i, message in enumerate(body.messages):
        refuse_unknown(message, MESSAGE, f"messages[{i}].")
        for j, call in enumerate(message.tool_calls or []):
            # `index`: a streamed call's place, kept by the SDK's stream helper on the message.
            refuse_unknown(call, _CALL, f"messages[{i}].tool_calls[{j}].")
        _refuse_parts(message, i, body.model)


def _refuse_parts(message: OAMessage, i: int, model: str) -> None:
    if not isinstance(message.content, list):
        return
    for j, part in enumerate(message.content):
        if part.type != "text":
            raise APIError(
                400,
                "unsupported_content",
                f"messages[{i}].content[{j}] is a {part.type!r} part; model {model} reads text only "
                "(content as a string, or parts of type 'text')",
                param=f"messages[{i}].content[{j}].type",
            )
        if part.text is None:
            raise APIError(
                400,
                "invalid_value",
                f"messages[{i}].content[{j}] is a 'text' part without text",
                param=f"messages[{i}].content[{j}].text",
            )
        refuse_unknown(part, FieldRules(), f"messages[{i}].content[{j}].")


def refuse_other_lane(engine: Engine, name: str, lane: str, endpoint: str) -> None:
    """400 for a model this server has, on another lane: a chat UI's picker lists every model
    (GET /v1/models), and "does not exist" would be wrong about a speech model picked there."""
    for other, cfg in engine.config.lanes.items():
        if other != lane and cfg.enabled and name in cfg.models:
            mine = engine.config.lane(lane).models
            raise APIError(
                400,
                "model_wrong_lane",
                f"{name} is {a_lane(other)} model; {endpoint} takes {lane} models: "
                f"{', '.join(mine) or 'none'}",
                param="model",
            )
