"""What /v1 does with response_format and tools: the Constraint a request asks for, the tools
and turns it hands the model, and the answer's tool calls read back out of its text (whole,
or while it streams). The text form of calls is ris.lanes.llm_tools'."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ris.api.errors import APIError
from ris.api.openai_schemas import (
    ChatCompletionRequest,
    NamedToolChoice,
    OAMessage,
    ResponseFormat,
    SamplingBody,
)
from ris.api.openai_strict import CHAT, COMPLETIONS, refuse_unknown, refuse_unreadable_messages
from ris.lanes.json_schemas import unenforced
from ris.lanes.llm import Constraint, Message, Tool, ToolCall
from ris.lanes.llm_tools import CallHolder, call_schema, parse_calls

# Roles our chat templates know, for the ones OpenAI added.
ROLES = {"developer": "system"}


def refuse_unsupported(body: SamplingBody) -> None:
    """400 naming the first field that asks for something not implemented, or that no route
    of ours knows (openai_strict)."""
    if isinstance(body, ChatCompletionRequest):
        refuse_unknown(body, CHAT)
        refuse_unreadable_messages(body)
    else:
        refuse_unknown(body, COMPLETIONS)
    if body.n != 1:
        raise APIError(400, "unsupported_parameter", f"n is {body.n}; only n=1 is supported", param="n")
    if body.stream_options is not None and not body.stream:
        # As OpenAI answers: an answer that is not streamed has its usage anyway.
        raise APIError(
            400,
            "invalid_value",
            "stream_options is only allowed when stream is true",
            param="stream_options",
        )


def _strict_schema(schema: dict[str, Any], param: str) -> None:
    found = unenforced(schema)
    if found:
        raise APIError(
            400,
            "unsupported_schema",
            f"strict: the grammar cannot enforce {', '.join(found[:5])}; drop those keywords or "
            "set strict to false (then they are not enforced)",
            param=param,
        )


def response_constraint(fmt: ResponseFormat | None) -> Constraint | None:
    """The grammar response_format asks for: none for text, any JSON object for json_object."""
    if fmt is not None and fmt.type != "json_schema" and fmt.json_schema is not None:
        # Its schema would be dropped without a word: a json_object answer is any object.
        raise APIError(
            400,
            "invalid_value",
            f'response_format of type {fmt.type} takes no json_schema; use "type": "json_schema"',
            param="response_format",
        )
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Constraint(json.dumps({"type": "object"}))
    if fmt.json_schema is None:
        raise APIError(
            400,
            "invalid_value",
            'response_format of type json_schema needs a json_schema: {"name": ..., "schema": {...}}',
            param="response_format",
        )
    if fmt.json_schema.strict:
        _strict_schema(fmt.json_schema.schema_, "response_format")
    return Constraint(json.dumps(fmt.json_schema.schema_ or {}))


@dataclass(frozen=True)
class ToolPlan:
    """How a chat request's tools are used."""

    tools: tuple[Tool, ...]  # what the model is told of (none under tool_choice "none")
    constraint: Constraint | None  # the calls' grammar (lazy under auto: prose stays free)
    names: tuple[str, ...] = field(default=())  # the functions a call may name


def tool_plan(body: ChatCompletionRequest) -> ToolPlan | None:
    """None when the request has no tools, or says tool_choice "none"."""
    if not body.tools:
        if body.tool_choice not in (None, "none", "auto"):
            raise APIError(
                400, "invalid_value", "tool_choice needs tools to choose from", param="tool_choice"
            )
        return None
    if body.tool_choice == "none":
        return None
    for t in body.tools:
        if t.function.strict:
            _strict_schema(t.function.parameters, "tools")
    tools = tuple(
        Tool(t.function.name, t.function.description, json.dumps(t.function.parameters)) for t in body.tools
    )
    names = tuple(t.name for t in tools)
    if len(set(names)) != len(names):
        raise APIError(400, "invalid_value", "tools: each function needs its own name", param="tools")
    choice = body.tool_choice
    # OpenAI's default: several calls in one answer are allowed.
    parallel = body.parallel_tool_calls is not False
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise APIError(
                400,
                "invalid_value",
                f"tool_choice names '{choice.function.name}', which is not among tools: {', '.join(names)}",
                param="tool_choice",
            )
        # A named function is called once, as OpenAI does.
        schema = call_schema(tools, choice.function.name)
        return ToolPlan(tools, Constraint(schema, "tool_calls", parallel=False), names)
    if choice == "required":
        return ToolPlan(tools, Constraint(call_schema(tools), "tool_calls", parallel), names)
    # auto: the model may answer in prose; a call it starts is held to the form and schemas.
    return ToolPlan(tools, Constraint(call_schema(tools), "tool_calls", parallel, lazy=True), names)


