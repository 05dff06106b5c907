"""Tool calls as text, without a model: the fallback prompt and turns, parsing calls out of an
answer, the streamed deltas, the refusal of unimplemented fields, the lane's JSON round trip."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import pytest

from ris.api.errors import APIError
from ris.api.openai_schemas import ChatCompletionRequest, ResponseFormat
from ris.api.openai_tools import (
    ToolCallStream,
    ToolPlan,
    chat_answer,
    chat_turns,
    refuse_unsupported,
    response_constraint,
    tool_plan,
)
from ris.lanes.json_schemas import unenforced
from ris.lanes.llm import LANE, Constraint, LLMRequest, Message, Tool, ToolCall
from ris.lanes.llm_tools import FALLBACK_INTRO, CallHolder, call_schema, fallback_turns, parse_calls

WEATHER = Tool(
    "get_weather", "Weather of a city", '{"type": "object", "properties": {"city": {"type": "string"}}}'
)
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
AUTO = ToolPlan((WEATHER,), None, ("get_weather",))


def test_calls_are_parsed_with_the_text_around_them() -> None:
    got = parse_calls(f"Let me look.\n{CALL}\n{CALL.replace('Oslo', 'Rome')}", ["get_weather"])
    assert got is not None and got.content == "Let me look."
    assert got.calls == (("get_weather", '{"city": "Oslo"}'), ("get_weather", '{"city": "Rome"}'))
    # Llama-style "parameters" is read as the arguments.
    alt = parse_calls('<tool_call>{"name": "get_weather", "parameters": {}}</tool_call>', ["get_weather"])
    assert alt is not None and alt.calls == (("get_weather", "{}"),)


@pytest.mark.parametrize(
    "text",
    [
        "It is sunny in Oslo.",
        "<tool_call>\n{not json}\n</tool_call>",
        '<tool_call>\n{"name": "launch_rocket", "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": "get_weather", "arguments": "Oslo"}\n</tool_call>',
    ],
)
def test_an_answer_without_a_well_formed_call_stays_text(text: str) -> None:
    assert parse_calls(text, ["get_weather"]) is None
    message, finish = chat_answer(text, "stop", AUTO, "call_x_")
    assert message == {"role": "assistant", "content": text} and finish == "stop"


def test_a_finished_call_becomes_tool_calls_and_a_cut_one_stays_text() -> None:
    message, finish = chat_answer(CALL, "stop", AUTO, "call_t_")
    assert finish == "tool_calls" and message["content"] is None
    assert message["tool_calls"] == [
        {
            "id": "call_t_0",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        }
    ]
    assert chat_answer(CALL[:30], "length", AUTO, "c")[1] == "length"


@pytest.mark.parametrize("cut_at", [1, 5, 11, 40])
def test_an_answer_cut_while_repeating_its_call_keeps_the_call_it_finished(cut_at: int) -> None:
    """SmolLM2 under a required call with parallel calls allowed wrote its call, began it again
    and ran into max_tokens: the call it had made was lost, its markup sent as the content."""
    message, finish = chat_answer(f"{CALL}\n{CALL[:cut_at]}", "length", AUTO, "c_")
    assert finish == "length" and message["content"] is None
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == ['{"city": "Oslo"}']
    got = parse_calls(f"Checking.\n{CALL}\nand then some words", ["get_weather"], cut=True)
    assert got is not None and got.content == "Checking.\n\nand then some words"  # text, not a call begun


def deltas_of(stream: ToolCallStream, pieces: list[str], finish: str) -> tuple[list[dict[str, Any]], str]:
    out = [d for p in pieces for d in stream.feed(p)]
    tail, reason = stream.finish(finish)
    return out + tail, reason


def test_streamed_prose_flows_at_once_and_a_streamed_call_comes_whole_at_the_end() -> None:
    prose, reason = deltas_of(ToolCallStream(AUTO, "c_"), ["It ", "is ", "sunny"], "stop")
    assert prose == [{"content": "It "}, {"content": "is "}, {"content": "sunny"}] and reason == "stop"
    pieces = [CALL[i : i + 7] for i in range(0, len(CALL), 7)]
    deltas, reason = deltas_of(ToolCallStream(AUTO, "c_"), pieces, "stop")
    assert reason == "tool_calls"
    head, args = deltas
    assert head == {
        "tool_calls": [
            {
                "index": 0,
                "id": "c_0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    }
    assert json.loads(args["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}


def test_the_fallback_puts_tools_in_the_system_turn_and_past_calls_in_text() -> None:
    turns = fallback_turns(
        [
            Message("system", "Be brief."),
            Message("user", "Weather in Oslo?"),
            Message("assistant", "", (ToolCall("call_1", "get_weather", '{"city": "Oslo"}'),)),
            Message("tool", '{"temp": 3}', tool_call_id="call_1"),
        ],
        [WEATHER],
    )
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    assert (
        turns[0]["content"].startswith("Be brief.\n\n" + FALLBACK_INTRO)
        and '"get_weather"' in turns[0]["content"]
    )
    assert turns[2]["content"] == CALL
    assert turns[3]["content"] == '<tool_response>\n{"temp": 3}\n</tool_response>'


def test_a_named_choice_constrains_to_that_function_and_one_call() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {"type": "function", "function": {"name": "get_weather"}},
                {"type": "function", "function": {"name": "b"}},
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        }
    )
    plan = tool_plan(body)
    assert plan is not None and plan.constraint is not None
    assert plan.constraint.form == "tool_calls" and not plan.constraint.parallel
    assert json.loads(plan.constraint.schema)["properties"]["name"] == {"const": "get_weather"}
    assert "anyOf" in json.loads(call_schema(plan.tools))
    with pytest.raises(APIError) as e:
        wrong = {"type": "function", "function": {"name": "nope"}}
        tool_plan(ChatCompletionRequest.model_validate({**body.model_dump(), "tool_choice": wrong}))
    assert e.value.param == "tool_choice"


def test_unimplemented_fields_are_refused_by_name_and_neutral_values_pass() -> None:
    def body(**extra: Any) -> ChatCompletionRequest:
        return ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}], **extra}
        )

    refuse_unsupported(body(logprobs=False, frequency_penalty=0, user="u", logit_bias={}))
    for field, value in [("logprobs", True), ("logit_bias", {"1": 2}), ("n", 3)]:
        with pytest.raises(APIError) as e:
            refuse_unsupported(body(**{field: value}))
        assert e.value.status == 400 and e.value.param == field


def test_what_openai_refuses_is_refused_not_dropped() -> None:
    turn = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(APIError) as e:
        refuse_unsupported(
            ChatCompletionRequest.model_validate({**turn, "stream_options": {"include_usage": True}})
        )
    assert e.value.param == "stream_options" and "only allowed when stream is true" in e.value.message
    refuse_unsupported(
        ChatCompletionRequest.model_validate(
            {**turn, "stream": True, "stream_options": {"include_usage": True}}
        )
    )
    schema = {"name": "city", "schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    with pytest.raises(APIError) as e:
        response_constraint(ResponseFormat.model_validate({"type": "json_object", "json_schema": schema}))
    assert e.value.param == "response_format" and '"type": "json_schema"' in e.value.message


def test_the_lane_request_round_trips_through_json() -> None:
    req = LLMRequest(
        messages=(
            ("user", "hi"),
            Message("assistant", "", (ToolCall("c1", "f", "{}"),)),
            Message("tool", "ok", tool_call_id="c1"),
        ),
        tools=(WEATHER,),
        constraint=Constraint('{"type": "object"}', "tool_calls", parallel=True),
    )
    assert LANE.request_from_json(LANE.request_to_json(req)) == req


def test_a_strict_schema_with_keywords_the_grammar_cannot_hold_is_refused() -> None:
    schema = {
        "type": "object",
        "properties": {
            "minimum": {"type": "number", "minimum": 0},  # a property may be named like a keyword
            "tags": {"type": "array", "items": {"type": "string", "format": "uri"}, "uniqueItems": True},
            # Held by the grammar: an integer's bounds (Pydantic's ge/le/gt/lt), an email.
            "age": {"type": "integer", "minimum": 0, "maximum": 120, "exclusiveMaximum": 121},
            "email": {"type": "string", "format": "email"},
        },
    }
    assert unenforced(schema) == ["minimum.minimum", "tags.uniqueItems", "tags.items.format"]
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    with pytest.raises(APIError) as e:
        response_constraint(ResponseFormat.model_validate(fmt))
    assert e.value.code == "unsupported_schema" and "minimum.minimum" in e.value.message
    loose = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    constraint = response_constraint(ResponseFormat.model_validate(loose))
    assert constraint is not None and json.loads(constraint.schema) == schema


def test_a_call_after_a_sentence_streams_as_it_answers_whole() -> None:
    """parse_calls finds a call anywhere in an answer; the stream must agree with the answer
    given whole: the sentence as content, the call as tool_calls (not its markup as text)."""
    text = "Let me check.\n" + CALL
    whole, whole_reason = chat_answer(text, "stop", AUTO, "c_")
    for size in (1, 3, 7, 50):
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        deltas, reason = deltas_of(ToolCallStream(AUTO, "c_"), pieces, "stop")
        content = "".join(d.get("content", "") for d in deltas)
        calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
        assert reason == whole_reason == "tool_calls", size
        assert content.strip() == whole["content"] == "Let me check.", size
        assert calls[0]["function"]["name"] == "get_weather" and "<tool_call>" not in content, size
    # A tag begun and then not a tag after all is text, and comes out (held only meanwhile).
    deltas, reason = deltas_of(ToolCallStream(AUTO, "c_"), ["See <to", "oltip> here"], "stop")
    assert "".join(d["content"] for d in deltas) == "See <tooltip> here" and reason == "stop"
    assert ToolCallStream(AUTO, "c_").feed("See <to") == [{"content": "See "}]


def test_a_call_holder_holds_a_blank_start_and_everything_from_a_tag_on() -> None:
    holder = CallHolder()
    assert [holder.feed(x) for x in ("\n", " ", "<tool_", "call>", "{}", "</tool_call>")] == [""] * 6
    assert holder.held() == "\n <tool_call>{}</tool_call>"
    holder = CallHolder()
    shown = [holder.feed(x) for x in ("\n", "Hi", " <", "b> and <tool_call>", "x")]
    assert shown == ["", "\nHi", " ", "<b> and ", ""]  # "<" held until it is not a tag
    assert holder.held() == "<tool_call>x"


def test_auto_holds_only_the_calls_the_model_starts() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "get_weather"}}],
            "parallel_tool_calls": False,
        }
    )
    plan = tool_plan(body)
    assert plan is not None and plan.constraint is not None
    assert plan.constraint.lazy and not plan.constraint.parallel
    none = ChatCompletionRequest.model_validate({**body.model_dump(), "tool_choice": "none"})
    assert tool_plan(none) is None


def test_the_schema_limit_holds_for_tools_under_auto_too() -> None:
    # tool_choice "auto" compiles every tool's parameters in the worker, as "required" does: the
    # size limit that bounds that work applies to both; stop strings only to "required".
    from ris.api.limits import MAX_SCHEMA_CHARS

    big = {
        "type": "object",
        "properties": {f"p{i}": {"type": "string"} for i in range(MAX_SCHEMA_CHARS // 20)},
    }
    tools = tuple(Tool(f"f{i}", "", json.dumps(big)) for i in range(4))
    lazy = Constraint(call_schema(tools), "tool_calls", lazy=True)
    assert len(lazy.schema) > MAX_SCHEMA_CHARS

    with pytest.raises(APIError) as e:
        openai_request(lazy, tools=tools)
    assert e.value.status == 400 and "the limit is" in e.value.message
    small = Constraint(call_schema((WEATHER,)), "tool_calls", lazy=True)
    assert openai_request(small, ["\n\n"], tools=tools).stop == ("\n\n",)


def openai_request(
    constraint: Constraint, stop: Sequence[str] = (), tools: tuple[Tool, ...] = ()
) -> LLMRequest:
    """The lane request of a /v1 chat turn "hi" under `constraint` (checked as the API does)."""
    from ris.api.llm_request import OPENAI, llm_request
    from ris.config import ServerConfig

    return llm_request(
        ServerConfig(),
        OPENAI,
        prompt=None,
        messages=[("user", "hi")],
        max_tokens=8,
        temperature=0.0,
        top_p=1.0,
        stop=list(stop),
        constraint=constraint,
        tools=tools,
        constraint_param="tool_choice" if tools else "response_format",
    )


def constrained(schema: dict[str, Any] | str) -> LLMRequest:
    return openai_request(Constraint(schema if isinstance(schema, str) else json.dumps(schema)))


@pytest.mark.parametrize(
    "ref",
    ["#/$defs/A", "#", "#/definitions/B", "https://example.com/s.json", "#/properties/nope", 5],
)
def test_a_ref_to_nothing_is_a_400_naming_it_before_any_worker_sees_it(ref: object) -> None:
    with pytest.raises(APIError) as e:
        constrained({"$ref": ref, "$defs": {"Other": {"type": "string"}}})
    assert e.value.status == 400 and f"$ref {str(ref)!r} points at nothing" in e.value.message


def test_local_refs_pass() -> None:
    person = {"type": "object", "properties": {"name": {"type": "string"}}}
    assert constrained({"$ref": "#/$defs/Person", "$defs": {"Person": person}}).constraint is not None
    assert constrained({"properties": {"a": {"$ref": "#/properties/b"}, "b": {"type": "integer"}}}).constraint


def test_tool_parameters_with_their_own_defs_become_one_grammar_schema() -> None:
    """Pydantic (and so LangChain) writes nested models as $defs with local $refs: in the call
    schema they are hoisted to its root, named per tool, their refs rewritten."""
    city = {"type": "object", "properties": {"name": {"type": "string"}}}
    params = {"type": "object", "properties": {"city": {"$ref": "#/$defs/City"}}, "$defs": {"City": city}}
    book = Tool("book", "", json.dumps(params))
    schema = json.loads(call_schema((book, WEATHER)))
    assert schema["$defs"] == {"book__City": city}
    assert schema["anyOf"][0]["properties"]["arguments"]["properties"]["city"] == {
        "$ref": "#/$defs/book__City"
    }
    assert constrained(json.dumps(schema)).constraint is not None  # every ref resolves
    single = json.loads(call_schema((book,)))
    assert single["properties"]["arguments"]["properties"]["city"] == {"$ref": "#/$defs/book__City"}


def chat(*messages: dict[str, Any]) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": list(messages)})


CALLED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
}


def test_a_tool_result_must_answer_an_earlier_call() -> None:
    ok = chat(
        {"role": "user", "content": "hi"}, CALLED, {"role": "tool", "tool_call_id": "call_1", "content": "3"}
    )
    assert len(chat_turns(ok.messages)) == 3
    for stray in (
        chat({"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_1", "content": "3"}),
        chat(CALLED, {"role": "tool", "tool_call_id": "call_9", "content": "3"}),
        chat(CALLED, {"role": "tool", "content": "3"}),
    ):
        with pytest.raises(APIError) as e:
            chat_turns(stray.messages)
        assert e.value.status == 400 and e.value.param == "messages[1].tool_call_id", e.value.message


def test_every_call_is_answered_before_the_chat_goes_on() -> None:
    """As OpenAI: an assistant turn's calls each need a tool message before the next turn, or
    the model answers as if they had returned."""
    answered = {"role": "tool", "tool_call_id": "call_1", "content": "3"}
    for unanswered, before in (
        (chat(CALLED), "by the chat's end"),
        (chat(CALLED, {"role": "user", "content": "and?"}, answered), "before messages[1]"),
    ):
        with pytest.raises(APIError) as e:
            chat_turns(unanswered.messages)
        assert e.value.status == 400 and e.value.param == "messages[0].tool_calls", e.value.message
        assert before in e.value.message and "call_1" in e.value.message


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"', ""])
def test_call_arguments_must_be_a_json_object(arguments: str) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(APIError) as e:
        chat_turns(chat({"role": "assistant", "tool_calls": [call]}).messages)
    assert e.value.status == 400 and e.value.param == "messages[0].tool_calls[0].function.arguments"


def test_a_schema_with_too_many_enum_values_is_refused_naming_the_limit() -> None:
    from ris.api.limits import MAX_ENUM_VALUES

    def picks(n: int) -> dict[str, Any]:
        return {"type": "object", "properties": {"enum": {"enum": [f"v{i}" for i in range(n)]}}}

    assert constrained(picks(MAX_ENUM_VALUES)).constraint is not None
    with pytest.raises(APIError) as e:
        constrained({"anyOf": [picks(MAX_ENUM_VALUES), picks(1)]})  # all enums together
    assert e.value.status == 400 and f"{MAX_ENUM_VALUES + 1} enum values; the limit is" in e.value.message


def test_a_schema_repeating_more_than_a_grammar_holds_is_refused_naming_the_keyword() -> None:
    """maxLength 5000 reached the worker, whose answer was "llama.cpp could not parse the
    grammar", naming nothing the client could change."""

    def text(n: int) -> dict[str, Any]:
        return {"type": "object", "properties": {"text": {"type": "string", "maxLength": n}}}

    assert constrained(text(2000)).constraint is not None
    with pytest.raises(APIError) as e:
        constrained(text(5000))
    assert (
        e.value.status == 400
        and "text.maxLength 5000" in e.value.message
        and "at most 2000" in e.value.message
    )
    named = {"type": "object", "properties": {"maxLength": {"type": "array", "maxItems": 1001}}}
    with pytest.raises(APIError) as e:  # a property named like the keyword is still walked
        constrained(named)
    assert "maxLength.maxItems 1001 (at most 1000)" in e.value.message


