"""Tool calls on the LLM lane: the one text form calls take, how tools reach a model whose chat
template does not know them, and how calls are read back out of the answer.

The form is the one Qwen2.5's and Hermes' chat templates teach their models:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A model whose template renders `tools` is told about them by its template; any other model
gets FALLBACK_INTRO (the same words Qwen2.5's template uses) as a system message. When a call
is required or names its function, a grammar holds the answer to this form and the arguments
to the function's parameter schema (see `call_schema`); under `auto` the model may answer in
prose, and text that is not a well-formed call stays text.

Pure text handling, no model: the backend renders with it, the API parses with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ris.lanes.llm import Message, Tool, ToolCall

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
# Calls one answer may hold when parallel calls are allowed (the grammar's bound: a small model
# that repeats itself stops there rather than at max_tokens).
MAX_PARALLEL_CALLS = 4

FALLBACK_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
FALLBACK_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def openai_tool(tool: Tool) -> dict[str, object]:
    """The tool as OpenAI (and chat templates, which follow it) write it."""
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": json.loads(tool.parameters),
        },
    }


def fallback_prompt(tools: Sequence[Tool]) -> str:
    """The system text that tells a model without a tool-aware template about the tools."""
    lines = "\n".join(json.dumps(openai_tool(t), ensure_ascii=False) for t in tools)
    return FALLBACK_INTRO + lines + FALLBACK_OUTRO


def render_call(call: ToolCall) -> str:
    """A past call, as the model would have written it (for a template without tool support)."""
    try:
        arguments: object = json.loads(call.arguments)
    except ValueError:
        arguments = call.arguments
    body = json.dumps({"name": call.name, "arguments": arguments}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def fallback_turns(messages: Sequence[Message], tools: Sequence[Tool]) -> list[dict[str, str]]:
    """Chat turns for a template that knows only roles and text: the tools as a system message
    (joined to the first system turn), past calls as the assistant's text, tool answers as user
    turns in <tool_response> tags (as Qwen2.5's template writes them)."""
    turns: list[dict[str, str]] = []
    for m in messages:
        if m.role == "tool":
            turns.append({"role": "user", "content": f"<tool_response>\n{m.content}\n</tool_response>"})
        elif m.tool_calls:
            text = "\n".join([m.content, *(render_call(c) for c in m.tool_calls)]).lstrip("\n")
            turns.append({"role": "assistant", "content": text})
        else:
            turns.append({"role": m.role, "content": m.content})
    if tools:
        intro = fallback_prompt(tools)
        if turns and turns[0]["role"] == "system":
            turns[0] = {"role": "system", "content": f"{turns[0]['content']}\n\n{intro}"}
        else:
            turns.insert(0, {"role": "system", "content": intro})
    return turns


def template_turns(messages: Sequence[Message]) -> list[dict[str, object]]:
    """Chat turns for a template that renders tools: calls and answers as Hugging Face's chat
    templates expect them (arguments as an object, tool answers with their call's id)."""
    turns: list[dict[str, object]] = []
    for m in messages:
        turn: dict[str, object] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            turn["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": _object_or_text(c.arguments)},
                }
                for c in m.tool_calls
            ]
        if m.tool_call_id is not None:
            turn["tool_call_id"] = m.tool_call_id
        turns.append(turn)
    return turns


def _object_or_text(arguments: str) -> object:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def call_schema(tools: Sequence[Tool], name: str | None = None) -> str:
    """JSON Schema of one call: {"name": <one of the tools>, "arguments": <its parameters>}.
    `name` restricts it to that function (tool_choice naming one)."""
    chosen = [t for t in tools if name is None or t.name == name]
    one = len(chosen) == 1
    defs: dict[str, Any] = {}
    options = []
    for t in chosen:
        arguments = _rebased(json.loads(t.parameters), f"{t.name}__", defs)
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": arguments},
                "required": ["name", "arguments"],
            }
        )
    schema: dict[str, Any] = options[0] if one else {"anyOf": options}
    if defs:
        schema["$defs"] = defs
    return json.dumps(schema)


