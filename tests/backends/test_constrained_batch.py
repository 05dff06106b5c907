"""Grammar-constrained sequences on the real model (SmolLM2 on llama.cpp), batched with plain
ones: each keeps its own grammar, the JSON parses, the plain text is untouched by it."""

from __future__ import annotations

import json

import pytest

from ris.backends import BackendError
from ris.backends.llm_llama_cpp import LlamaCppLLM
from ris.lanes.llm import Constraint, LLMOutcome, LLMRequest, TextCollector, Tool
from ris.lanes.llm_tools import call_schema, parse_calls

from .batching import run_batch

jsonschema = pytest.importorskip("jsonschema", reason="a test dependency")

SHAPE = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "mood": {"enum": ["happy", "sad"]},
        "scores": {"type": "array", "items": {"type": "integer"}, "maxItems": 4},
    },
    "required": ["title", "mood", "scores"],
}


def ask(text: str, **kw: object) -> LLMRequest:
    return LLMRequest(messages=(("user", text),), **kw)  # type: ignore[arg-type]


def test_a_constrained_sequence_among_plain_ones_gives_valid_json(llm: LlamaCppLLM) -> None:
    plain = ask("Tell me a story about a fox.", max_tokens=40, temperature=0)
    alone = run_batch(llm, {"p": plain})["p"][1]
    got = run_batch(
        llm,
        {
            "plain": plain,
            "json": ask(
                "Describe a film as JSON.", max_tokens=200, seed=1, constraint=Constraint(json.dumps(SHAPE))
            ),
            "object": ask(
                "Give a person's name and age as JSON.",
                max_tokens=200,
                seed=2,
                constraint=Constraint('{"type": "object"}'),
            ),
        },
    )
    outcome, text = got["json"]
    assert outcome.finish_reason == "stop", text
    jsonschema.validate(json.loads(text), SHAPE)
    outcome, text = got["object"]
    assert outcome.finish_reason == "stop" and isinstance(json.loads(text), dict), text
    # The grammars of the others do not reach the plain sequence: greedy text is the same.
    assert got["plain"][1] == alone


def test_integer_bounds_and_emails_as_pydantic_writes_them_hold_the_answer(llm: LlamaCppLLM) -> None:
    """`Field(ge=18, le=65)`, `Field(gt=-3, lt=3)` and `EmailStr`: the converter ignored them, so
    strict schemas using them were refused; now the grammar holds the answer to them, at a
    temperature that strays."""
    shape = {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 18, "maximum": 65},
            "offset": {"type": "integer", "exclusiveMinimum": -3, "exclusiveMaximum": 3},
            "votes": {"type": "integer", "minimum": 1000},
            "email": {"type": "string", "format": "email"},
        },
        "required": ["age", "offset", "votes", "email"],
        "additionalProperties": False,
    }
    asks = {
        str(seed): ask(
            "Invent a person as JSON: age 99, offset 7, votes 5, and an email.",
            max_tokens=250,
            seed=seed,
            temperature=1.2,
            constraint=Constraint(json.dumps(shape)),
        )
        for seed in range(3)  # the fixture's parallel
    }
    for outcome, text in run_batch(llm, asks).values():
        assert outcome.finish_reason == "stop", text
        got = json.loads(text)
        assert 18 <= got["age"] <= 65 and -3 < got["offset"] < 3 and got["votes"] >= 1000, got
        local, _, domain = got["email"].partition("@")
        assert local and "." in domain, got


def test_a_required_tool_call_has_the_form_and_arguments_validate(llm: LlamaCppLLM) -> None:
    params = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
    }
    arguments = required_call(
        llm, "What is the weather in Madrid?", Tool("get_weather", "Weather", json.dumps(params))
    )
    jsonschema.validate(json.loads(arguments), params)


def required_call(llm: LlamaCppLLM, prompt: str, tool: Tool) -> str:
    """The arguments of the call the model must make to `tool` (another tool offered too)."""
    tools = (tool, Tool("get_time", "Time now"))
    req = ask(
        prompt,
        tools=tools,
        max_tokens=120,
        temperature=0,
        constraint=Constraint(call_schema(tools, tool.name), "tool_calls"),
    )
    outcome, text = run_batch(llm, {"call": req})["call"]
    parsed = parse_calls(text, [tool.name, "get_time"])
    assert outcome.finish_reason == "stop" and parsed is not None, text
    [(name, arguments)] = parsed.calls
    assert name == tool.name
    return arguments


