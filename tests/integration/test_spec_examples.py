"""The product description's API examples, sent verbatim to the service with its default
config: each works, or says exactly what to do. And `prompt` means what its writer means."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ris import Client

from .server import Server

pytestmark = pytest.mark.slow

# The description's three requests, as it writes them.
LLM_EXAMPLE = {"prompt": "你好，请介绍一下自己", "model": "qwen2.5", "temperature": 0.7}
TTS_EXAMPLE = {"text": "这是一段测试文本", "voice": "zh-CN", "speed": 1.0}
IMAGE_EXAMPLE = {
    "prompt": "a cat sitting on a windowsill at sunset",
    "width": 512,
    "height": 512,
    "use_turbo": True,
    "steps": 4,
}
SKY = "What colour is the sky on a clear day? Answer in one word."


def post(server: Server, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=120)


def test_llm_example_names_the_command_that_gets_qwen(server: Server) -> None:
    r = post(server, "/api/llm/generate", LLM_EXAMPLE)
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert error["code"] == "unknown_model"
    assert "ris pull qwen2.5" in error["message"]
    assert "smollm2" in error["message"]  # and what is configured


def test_openai_chat_names_the_command_too(server: Server) -> None:
    body = {"model": "qwen2.5", "messages": [{"role": "user", "content": "你好"}]}
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 404, r.text
    assert "ris pull qwen2.5" in r.json()["error"]["message"]


def test_an_unknown_name_gets_no_pull_hint(server: Server) -> None:
    r = post(server, "/api/llm/generate", {"prompt": "hi", "model": "gpt-9"})
    assert r.status_code == 404
    assert "ris pull" not in r.json()["error"]["message"]


def test_chinese_prompt_to_the_english_default_is_answered_and_flagged(server: Server) -> None:
    body = {key: value for key, value in LLM_EXAMPLE.items() if key != "model"} | {"max_tokens": 16}
    r = post(server, "/api/llm/generate", body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["usage"]["completion_tokens"] > 0
    [warning] = answer["warnings"]
    assert "'zh'" in warning and "smollm2" in warning and "ris pull qwen2.5" in warning


def test_prompt_is_the_users_message_to_a_chat_model(server: Server) -> None:
    r = post(server, "/api/llm/generate", {"prompt": SKY, "max_tokens": 24, "temperature": 0})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert "blue" in answer["text"].lower(), answer["text"]
    assert answer["warnings"] == []


def test_raw_keeps_plain_completion_and_system_replaces_the_default(server: Server) -> None:
    def prompt_tokens(**fields: Any) -> int:
        r = post(server, "/api/llm/generate", {"prompt": SKY, "max_tokens": 1, "temperature": 0, **fields})
        assert r.status_code == 200, r.text
        return int(r.json()["usage"]["prompt_tokens"])

    raw, chat = prompt_tokens(raw=True), prompt_tokens()
    # SmolLM2's template adds its own system prompt and the turn markers around the prompt.
    assert raw < chat
    assert prompt_tokens(system="Be brief.") not in (raw, chat)
    # /v1/completions is raw completion, token for token.
    r = post(server, "/v1/completions", {"model": "smollm2", "prompt": SKY, "max_tokens": 1})
    assert r.json()["usage"]["prompt_tokens"] == raw


def test_system_with_a_raw_prompt_is_refused(server: Server) -> None:
    r = post(server, "/api/llm/generate", {"prompt": SKY, "raw": True, "system": "Be brief."})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_request"
    assert "system" in r.json()["error"]["message"]


def test_tts_example_speaks(server: Server) -> None:
    r = post(server, "/api/tts/synthesize", TTS_EXAMPLE)
    assert r.status_code == 200, r.text
    speech = r.json()
    assert speech["duration_s"] > 0.5
    audio = httpx.get(f"{server.url}{speech['audio_url']}", timeout=30)
    assert audio.content[:4] == b"RIFF"


def test_image_example_without_a_turbo_model_runs_with_turbo_settings(server: Server, client: Client) -> None:
    r = post(server, "/api/image/generate", IMAGE_EXAMPLE)
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["model"] == "tiny-sd"
    [warning] = accepted["warnings"]
    assert "use_turbo" in warning and "4 steps" in warning and "ris pull sd-turbo" in warning
    final = client.wait(accepted["task_id"], timeout=300)
    assert final["status"] == "succeeded", final
    assert final["total_steps"] == 4
    png = httpx.get(f"{server.url}/api/image/result/{accepted['task_id']}", timeout=30)
    assert png.headers["content-type"] == "image/png"