def test_a_pattern_the_grammar_cannot_hold_or_holds_at_great_cost_is_refused() -> None:
    """One user's `pattern` "^a{0,30000}$" overflowed the LLM worker's stack (SIGSEGV: every
    user's answers failed, and sent each second it held the lane down for minutes);
    "^(a{0,200}){0,200}$" held the worker 80 s a request; "(a+)+$" answered with the
    converter's AssertionError text. The count limits of the bounds below are checked against
    llama.cpp itself in tests/integration/test_structured_output.py."""

    def text(pattern: str) -> dict[str, Any]:
        return {"type": "object", "properties": {"code": {"type": "string", "pattern": pattern}}}

    for fine in (
        "^a{0,1000}$",
        "^(a{0,10}){0,10}$",  # 110 ways
        "^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$",  # a UUID
        r"^(\d{1,3}\.){3}\d{1,3}$",  # an IPv4 address
        r"^\+?[0-9]{1,3}([ -]?[0-9]{2,4}){2,5}$",  # a phone number
        "^(ab|cd){0,1000}$",  # alternatives of one width read one way
        "^(a?)*$",  # unbounded: recursion, cheap
        "^" + "a?" * 40 + "$",
        "^\\]\\}$",  # escaped, they are read
        r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$",  # an email address
    ):
        assert constrained(text(fine)).constraint is not None, fine
    for costly, said in (
        ("^a{0,30000}$", "code.pattern {0,30000} repeats more than 1000 times"),
        ("^(a{0,200}){0,200}$", "code.pattern {0,200} repeats a part that itself varies (201 ways)"),
        ("^(a?){0,60}$", "{0,60} repeats a part that itself varies (2 ways)"),
        ("^(a|aa|aaa){0,300}$", "(3 ways)"),
        ("(a+)+$", "code.pattern must be anchored: start with ^ and end with $"),
        ("^[a-z$", "code.pattern is not a pattern this server reads (an unclosed '[')"),
        # Read as the converter reads a count, not as Python's `re` (to which these are text):
        # each of them passed a check made with `re`, and the worker crashed all the same.
        ("^a{0, 30000}$", "{0, 30000} repeats more than 1000 times"),
        ("^a{0,30000 }$", "repeats more than 1000 times"),
        ("^(a{0,200}){0, 200}$", "repeats a part that itself varies"),
        ("^a{0,30_000}$", "a count is written in digits"),
        ("^a{0,\uff13\uff10\uff10\uff10\uff10}$", "a count is written in digits"),  # full-width
        ("^(?:a){3}$", "non-capturing groups are not supported"),
        # The converter stood still on these: the worker spun until its 300 s progress bound.
        ("^]$", "a ']' at 1 outside a class: write it escaped"),
        ("^[]]$", "a ']' at 3 outside a class"),
        ("^a}$", "a '}' at 2 outside a class"),
        # 5,000 optional parts in a row: 83 s a vocabulary check, every user's structured
        # answers waiting behind it on the one grammar thread.
        ("^" + "a?" * 5000 + "$", "vary by 4999 characters besides the longest (at most 40)"),
        ("^" + "a?" * 41 + "$", "has 41 parts whose length varies (?, *, +, {m,n}; at most 40)"),
        # Second review: wide ranges in a row ("a{0,1000}" counted once each), a count of zero
        # or a minimum over the maximum (ways of 0 switched the nested check off), groups
        # nested past Python's recursion (a 500).
        ("^" + "a{0,50}" * 40 + "$", "vary by 1950 characters besides the longest"),
        ("^a{0,1000}a{0,1000}$", "vary by 1000 characters besides the longest"),
        ("^(a{1,0}a{0,1000}){20}$", "repeats a part that itself varies (1001 ways)"),
        ("^((a?){0}a{0,1000}){20}$", "repeats a part that itself varies (1001 ways)"),
        ("^" + "(" * 497 + "a" + ")" * 497 + "$", "nests its groups too deep"),
    ):
        with pytest.raises(APIError) as e:
            constrained(text(costly))
        assert e.value.status == 400 and said in e.value.message, (costly, e.value.message)
        assert "AssertionError" not in e.value.message
    # Only where the converter reads it: an integer's pattern, or an enum's, is never grammar.
    ignored = {"type": "object", "properties": {"n": {"type": "integer", "pattern": "\\d+"}}}
    assert constrained(ignored).constraint is not None
    assert constrained({"type": "string", "enum": ["a"], "pattern": "[a]"}).constraint is not None
    # A $ref read as the converter reads it (keys as written: "~0" unescaped here pointed the
    # checks at another target than the converter's).
    tilde = {
        "type": "object",
        "properties": {"s": {"$ref": "#/x-a~0b"}},
        "x-a~0b": text("^]$")["properties"]["code"],
        "x-a~b": {"type": "string"},
    }
    with pytest.raises(APIError) as e:
        constrained(tilde)
    assert "a ']' at 1 outside a class" in e.value.message
    # Wherever the schema holds it: a tool's parameters, a $ref's target.
    hidden = {"$defs": {"C": text("^a{0,5000}$")}, "$ref": "#/$defs/C"}
    with pytest.raises(APIError) as e:
        constrained(hidden)
    assert "repeats more than 1000 times" in e.value.message