def test_tool_parameters_with_defs_as_pydantic_writes_them_hold_the_call(llm: LlamaCppLLM) -> None:
    """A nested model is a $defs entry and a local $ref: the call schema hoists it (call_schema),
    and the arguments the grammar lets through validate against the tool's own schema."""
    city = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}},
        "required": ["name"],
    }
    params = {
        "type": "object",
        "properties": {"city": {"$ref": "#/$defs/City"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "$defs": {"City": city},
    }
    arguments = required_call(
        llm, "Forecast for Oslo, 3 days.", Tool("forecast", "Forecast", json.dumps(params))
    )
    jsonschema.validate(json.loads(arguments), params)


def test_a_schema_that_cannot_become_a_grammar_is_refused_and_the_batch_serves_on(llm: LlamaCppLLM) -> None:
    with pytest.raises(BackendError) as e:
        llm.batch().add(
            "bad", ask("x", constraint=Constraint('{"$ref": "https://example.com/s.json"}')), TextCollector()
        )
    assert e.value.code == "invalid_request"
    # A repetition past llama.cpp's parser (which overflowed the worker's stack at 20,000) is
    # refused here too, whatever way the schema came in.
    huge = Constraint('{"type": "string", "maxLength": 20000}')
    with pytest.raises(BackendError) as e:
        llm.batch().add("huge", ask("x", constraint=huge), TextCollector())
    assert e.value.code == "invalid_request" and "maxLength 20000" in e.value.message
    assert llm.batch().active == 0
    outcome, _ = run_batch(llm, {"ok": ask("Hi", max_tokens=3)})["ok"]
    assert outcome.completion_tokens >= 1


def test_a_grammar_with_no_way_on_fails_its_sequence_alone(
    llm: LlamaCppLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No schema reaches a dead end on this model (the grammar resamples over the whole
    # vocabulary); the dead end is made where it would be raised, for the "json" sequence only.
    from ris.backends import llama_batch

    real = llama_batch.LlamaBatch._keep

    def keep(self: llama_batch.LlamaBatch, slot: llama_batch._Slot, token: int) -> None:
        if slot.seq is not None and slot.seq.key == "json" and slot.seq.produced == 2:
            raise BackendError("backend_error", "the grammar allows no token of this model's vocabulary here")
        real(self, slot, token)

    monkeypatch.setattr(llama_batch.LlamaBatch, "_keep", keep)
    plain = ask("Tell me a story about a fox.", max_tokens=20, temperature=0)
    batch = llm.batch()
    outs = {"plain": TextCollector(), "json": TextCollector()}
    batch.add("plain", plain, outs["plain"])
    batch.add(
        "json", ask("A film as JSON.", max_tokens=50, constraint=Constraint(json.dumps(SHAPE))), outs["json"]
    )
    ended: dict[str, object] = {}
    while len(ended) < 2:
        ended.update(batch.step())
    assert isinstance(ended["json"], BackendError) and "no token" in ended["json"].message
    assert isinstance(ended["plain"], LLMOutcome) and ended["plain"].completion_tokens == 20
    assert batch.active == 0


def test_a_slow_grammar_slows_its_own_answer_not_the_batch(
    llm: LlamaCppLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every token of the "json" sequence is resampled under its grammar, each resample made
    to take 0.3 s (a big enum's cost): the plain sequence's 20 tokens finish while the json one
    has kept only a few, where a step waiting for the resample would give both the same pace."""
    import time

    from ris.backends import _grammar

    real = _grammar.Grammar.resample

    def slow(self: _grammar.Grammar, chain: object, logits: object) -> int:
        time.sleep(0.3)
        return real(self, chain, logits)  # type: ignore[arg-type]

    monkeypatch.setattr(_grammar.Grammar, "check", lambda self, token: False)
    monkeypatch.setattr(_grammar.Grammar, "resample", slow)
    batch = llm.batch()
    batch.add(
        "json",
        ask("A film as JSON.", max_tokens=12, constraint=Constraint(json.dumps(SHAPE))),
        TextCollector(),
    )
    batch.add("plain", ask("Tell me a story about a fox.", max_tokens=20, temperature=0), TextCollector())
    ended: dict[str, object] = {}
    json_kept_when_plain_ended = None
    while len(ended) < 2:
        ended.update(batch.step())
        if "plain" in ended and json_kept_when_plain_ended is None:
            slot = next((s for s in batch._slots if s.seq is not None and s.seq.key == "json"), None)
            json_kept_when_plain_ended = (
                slot.seq.produced if slot is not None and slot.seq is not None else 99
            )
    assert isinstance(ended["plain"], LLMOutcome) and ended["plain"].completion_tokens == 20
    assert isinstance(ended["json"], LLMOutcome)
    assert json_kept_when_plain_ended is not None and json_kept_when_plain_ended <= 6
    assert batch.active == 0


FEW_SHOT = (
    "Q: weather in Rome?\nA: <tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>\n'
    "Q: weather in Oslo?\nA: <tool_call>\n"
    '{"name": "get_weather", "arguments": {"town": "Oslo"}}\n</tool_call>\n'
    "Q: weather in Paris?\nA:"
)


def test_a_lazy_grammar_leaves_prose_alone_and_holds_a_call_it_sees_start(llm: LlamaCppLLM) -> None:
    params = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
    }
    tools = (Tool("get_weather", "Weather of a city", json.dumps(params)),)
    lazy = Constraint(call_schema(tools), "tool_calls", parallel=False, lazy=True)
    prose = ask("Tell me a story about a fox.", max_tokens=40, temperature=0)
    got = run_batch(
        llm,
        {
            "prose": ask("Tell me a story about a fox.", max_tokens=40, temperature=0, constraint=lazy),
            "plain": prose,
            # The model copies the form from the examples (one of which breaks the schema); the
            # grammar, triggered by the opening tag, holds it to the schema and to one call.
            "call": LLMRequest(prompt=FEW_SHOT, max_tokens=80, temperature=0, constraint=lazy),
        },
    )
    assert got["prose"][1] == got["plain"][1]
    outcome, text = got["call"]
    parsed = parse_calls(text, ["get_weather"])
    assert outcome.finish_reason == "stop" and parsed is not None, text
    [(name, arguments)] = parsed.calls
    jsonschema.validate(json.loads(arguments), params)


def test_a_grammar_over_its_work_bound_fails_its_sequence_alone(
    llm: LlamaCppLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grammar work per answer is bounded (MAX_GRAMMAR_S): past it the sequence fails with
    schema_too_costly and the others decode on. The bound is made tiny here, so the test
    needs no costly schema and no timing."""
    from ris.backends import _grammar

    monkeypatch.setattr(_grammar, "MAX_GRAMMAR_S", 0.0)
    batch = llm.batch()
    outs = {"plain": TextCollector(), "json": TextCollector()}
    batch.add("plain", ask("Tell me a story about a fox.", max_tokens=10, temperature=0), outs["plain"])
    batch.add(
        "json", ask("A film as JSON.", max_tokens=50, constraint=Constraint(json.dumps(SHAPE))), outs["json"]
    )
    ended: dict[str, object] = {}
    while len(ended) < 2:
        ended.update(batch.step())
    failed = ended["json"]
    assert isinstance(failed, BackendError) and failed.code == "schema_too_costly", failed
    assert "0 s of work for one answer" in failed.message
    assert isinstance(ended["plain"], LLMOutcome) and ended["plain"].completion_tokens == 10


def test_the_same_schema_is_converted_once() -> None:
    from ris.backends._grammar import gbnf

    schema = Constraint(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}}))
    first = gbnf(schema)
    assert gbnf(Constraint(schema.schema)) is first  # an equal constraint: the cached grammar


def test_tool_schemas_with_refs_become_grammars() -> None:
    from ris.backends._grammar import gbnf

    inner = {"type": "object", "properties": {"a": {"$ref": "#/properties/b"}, "b": {"type": "integer"}}}
    city = {"type": "object", "properties": {"name": {"type": "string"}}}
    nested = {"type": "object", "properties": {"c": {"$ref": "#/$defs/City"}}, "$defs": {"City": city}}
    tools = (Tool("f", "", json.dumps(inner)), Tool("g", "", json.dumps(nested)))
    for one in (tools[:1], tools):
        text, root = gbnf(Constraint(call_schema(one), "tool_calls"))
        assert root == "tool-calls" and "f-args ::=" in text  # the converter names f__args so


def test_a_grammar_nested_past_what_llama_cpp_parses_is_refused_whatever_let_it_by(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backstop behind the schema checks: "^a{0, 30000}$" (a count with a space) passed a
    check that read the pattern with Python's `re`, and llama.cpp's parser overflowed the
    worker's stack on the 30,000 levels the converter wrote."""
    import ris.backends._grammar as grammar

    monkeypatch.setattr(grammar, "pattern_problems", lambda schema: [])  # as if a check missed it
    deep = Constraint(json.dumps({"type": "string", "pattern": "^a{0,3000}$"}))
    with pytest.raises(BackendError) as e:
        grammar.gbnf(deep)
    assert e.value.code == "invalid_request" and "nests 3000 levels deep (at most 2000)" in e.value.message
    held = Constraint(json.dumps({"type": "string", "maxLength": 2000}))  # the deepest the checks let by
    assert grammar._nesting(grammar.gbnf(held)[0]) == grammar.MAX_GRAMMAR_NESTING
