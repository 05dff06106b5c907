"""A defect in a route still answers with an error body and a code, in the request's dialect,
where Starlette alone answers a plain-text "Internal Server Error"."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from ris.api.errors import HANDLERS


def _app() -> FastAPI:
    app = FastAPI()
    for exc, handler in HANDLERS.items():
        app.add_exception_handler(exc, handler)

    def broken() -> None:
        raise RecursionError("maximum recursion depth exceeded")

    for path in ("/api/llm/generate", "/v1/chat/completions", "/api/chat"):
        app.add_api_route(path, broken, methods=["POST"])
    return app


def test_a_defect_answers_500_internal_error_in_each_dialect() -> None:
    client = TestClient(_app(), raise_server_exceptions=False)
    seed = client.post("/api/llm/generate")
    assert seed.status_code == 500 and seed.json()["error"]["code"] == "internal_error", seed.text
    openai = client.post("/v1/chat/completions")
    assert openai.status_code == 500 and openai.json()["error"]["code"] == "internal_error", openai.text
    assert openai.json()["error"]["type"], openai.text  # OpenAI's shape
    ollama = client.post("/api/chat")
    assert ollama.status_code == 500 and "the server failed" in ollama.json()["error"], ollama.text