def test_a_schema_no_answer_can_match_is_refused_naming_the_bounds() -> None:
    """minLength 3 with maxLength 2 was accepted and answered "fab" (the converter wrote a
    grammar that does not hold the bounds it cannot meet)."""
    name = {"type": "object", "properties": {"name": {"type": "string", "minLength": 3, "maxLength": 2}}}
    with pytest.raises(APIError) as e:
        constrained(name)
    assert e.value.status == 400 and "name: minLength 3 > maxLength 2" in e.value.message
    with pytest.raises(APIError) as e:
        constrained({"type": "integer", "minimum": 10, "maximum": 5})
    assert "the schema: minimum 10 > maximum 5" in e.value.message
    assert constrained({"type": "array", "minItems": 2, "maxItems": 2}).constraint is not None


def test_bounds_and_emails_count_as_held_only_where_nothing_else_shapes_the_value() -> None:
    """The converter decides an enum, a const or a combinator first, and a length or a pattern
    of an email: there the bounds (or the email's form) are not held, and strict says so."""
    assert unenforced({"type": "integer", "minimum": 1, "exclusiveMaximum": 9}) == []
    assert unenforced({"type": "integer", "enum": [2, 4], "minimum": 1, "maximum": 5}) == [
        "minimum",
        "maximum",
    ]
    assert unenforced({"type": "integer", "minimum": 5, "exclusiveMinimum": True}) == [
        "minimum",
        "exclusiveMinimum",
    ]  # draft 4's boolean form
    assert unenforced({"type": "number", "minimum": 0}) == ["minimum"]
    assert unenforced({"type": "string", "format": "email"}) == []
    assert unenforced({"type": "string", "format": "email", "maxLength": 20}) == ["format"]
    assert unenforced({"format": "email", "items": {"type": "string"}}) == ["format"]  # an array first


