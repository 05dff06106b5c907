"""One place that turns an API's text-generation fields into an LLMRequest, with the limits.

The seed API, the speaking pipeline and the OpenAI routes all call `llm_request`; only the way
a refusal is phrased differs (the seed API's status codes, or OpenAI's 400 with `param`). The
fixed per-field limits are in ris.api.limits, the tunable ones in config.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ris.api.errors import APIError
from ris.api.limits import MAX_ENUM_VALUES, MAX_SCHEMA_CHARS, MAX_STOP_CHARS, MAX_STOPS
from ris.api.schemas import LLMFields
from ris.config import ServerConfig
from ris.lanes.json_schemas import impossible_bounds, long_repetitions, pattern_problems
from ris.lanes.llm import (
    Constraint,
    LLMRequest,
    Message,
    Tool,
    Turn,
    enum_values,
    fewest_left_out,
    max_tokens_over_context,
    without_oldest,
)


@dataclass(frozen=True)
class Penalties:
    """Repetition penalties as a request asks them (LLMRequest's fields; neutral by default)."""

    repeat: float = 1.0
    frequency: float = 0.0
    presence: float = 0.0
    last_n: int = 64


NO_PENALTIES = Penalties()


@dataclass(frozen=True)
class Dialect:
    too_long: tuple[int, str]  # status and code for a prompt over the limit
    invalid: tuple[int, str]  # status and code for any other field out of range
    # Stop strings: how many, how long (each is scanned at every token: a few dozen short
    # ones cost nothing). OpenAI's API takes 4; Ollama's any number, which its clients use.
    max_stops: int = MAX_STOPS
    max_stop_chars: int = MAX_STOP_CHARS


# The same limits on both APIs (a stop string is scanned at every token); only the phrasing
# of a refusal differs.
SEED = Dialect(too_long=(413, "prompt_too_long"), invalid=(422, "invalid_request"))
OPENAI = Dialect(too_long=(400, "context_length_exceeded"), invalid=(400, "invalid_value"))


def llm_request(
    limits: ServerConfig,
    dialect: Dialect,
    *,
    prompt: str | None,
    messages: Sequence[tuple[str, str] | Message] | None,
    max_tokens: int,
    temperature: float,
    top_p: float,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
    ignore_eos: bool = False,
    max_tokens_at_most: bool = False,
    context_tokens: int | None = None,
    system: str | None = None,
    prompt_is_message: bool = False,
    constraint: Constraint | None = None,
    tools: Sequence[Tool] = (),
    constraint_param: str = "response_format",
    max_tokens_param: str = "max_tokens",
    truncate: bool = False,
    penalties: Penalties = NO_PENALTIES,
) -> LLMRequest:
    """`context_tokens`: the model's context window, where its worker has reported it (see
    llm_support.llm_context); a model not loaded yet is checked by its worker instead.
    `max_tokens_param`: the field the client sent the bound in, for its refusals."""

    def invalid(message: str, param: str) -> APIError:
        return APIError(dialect.invalid[0], dialect.invalid[1], message, param=param)

    if (prompt is None) == (messages is None):
        raise invalid("give exactly one of `prompt` or `messages`", "messages")
    if system is not None and messages is not None:
        raise invalid("`system` goes with `prompt`; with `messages`, make it the first message", "system")
    if system is not None and not prompt_is_message:
        raise invalid(
            "`system` needs the chat template, which `raw: true` skips: write it into the prompt", "system"
        )
    chars = len(prompt or "") + len(system or "") + sum(_turn_chars(m) for m in messages or ())
    if chars > limits.max_prompt_chars and truncate and messages:
        # The oldest turns left out, as the worker does for its context (LLMRequest.truncate).
        messages, chars = _within_chars(tuple(messages), limits.max_prompt_chars)
    if chars > limits.max_prompt_chars and truncate:
        # Still over (one long document): every turn that may go goes (as the worker's
        # fit_context does), then the start of the prompt or last turn, as the worker cuts
        # tokens past its context (it keeps the end).
        if messages:
            messages = without_oldest(tuple(messages), len(messages))
            chars = len(system or "") + sum(_turn_chars(m) for m in messages)
        prompt, messages, chars = _without_head(prompt, messages, chars - limits.max_prompt_chars)
        chars += len(system or "")
    if chars > limits.max_prompt_chars:
        status, code = dialect.too_long
        raise APIError(
            status,
            code,
            f"the prompt is {chars} characters; the limit is {limits.max_prompt_chars} "
            "(server.max_prompt_chars)",
        )
    if max_tokens > limits.max_new_tokens:
        over = f"{max_tokens_param} {max_tokens} is over the limit of {limits.max_new_tokens}"
        raise invalid(over, max_tokens_param)
    if context_tokens is not None and max_tokens > context_tokens:
        over = max_tokens_over_context(max_tokens, context_tokens, max_tokens_param)
        raise invalid(over, max_tokens_param)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    most, longest = dialect.max_stops, dialect.max_stop_chars
    if len(stops) > most or any(not s or len(s) > longest for s in stops):
        raise invalid(f"stop: at most {most} strings of 1 to {longest} characters", "stop")
    if constraint is not None:
        _check_constraint(constraint, stops, ignore_eos, invalid, constraint_param)
    return LLMRequest(
        prompt=prompt,
        messages=None if messages is None else tuple(messages),
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=tuple(stops),
        seed=seed,
        ignore_eos=ignore_eos,
        max_tokens_at_most=max_tokens_at_most,
        prompt_is_message=prompt_is_message and prompt is not None,
        system=system,
        tools=tuple(tools),
        constraint=constraint,
        truncate=truncate,
        repeat_penalty=penalties.repeat,
        frequency_penalty=penalties.frequency,
        presence_penalty=penalties.presence,
        repeat_last_n=penalties.last_n,
    )


def _without_head(
    prompt: str | None, messages: Sequence[Turn] | None, excess: int
) -> tuple[str | None, Sequence[Turn] | None, int]:
    """The prompt, or the last turn's text, less its first `excess` characters where it has
    more than that (else as they were), and the characters they come to."""
    if prompt is not None and len(prompt) > excess:
        prompt = prompt[excess:]
    elif prompt is None and messages:
        last = messages[-1]
        text = last.content if isinstance(last, Message) else last[1]
        if len(text) > excess:
            rest = text[excess:]
            cut: Turn = replace(last, content=rest) if isinstance(last, Message) else (last[0], rest)
            messages = (*messages[:-1], cut)
    return prompt, messages, len(prompt or "") + sum(_turn_chars(m) for m in messages or ())


def _within_chars(turns: tuple[Turn, ...], limit: int) -> tuple[tuple[Turn, ...], int]:
    """`turns` less as few of their oldest as bring them within `limit` characters (never a
    system turn, nor the last: ris.lanes.llm.without_oldest), and their characters; as they
    were if that cannot be done. A chat of a thousand turns costs the event loop ten sums."""

    def size(ts: tuple[Turn, ...]) -> int:
        return sum(_turn_chars(t) for t in ts)

    def fits(ts: tuple[Turn, ...]) -> int | None:
        n = size(ts)
        return n if n <= limit else None

    return fewest_left_out(turns, fits) or (turns, size(turns))


def _turn_chars(turn: tuple[str, str] | Message) -> int:
    if not isinstance(turn, Message):
        return len(turn[1])
    return len(turn.content) + sum(len(c.arguments) for c in turn.tool_calls)


def _check_constraint(
    constraint: Constraint,
    stops: list[str],
    ignore_eos: bool,
    invalid: Callable[[str, str], APIError],
    param: str,
) -> None:
    # Its size bounds the worker's work compiling it, lazy or not (tool_choice "auto" sends
    # every tool's parameters).
    if len(constraint.schema) > MAX_SCHEMA_CHARS:
        raise invalid(
            f"the JSON schema is {len(constraint.schema)} characters; the limit is {MAX_SCHEMA_CHARS}", param
        )
    schema = json.loads(constraint.schema)
    values = enum_values(schema)
    if values > MAX_ENUM_VALUES:
        raise invalid(
            f"the JSON schema has {values} enum values; the limit is {MAX_ENUM_VALUES} in one schema "
            "(each is a branch its grammar checks at every token)",
            param,
        )
    long = long_repetitions(schema)
    if long:
        raise invalid(
            f"the JSON schema asks for {', '.join(long[:3])}: more repetitions than a grammar "
            "holds (llama.cpp's bound); ask for fewer, or drop the keyword and bound the answer "
            "with max_tokens",
            param,
        )
    costly = pattern_problems(schema)
    if costly:
        raise invalid(
            f"the JSON schema's {'; '.join(costly)}; bound the string with maxLength instead, or "
            "drop the pattern",
            param,
        )
    impossible = impossible_bounds(schema)
    if impossible:
        raise invalid(f"no answer can match the JSON schema: {'; '.join(impossible[:3])}", param)
    broken = broken_refs(schema)
    if broken:
        raise invalid(
            f"the JSON schema's $ref {broken[0]!r} points at nothing in the schema; a $ref must be "
            "local, a JSON pointer into the schema itself, e.g. '#/$defs/Name'",
            param,
        )
    if constraint.lazy:  # a lazy grammar may never start: stop strings apply, as without one
        return
    # The grammar makes the answer whole; a stop string would cut it, and past the grammar's
    # end no token is allowed, so neither combines with it.
    if stops:
        raise invalid(f"stop cannot be combined with {param}: a stop string would cut the JSON short", "stop")
    if ignore_eos:
        raise invalid(
            f"ignore_eos cannot be combined with {param}: the answer ends where the JSON does", "ignore_eos"
        )


def broken_refs(schema: Any) -> list[str]:
    """Each `$ref` in `schema` that is not a local JSON pointer to a part of it. The grammar
    converter resolves only those, and fails on the rest with its own words (a KeyError's text)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None and not (isinstance(ref, str) and _resolves(schema, ref)):
                found.append(str(ref))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return found


def _resolves(root: Any, ref: str) -> bool:
    """As the grammar converter resolves a ref: "#/" and dictionary keys, read as written."""
    if not ref.startswith("#/"):
        return False  # remote, relative and whole-document ("#") refs: the converter has none
    node = root
    for key in ref[2:].split("/"):
        if not (isinstance(node, dict) and key in node):
            return False
        node = node[key]
    return isinstance(node, dict)


# Fields the seed API's bodies and LLMRequest name alike (getattr: model_dump costs more).
_SAME_NAMES = ("prompt", "system", "max_tokens", "temperature", "top_p", "stop", "seed", "ignore_eos")


def seed_llm_request(
    limits: ServerConfig,
    body: LLMFields,
    context_tokens: int | None,
    json_schema: dict[str, Any] | None = None,
) -> LLMRequest:
    """The LLMRequest of a seed-API body (/api/llm/generate, /api/chat/speak). Its `prompt` is the
    user's message to a chat model unless `raw` says otherwise; `json_schema`: the schema the
    answer must match (/api/llm/generate's field of that name)."""
    messages = None if body.messages is None else [(x.role, x.content) for x in body.messages]
    same = {name: getattr(body, name) for name in _SAME_NAMES}
    at_most = "max_tokens" not in body.model_fields_set
    if at_most:
        # The default (256) is a bound, not the client's demand: a server whose
        # max_new_tokens, or a model whose context, is smaller refused every request that sent
        # none ("max_tokens 256 is over the limit of 100"), where /v1 and Ollama answer.
        bound = min(body.max_tokens, limits.max_new_tokens)
        same["max_tokens"] = bound if context_tokens is None else min(bound, context_tokens)
    constraint = None if json_schema is None else Constraint(json.dumps(json_schema))
    return llm_request(
        limits,
        SEED,
        messages=messages,
        context_tokens=context_tokens,
        prompt_is_message=not body.raw,
        constraint=constraint,
        constraint_param="json_schema",
        max_tokens_at_most=at_most,
        **same,
    )
