"""The request checks both APIs share (ris.api.limits, ris.api.llm_request): one limit per field
whichever dialect carries it, text that is not Unicode refused by the schema rather than by a
worker, and max_tokens refused beyond the model's context. No server: schemas and functions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from ris.api import ollama_schemas, openai_schemas, schemas
from ris.api.app import create_app
from ris.api.errors import APIError
from ris.api.limits import MAX_MESSAGES, SEED_MAX, RequestBody
from ris.api.llm_request import OPENAI, SEED, llm_request, seed_llm_request
from ris.api.openai_schemas import ChatCompletionRequest, CompletionRequest, SpeechRequest
from ris.api.schemas import LLMGenerateRequest, SpeakRequest, TaskSubmit, TTSSynthesizeRequest
from ris.config import ServerConfig
from ris.config.defaults import default_config

TURN = {"role": "user", "content": "hi"}


def native(**fields: Any) -> dict[str, Any]:
    return {"messages": [TURN], **fields}


def openai(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [TURN], **fields}


def refused(model: type[BaseModel], body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as exc:
        model.model_validate(body)
    return str(exc.value)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"messages": [TURN] * (MAX_MESSAGES + 1)}, f"at most {MAX_MESSAGES} items"),
        ({"temperature": 2.5}, "less than or equal to 2"),
        ({"messages": [{"role": "user", "content": "x" * 200_001}]}, "at most 200000 characters"),
    ],
)
def test_both_dialects_refuse_the_same_values(fields: dict[str, Any], needle: str) -> None:
    assert needle in refused(LLMGenerateRequest, native(**fields))
    assert needle in refused(ChatCompletionRequest, openai(**fields))


def test_seeds_are_the_native_apis_range_and_any_64_bit_integer_on_openais() -> None:
    # The native API says what a seed is here; OpenAI's clients send any int64 (the route takes
    # it modulo 2**32: test_openai_api).
    assert "greater than or equal to 0" in refused(LLMGenerateRequest, native(seed=-1))
    assert f"less than or equal to {SEED_MAX}" in refused(LLMGenerateRequest, native(seed=SEED_MAX + 1))
    for seed in (-1, SEED_MAX + 1, -(2**63)):
        ChatCompletionRequest.model_validate(openai(seed=seed))


def test_both_dialects_take_the_edges_of_the_ranges() -> None:
    for fields in ({"seed": 0}, {"seed": SEED_MAX}, {"messages": [TURN] * MAX_MESSAGES}):
        LLMGenerateRequest.model_validate(native(**fields))
        ChatCompletionRequest.model_validate(openai(**fields))


def test_every_request_body_checks_its_text() -> None:
    """A new route cannot forget the Unicode check: each documented body derives from
    RequestBody, the class that does it."""
    spec = create_app(default_config()).openapi()
    names = {
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        for ops in spec["paths"].values()
        for op in ops.values()
        if "requestBody" in op
    }
    assert len(names) >= 9
    for name in names:
        model = (
            getattr(schemas, name, None)
            or getattr(openai_schemas, name, None)
            or getattr(ollama_schemas, name)
        )
        assert issubclass(model, RequestBody), name


@pytest.mark.parametrize(
    ("model", "body", "where"),
    [
        (LLMGenerateRequest, {"prompt": "a\ud800b"}, "prompt has"),
        (LLMGenerateRequest, {"prompt": "x", "stop": ["ok", "\udfff"]}, "stop[1] has"),
        (LLMGenerateRequest, native(messages=[TURN, {"role": "user", "content": "\ud800"}]), "messages[1]"),
        (SpeakRequest, {"prompt": "x", "voice": "\ud800"}, "voice has"),
        (TTSSynthesizeRequest, {"text": "é\ud800"}, "at character 1"),
        (TaskSubmit, {"lane": "echo", "request": {"text": ["\ud800"]}}, "request.text[0]"),
        (ChatCompletionRequest, openai(messages=[{"role": "user", "content": "\ud800"}]), "content has"),
        (
            ChatCompletionRequest,
            openai(messages=[{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]),
            "content[0].text",
        ),
        (ChatCompletionRequest, openai(stop="\ud800"), "stop has"),
        (ChatCompletionRequest, openai(user="a\ud800"), "user has"),  # accepted and ignored, still text
        (ChatCompletionRequest, openai(metadata={"k": "\udc00"}), "metadata.k has"),
        (CompletionRequest, {"model": "m", "prompt": "\ud800"}, "prompt has"),
        (SpeechRequest, {"model": "tts-1", "voice": "alloy", "input": "\ud800"}, "input has"),
    ],
)
def test_lone_surrogates_are_refused_naming_the_field(
    model: type[BaseModel], body: dict[str, Any], where: str
) -> None:
    message = refused(model, body)
    assert "lone surrogate" in message and where in message


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (schemas.ImageGenerateRequest, '{"prompt": "x", "guidance": NaN}'),
        (LLMGenerateRequest, '{"prompt": "x", "temperature": Infinity}'),
        (
            ChatCompletionRequest,
            '{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": -Infinity}',
        ),
        (ollama_schemas.OllamaGenerateRequest, '{"model": "m", "options": {"temperature": NaN}}'),
    ],
)
def test_nan_and_infinity_are_not_numbers(model: type[BaseModel], body: str) -> None:
    """pydantic's JSON parser reads NaN and Infinity (JSON has neither): "guidance": NaN was
    refused as "less than or equal to 30"."""
    with pytest.raises(ValidationError) as e:
        model.model_validate_json(body)
    assert [err["msg"] for err in e.value.errors()] == ["Input should be a finite number"]


def test_a_surrogate_pair_in_json_is_text() -> None:
    body = '{"prompt": "\\ud83d\\ude00"}'  # JSON's escape of U+1F600, as a pair
    assert LLMGenerateRequest.model_validate_json(body).prompt == "\U0001f600"
    assert LLMGenerateRequest.model_validate(json.loads(body)).prompt == "\U0001f600"


def generation(dialect: Any, max_tokens: int, context_tokens: int | None) -> Any:
    return llm_request(
        ServerConfig(max_new_tokens=4096),
        dialect,
        prompt="x",
        messages=None,
        max_tokens=max_tokens,
        temperature=0,
        top_p=1,
        context_tokens=context_tokens,
    )


@pytest.mark.parametrize(("dialect", "status"), [(SEED, 422), (OPENAI, 400)])
def test_max_tokens_over_the_models_context_is_refused(dialect: Any, status: int) -> None:
    with pytest.raises(APIError) as exc:
        generation(dialect, max_tokens=3000, context_tokens=2048)
    assert exc.value.status == status and exc.value.param == "max_tokens"
    assert "context of 2048 tokens" in exc.value.message
    assert generation(dialect, max_tokens=2048, context_tokens=2048).max_tokens == 2048
    assert generation(dialect, max_tokens=3000, context_tokens=None).max_tokens == 3000  # not loaded yet


def test_the_seed_apis_default_max_tokens_is_a_bound_under_the_servers_limits() -> None:
    """A server with max_new_tokens 100 (or a model of 128 tokens of context) refused every
    /api/llm/generate and /api/chat/speak that sent no max_tokens: "max_tokens 256 is over the
    limit of 100". The default is a bound; a max_tokens the client sent is still checked."""
    small = ServerConfig(max_new_tokens=100)
    unsent = LLMGenerateRequest.model_validate({"prompt": "hi"})
    req = seed_llm_request(small, unsent, context_tokens=None)
    assert req.max_tokens == 100 and req.max_tokens_at_most
    assert seed_llm_request(ServerConfig(), unsent, context_tokens=128).max_tokens == 128
    assert seed_llm_request(ServerConfig(), unsent, context_tokens=None).max_tokens == 256
    sent = LLMGenerateRequest.model_validate({"prompt": "hi", "max_tokens": 256})
    with pytest.raises(APIError, match="max_tokens 256 is over the limit of 100"):
        seed_llm_request(small, sent, context_tokens=None)
    assert not seed_llm_request(ServerConfig(), sent, context_tokens=None).max_tokens_at_most