def test_unenforced_keywords_are_found_wherever_a_ref_points_and_in_lists() -> None:
    """Strict mode walks the schema as the grammar's converter reads it: a `$ref` into a
    `default` (data, which the converter still turns into grammar) hid a `minimum` from it."""
    hidden = {
        "type": "object",
        "properties": {"a": {"type": "number", "default": {"type": "number", "minimum": 3}}},
        "required": ["b"],
        "additionalProperties": {"$ref": "#/properties/a/default"},
    }
    assert unenforced(hidden) == ["additionalProperties.$ref(#/properties/a/default).minimum"]
    either = {"anyOf": [{"type": "string"}, {"type": "number", "multipleOf": 2}]}
    assert unenforced(either) == ["anyOf.1.multipleOf"]
    vendor = {"type": "object", "x-ui": {"minimum": 1}}  # a vendor's keyword: not a schema ...
    assert unenforced(vendor) == []
    vendor["properties"] = {"a": {"$ref": "#/x-ui"}}  # ... unless a $ref makes it one
    assert unenforced(vendor) == ["a.$ref(#/x-ui).minimum"]
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": hidden, "strict": True}}
    with pytest.raises(APIError) as e:
        response_constraint(ResponseFormat.model_validate(fmt))
    assert e.value.code == "unsupported_schema" and "minimum" in e.value.message