def chat_turns(messages: list[OAMessage]) -> list[tuple[str, str] | Message]:
    """The lane's turns of a chat; a tool result must answer a call an earlier assistant turn
    made, every call must be answered by a tool message before the chat goes on (or ends), and
    a call's arguments must be a JSON object (400 otherwise, as OpenAI answers)."""
    turns: list[tuple[str, str] | Message] = []
    called: set[str] = set()
    unanswered: dict[str, int] = {}  # call id -> the message that made it
    for i, x in enumerate(messages):
        role = ROLES.get(x.role, x.role)
        if x.role != "tool":
            _all_answered(unanswered, i)
        for j, c in enumerate(x.tool_calls or ()):
            called.add(c.id)
            unanswered[c.id] = i
            if not _json_object(c.function.arguments):
                raise APIError(
                    400,
                    "invalid_value",
                    f"messages[{i}].tool_calls[{j}].function.arguments must be a JSON object as text, "
                    f'e.g. \'{{"city": "Oslo"}}\'',
                    param=f"messages[{i}].tool_calls[{j}].function.arguments",
                )
        if x.role == "tool" and x.tool_call_id not in called:
            raise APIError(
                400,
                "invalid_value",
                f"messages[{i}] (role tool) must answer a call an earlier assistant message made: "
                f"its tool_call_id {x.tool_call_id!r} is not one of "
                f"{sorted(called) if called else 'theirs (there are none)'}",
                param=f"messages[{i}].tool_call_id",
            )
        if x.role == "tool":
            unanswered.pop(x.tool_call_id or "", None)
        if x.tool_calls or x.role == "tool":
            calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in x.tool_calls or ())
            turns.append(Message(role, x.text(), calls, x.tool_call_id))
        else:
            turns.append((role, x.text()))
    _all_answered(unanswered, None)
    return turns


def _all_answered(unanswered: dict[str, int], before: int | None) -> None:
    """400 where calls an assistant message made have no tool message answering them before
    message `before` (None: the chat's end): the model would answer as if they had returned."""
    if not unanswered:
        return
    made = min(unanswered.values())
    ids = sorted(k for k, v in unanswered.items() if v == made)
    where = "by the chat's end" if before is None else f"before messages[{before}]"
    raise APIError(
        400,
        "invalid_value",
        f"messages[{made}] (role assistant) made tool calls no tool message answers {where}: "
        f"{', '.join(ids)}; answer each with a message of role tool and its tool_call_id",
        param=f"messages[{made}].tool_calls",
    )


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _call_json(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def chat_answer(
    text: str, finish_reason: str, plan: ToolPlan | None, call_ids: str
) -> tuple[dict[str, Any], str]:
    """The assistant message and finish_reason of a finished answer: its tool calls parsed out
    (ids `call_ids` + index), or its text. A cut-short answer (length) keeps the calls it had
    finished, and says it was cut (finish_reason length)."""
    cut = finish_reason == "length"
    parsed = (
        parse_calls(text, plan.names, cut)
        if plan is not None and finish_reason in ("stop", "length")
        else None
    )
    if parsed is None:
        return {"role": "assistant", "content": text}, finish_reason
    calls = [_call_json(f"{call_ids}{i}", name, args) for i, (name, args) in enumerate(parsed.calls)]
    message = {"role": "assistant", "content": parsed.content or None, "tool_calls": calls}
    return message, "length" if cut else "tool_calls"


class ToolCallStream:
    """Streamed text -> chat.completion.chunk deltas. Text streams as content as it comes; an
    answer that is (or may still become) a tool call is held back, and at its end sent as
    delta.tool_calls: per call, one chunk with its id and name, one with its arguments (the
    shape OpenAI's clients reassemble by index)."""

    def __init__(self, plan: ToolPlan, call_ids: str) -> None:
        self._plan = plan
        self._call_ids = call_ids
        # A required call holds everything; under auto, only what may be a call.
        self._constrained = plan.constraint is not None and not plan.constraint.lazy
        self._all: list[str] = []
        self._holder = CallHolder()

    def feed(self, text: str) -> list[dict[str, Any]]:
        if self._constrained:
            self._all.append(text)
            return []
        shown = self._holder.feed(text)
        return [{"content": shown}] if shown else []

    def finish(self, finish_reason: str) -> tuple[list[dict[str, Any]], str]:
        """The deltas still owed, and the answer's finish_reason."""
        text = "".join(self._all) if self._constrained else self._holder.held()
        if not text:
            return [], finish_reason
        message, finish = chat_answer(text, finish_reason, self._plan, self._call_ids)
        if "tool_calls" not in message:
            return ([{"content": text}] if text else []), finish
        deltas: list[dict[str, Any]] = []
        if message["content"]:
            deltas.append({"content": message["content"]})
        for i, call in enumerate(message["tool_calls"]):
            head = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
            deltas.append({"tool_calls": [{"index": i, **head}]})
            deltas.append(
                {"tool_calls": [{"index": i, "function": {"arguments": call["function"]["arguments"]}}]}
            )
        return deltas, finish
