"""One validation for both APIs, through the real server: the same limits on /api and /v1, each
refusal in its API's shape (422 `invalid_request` on /api, OpenAI's 400 with `param` on /v1)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .server import Server

pytestmark = pytest.mark.slow

TURN = {"role": "user", "content": "hi"}
# The default model's context window (config.json: smollm2, n_ctx 2048), under max_new_tokens.
CONTEXT = 2048


def post_raw(server: Server, path: str, body: str) -> httpx.Response:
    """A body as written: "\\ud800" must reach the server as JSON's escape, which no JSON
    encoder of a Python string would produce."""
    return httpx.post(
        f"{server.url}{path}", content=body.encode(), headers={"content-type": "application/json"}, timeout=60
    )


def assert_refused(r: httpx.Response, path: str, needle: str, param: str | None = None) -> None:
    err = r.json()["error"]
    if path.startswith("/v1/"):
        assert r.status_code == 400, r.text
        assert err["type"] == "invalid_request_error" and needle in err["message"], err
        if param is not None:
            assert err["param"] == param, err
    else:
        assert r.status_code == 422, r.text
        assert err["code"] == "invalid_request" and needle in err["message"], err


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/api/llm/generate", '{"prompt": "\\ud800", "max_tokens": 1}', "prompt"),
        ("/api/llm/generate", '{"prompt": "x", "stop": ["\\udfff"], "max_tokens": 1}', "stop"),
        ("/api/llm/generate", '{"messages": [{"role": "user", "content": "a\\ud800"}]}', "messages"),
        ("/api/chat/speak", '{"prompt": "\\ud800"}', "prompt"),
        ("/api/tts/synthesize", '{"text": "\\ud800"}', "text"),
        ("/v1/completions", '{"model": "smollm2", "prompt": "\\ud800", "max_tokens": 1}', "prompt"),
        (
            "/v1/chat/completions",
            '{"model": "smollm2", "messages": [{"role": "user", "content": "\\ud800"}]}',
            "messages",
        ),
        (
            "/v1/chat/completions",
            '{"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "stop": "\\ud800"}',
            "stop",
        ),
        ("/v1/audio/speech", '{"model": "tts-1", "voice": "alloy", "input": "\\ud800"}', "input"),
    ],
)
def test_lone_surrogates_are_a_clear_client_error(server: Server, path: str, body: str, param: str) -> None:
    assert_refused(post_raw(server, path, body), path, "lone surrogate", param)


def _native(**fields: Any) -> dict[str, Any]:
    return {"messages": [TURN], "max_tokens": 1, **fields}


def _openai(**fields: Any) -> dict[str, Any]:
    return {"model": "smollm2", "messages": [TURN], "max_tokens": 1, **fields}


@pytest.mark.parametrize(
    ("seed", "needle"), [(-1, "greater than or equal to 0"), (2**32, "less than or equal")]
)
def test_a_seed_is_the_native_apis_range_and_any_64_bit_integer_on_openais(
    server: Server, seed: int, needle: str
) -> None:
    r = httpx.post(f"{server.url}/api/llm/generate", json=_native(seed=seed), timeout=60)
    assert_refused(r, "/api/llm/generate", needle, "seed")
    r = httpx.post(f"{server.url}/v1/chat/completions", json=_openai(seed=seed), timeout=60)
    assert r.status_code == 200, r.text  # taken modulo 2**32, as OpenAI's clients may send any


@pytest.mark.parametrize(
    ("fields", "param", "needle"),
    [
        ({"stop": "x" * 5000}, "stop", "1 to 64 characters"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"messages": [TURN] * 5000}, "messages", "at most 1000 items"),
        ({"max_tokens": CONTEXT + 1}, "max_tokens", f"context of {CONTEXT} tokens"),
    ],
)
def test_both_apis_refuse_the_same_values(
    server: Server, fields: dict[str, Any], param: str, needle: str
) -> None:
    for path, body in (
        ("/api/llm/generate", _native(**fields)),
        ("/api/llm/generate", _native(stream=True, **fields)),
        ("/v1/chat/completions", _openai(**fields)),
        ("/v1/chat/completions", _openai(stream=True, **fields)),
    ):
        r = httpx.post(f"{server.url}{path}", json=body, timeout=60)
        assert_refused(r, path, needle, param)
    r = httpx.post(
        f"{server.url}/v1/completions", json={"model": "smollm2", "prompt": "x", **fields}, timeout=60
    )
    if param != "messages":
        assert_refused(r, "/v1/completions", needle, param)


def test_max_tokens_within_the_context_and_edge_seeds_are_served(server: Server) -> None:
    for seed in (0, 2**32 - 1):
        r = httpx.post(f"{server.url}/api/llm/generate", json=_native(seed=seed), timeout=60)
        assert r.status_code == 200, r.text
        r = httpx.post(f"{server.url}/v1/chat/completions", json=_openai(seed=seed), timeout=60)
        assert r.status_code == 200, r.text
    body = {"prompt": "Once upon a time", "max_tokens": CONTEXT, "stream": True}
    with httpx.stream("POST", f"{server.url}/api/llm/generate", json=body, timeout=60) as r:
        assert r.status_code == 200  # accepted; the stream is dropped unread, which cancels it


def _nested(body: str, depth: int) -> str:
    """`body` with its `@` replaced by arrays nested `depth` deep."""
    return body.replace("@", "[" * depth + "]" * depth)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # Past pydantic-core's parser (it stops at 200 levels), and past Python's recursion limit
        # for the parser that reads a body with a lone surrogate: both were a plain-text 500.
        ("/api/llm/generate", _nested('{"prompt": "x", "max_tokens": 1, "format": @}', 3000)),
        ("/v1/chat/completions", _nested('{"model": "smollm2", "messages": [], "response_format": @}', 300)),
        (
            "/v1/chat/completions",
            _nested(
                '{"model": "smollm2", "messages": [{"role": "user", "content": "\\ud800"}], "tools": @}', 300
            ),
        ),
        # Every route that takes a JSON body reads it the same way (these were FastAPI body
        # parameters: a generic 400 "error parsing the body").
        ("/api/tts/synthesize", _nested('{"text": "hi", "voice": @}', 300)),
        ("/api/image/generate", _nested('{"prompt": "x", "seed": @}', 300)),
        ("/api/chat/speak", _nested('{"prompt": "x", "stop": @}', 300)),
        ("/api/tasks", _nested('{"lane": "llm", "request": @}', 300)),
        ("/v1/audio/speech", _nested('{"model": "tts-1", "input": "hi", "voice": @}', 300)),
        ("/v1/images/generations", _nested('{"prompt": "x", "size": @}', 300)),
    ],
)
def test_json_nested_too_deep_is_a_clear_client_error(server: Server, path: str, body: str) -> None:
    assert_refused(post_raw(server, path, body), path, "nested deeper than 200 levels")


def test_a_curl_d_body_is_read_as_json_on_every_json_route(server: Server) -> None:
    """`curl -d '{...}'` sends application/x-www-form-urlencoded: read as JSON when no web page
    sent it (no Origin), as the LLM and Ollama routes always did."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    body = b'{"text": "Hi.", "voice": "en-US"}'
    r = httpx.post(f"{server.url}/api/tts/synthesize", content=body, headers=form, timeout=60)
    assert r.status_code == 200 and r.json()["audio_url"], r.text
    page = form | {"origin": "http://evil.example"}
    r = httpx.post(f"{server.url}/api/tts/synthesize", content=body, headers=page, timeout=60)
    assert r.status_code in (403, 415), r.text  # a page may post a form anywhere: never read


def test_ollama_refuses_deep_json_in_its_shape(server: Server) -> None:
    r = post_raw(server, "/api/chat", _nested('{"model": "smollm2", "messages": [], "format": @}', 3000))
    assert r.status_code == 400, r.text
    assert "nested deeper than 200 levels" in r.json()["error"], r.text


def test_a_schema_at_the_depth_limit_is_answered_not_a_500(server: Server) -> None:
    """The deepest schema the parser lets through meets every walk of it (tools, grammar)."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(98):  # two JSON levels a step, inside the body's own three
        schema = {"type": "object", "properties": {"a": schema}}
    body = _openai(response_format={"type": "json_schema", "json_schema": {"name": "deep", "schema": schema}})
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code in (200, 400), r.text  # answered, or refused with a reason
    if r.status_code == 400:
        assert r.json()["error"]["code"] != "internal_error", r.text