def test_schema_checks_walk_properties_whatever_their_names() -> None:
    """A property named "default" or "const" was skipped as if it were data: its maxLength of
    20,000 reached the worker, whose grammar parser that size crashed."""
    from ris.lanes.json_schemas import impossible_bounds, long_repetitions

    named = {"properties": {"default": {"type": "string", "maxLength": 20000}}}
    assert long_repetitions(named) == ["default.maxLength 20000 (at most 2000)"]
    defs = {"$defs": {"const": {"type": "array", "maxItems": 50000}}, "enum": [{"maxItems": 50000}]}
    assert long_repetitions(defs) == ["const.maxItems 50000 (at most 1000)"]  # an enum's values are data
    assert impossible_bounds({"properties": {"examples": {"minItems": 3, "maxItems": 1}}}) == [
        "examples: minItems 3 > maxItems 1"
    ]
    assert impossible_bounds({"type": "integer", "exclusiveMinimum": 5, "maximum": 5}) == [
        "the schema: no integer lies between its bounds (6 to 5)"
    ]
    assert impossible_bounds({"type": "integer", "minimum": 1.5, "maximum": 1.7}) == [
        "the schema: no integer lies between its bounds (2 to 1)"
    ]
    assert impossible_bounds({"type": "integer", "minimum": 1e17}) == [
        "the schema: its bounds lie beyond the 16 digits an integer is written in"
    ]