def _rebased(parameters: Any, prefix: str, defs: dict[str, Any]) -> Any:
    """A tool's parameters as they go into the call schema, whose root the grammar resolves
    every `$ref` from: their `$defs` (Pydantic's and LangChain's schemas have them) hoisted to
    the root's, named with `prefix`, their refs rewritten to match. A ref to another part of
    the parameters ("#/properties/a") makes them a `$defs` entry of their own too, reached by
    dictionary keys alone as the converter walks them (it does not index lists)."""
    if not isinstance(parameters, dict):
        return parameters
    parameters = dict(parameters)
    own = {**(parameters.pop("definitions", None) or {}), **(parameters.pop("$defs", None) or {})}
    home = f"#/$defs/{prefix}args"
    inner: list[str] = []  # refs into the parameters themselves

    def rewrite(node: Any) -> Any:
        if isinstance(node, list):
            return [rewrite(x) for x in node]
        if not isinstance(node, dict):
            return node
        out = {k: rewrite(v) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str):
            for section in ("#/$defs/", "#/definitions/"):
                if ref.startswith(section):
                    out["$ref"] = "#/$defs/" + prefix + ref[len(section) :]
                    break
            else:
                if ref.startswith("#/"):
                    inner.append(ref)
                    out["$ref"] = home + ref[1:]
        return out

    defs.update({prefix + key: rewrite(sub) for key, sub in own.items()})
    rewritten = rewrite(parameters)
    if not inner:
        return rewritten
    defs[f"{prefix}args"] = rewritten
    return {"$ref": home}


@dataclass(frozen=True)
class ParsedAnswer:
    content: str  # the text outside the calls (empty when the answer is only calls)
    calls: tuple[tuple[str, str], ...]  # (name, arguments as JSON text), in order


_CALL = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.DOTALL)


def parse_calls(text: str, tool_names: Sequence[str], cut: bool = False) -> ParsedAnswer | None:
    """The calls in an answer, or None when it holds none that is well formed: a block that is
    not a JSON object with a known `name` and an object of `arguments` makes the whole answer
    plain text (a model under `auto` that writes about a call rather than making it).
    `cut`: the answer was cut short (max_tokens); a call it was still writing is dropped and
    those it finished are kept (a small model that repeats its call under parallel calls ran
    into max_tokens and lost the call it had made, its markup left in the content)."""
    if cut:
        ends = [m.end() for m in _CALL.finditer(text)]
        tail = text[ends[-1] if ends else 0 :]
        at = tail.find(CALL_OPEN)
        if at < 0 and _tag_begun(tail):
            at = len(tail) - _tag_begun(tail)
        if at >= 0:
            text = text[: len(text) - len(tail) + at]
    calls: list[tuple[str, str]] = []
    for match in _CALL.finditer(text):
        try:
            call = json.loads(match.group(1))
        except ValueError:
            return None
        if not isinstance(call, dict) or call.get("name") not in tool_names:
            return None
        arguments = call.get("arguments", call.get("parameters", {}))
        if not isinstance(arguments, dict):
            return None
        calls.append((call["name"], json.dumps(arguments, ensure_ascii=False)))
    if not calls:
        return None
    content = _CALL.sub("", text).strip()
    return ParsedAnswer(content, tuple(calls))


class CallHolder:
    """Streamed text under tools (`auto`): shown as it comes, except what may be a tool call: a
    blank start, and the text from an opening tag on (held to the answer's end, where
    parse_calls reads it) or a part of one at the end so far. parse_calls finds calls anywhere
    in an answer, so the stream must hold them anywhere too: a model that writes a sentence,
    then its call, would otherwise stream the call's markup as text."""

    def __init__(self) -> None:
        self._held = ""
        self._shown = False  # some text went out: a blank start no longer needs holding
        self._opened = False  # an opening tag is held: everything after it is held too

    def feed(self, text: str) -> str:
        """What may be shown now of the answer so far ("" while it is all held)."""
        self._held += text
        if self._opened:
            return ""
        at = self._held.find(CALL_OPEN)
        if at >= 0:
            self._opened = True
        else:
            at = len(self._held) - _tag_begun(self._held)
        show = self._held[:at]
        if not show or (not self._shown and not show.strip()):
            return ""
        self._held, self._shown = self._held[at:], True
        return show

    def held(self) -> str:
        """What was held back, to be parsed for calls when the answer ends."""
        return self._held


def _tag_begun(text: str) -> int:
    """How many characters at the end of `text` are the start of an opening tag."""
    for k in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
        if text.endswith(CALL_OPEN[:k]):
            return k
    return 0