def test_schema_checks_follow_refs_into_data() -> None:
    """The converter turns what a $ref points at into grammar, inside a `default` too: a
    maxLength of 20,000 there passed every check and reached the worker's parser."""
    from ris.lanes.json_schemas import long_repetitions

    hidden = {
        "type": "object",
        "properties": {
            "a": {"$ref": "#/properties/a/default", "default": {"type": "string", "maxLength": 20000}}
        },
    }
    assert long_repetitions(hidden) == ["a.$ref(#/properties/a/default).maxLength 20000 (at most 2000)"]
    with pytest.raises(APIError) as e:
        constrained(hidden)
    assert e.value.status == 400 and "maxLength 20000" in e.value.message
    loop = {"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"}
    assert long_repetitions(loop) == []  # a recursive schema is walked once


def test_a_ref_into_a_tools_own_parameters_is_reached_by_keys_alone() -> None:
    """The converter walks dictionary keys only: a tool whose parameters refer into
    themselves becomes a $defs entry of its own, not a path through the anyOf list."""
    params = {"type": "object", "properties": {"a": {"$ref": "#/properties/b"}, "b": {"type": "integer"}}}
    schema = json.loads(call_schema((Tool("f", "", json.dumps(params)), WEATHER)))
    assert schema["anyOf"][0]["properties"]["arguments"] == {"$ref": "#/$defs/f__args"}
    assert schema["$defs"]["f__args"]["properties"]["a"] == {"$ref": "#/$defs/f__args/properties/b"}
    assert constrained(json.dumps(schema)).constraint is not None
    with pytest.raises(APIError):  # a path through a list: the converter cannot follow it
        constrained({"anyOf": [{"type": "string"}], "properties": {"x": {"$ref": "#/anyOf/0"}}})


def test_costly_schemas_are_many_enum_values_or_deep_nesting() -> None:
    from ris.lanes.llm import COSTLY_ENUM_VALUES, LANE, LLMRequest, costly_schema

    many = {"enum": [f"v{i}" for i in range(COSTLY_ENUM_VALUES)]}
    assert costly_schema(json.dumps(many)) and not costly_schema(json.dumps({"enum": ["a", "b"]}))
    deep: dict[str, object] = {"type": "string"}
    for _ in range(9):
        deep = {"type": "object", "properties": {"x": deep}}
    assert costly_schema(json.dumps(deep))  # 10 levels
    assert not costly_schema(json.dumps(deep["properties"]["x"]))  # type: ignore[index] # 9
    assert not costly_schema(json.dumps({"type": "object", "properties": {"name": {"type": "string"}}}))
    assert LANE.costly(LLMRequest(prompt="x", constraint=Constraint(json.dumps(many))))
    assert not LANE.costly(LLMRequest(prompt="x"))


def test_an_mcp_style_tool_name_is_taken_by_the_ollama_api_and_its_grammar_compiles() -> None:
    """Ollama takes any tool name, and MCP bridges name tools `<server>.<tool>`: every request
    of theirs was a 400 (OpenAI's ^[A-Za-z0-9_-]{1,64}$). The name reaches a grammar (its
    schema referenced under it) and the answer's parser."""
    from ris.api.ollama_schemas import OllamaFunctionDef
    from ris.backends._grammar import gbnf

    name = "filesystem.read_file"
    assert OllamaFunctionDef.model_validate({"name": name}).name == name
    with pytest.raises(ValueError):
        OllamaFunctionDef.model_validate({"name": "read file"})
    params = {
        "type": "object",
        "properties": {"p": {"$ref": "#/$defs/path"}},
        "$defs": {"path": {"type": "string"}},
    }
    tool = Tool(name, "", json.dumps(params))
    rules, root = gbnf(Constraint(call_schema((tool,)), "tool_calls"))
    # GBNF's rule names are letters, digits and dashes: the converter's names from the tool's
    # must be (a dot in one is a grammar llama.cpp refuses, failing the request in the worker).
    names = [line.split("::=")[0].strip() for line in rules.splitlines() if "::=" in line]
    assert root in names and all(re.fullmatch(r"[A-Za-z0-9-]+", n) for n in names), names
    parsed = parse_calls(
        f'<tool_call>\n{{"name": "{name}", "arguments": {{"p": "/etc/hosts"}}}}\n</tool_call>', [name]
    )
    assert parsed is not None and [c[0] for c in parsed.calls] == [name]
