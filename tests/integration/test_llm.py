"""The LLM lane end to end: real server, real SmolLM2 on llama.cpp, through the SDK."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from ris import Client, RISError

from .server import Server

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What color is the sky on a clear day?"}]


def english_words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+", text)


def test_answers_a_question_in_coherent_english(client: Client) -> None:
    gen = client.generate(messages=QUESTION, temperature=0, max_tokens=48, seed=1)
    assert "blue" in gen.text.lower(), gen.text
    words = english_words(gen.text)
    assert len(words) >= 3
    # Coherent English: mostly real words, not byte soup.
    assert sum(len(w) for w in words) / max(1, len(gen.text.replace(" ", ""))) > 0.7
    assert gen.finish_reason in ("stop", "length")
    assert gen.usage["prompt_tokens"] > 5
    assert 0 < gen.usage["completion_tokens"] <= 48
    assert gen.timings["total_ms"] is not None and gen.timings["total_ms"] > 0


def test_stream_joins_into_the_same_text(client: Client) -> None:
    whole = client.generate(messages=QUESTION, temperature=0, max_tokens=32, seed=3)
    pieces = list(client.generate_stream(messages=QUESTION, temperature=0, max_tokens=32, seed=3))
    assert len(pieces) > 1
    assert "".join(pieces) == whole.text
    # The events: who answered, then the pieces, then how and why it ended, as generate() says.
    events = list(client.generate_events(messages=QUESTION, temperature=0, max_tokens=32, seed=3))
    assert events[0][0] == "start" and len(events[0][1]["task_id"]) == 32
    assert "".join(data["text"] for name, data in events if name == "token") == whole.text
    name, done = events[-1]
    assert name == "done" and done["task_id"] == events[0][1]["task_id"] and done["text"] == whole.text
    assert (done["finish_reason"], done["usage"]) == (whole.finish_reason, whole.usage)


def test_plain_prompt_and_max_tokens(client: Client) -> None:
    gen = client.generate("Once upon a time", max_tokens=7, ignore_eos=True, temperature=0.8, seed=7)
    assert gen.finish_reason == "length"
    assert gen.usage["completion_tokens"] == 7


def test_stop_string_ends_generation(client: Client) -> None:
    gen = client.generate("Count: 1, 2, 3, 4, 5,", temperature=0, max_tokens=40, stop=[" 8"])
    assert gen.finish_reason == "stop" or gen.usage["completion_tokens"] == 40
    assert " 8" not in gen.text


def test_same_seed_same_text(client: Client) -> None:
    a = client.generate("The weather today", temperature=0.9, max_tokens=16, seed=42)
    b = client.generate("The weather today", temperature=0.9, max_tokens=16, seed=42)
    assert a.text == b.text


def test_unknown_model_is_a_clear_error(client: Client) -> None:
    with pytest.raises(RISError) as exc:
        client.generate("hi", model="qwen2.5")
    assert exc.value.status == 404 and exc.value.code == "unknown_model"
    assert "smollm2" in exc.value.message


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"prompt": "x", "temperature": 5}, 422, "temperature"),
        ({"prompt": "x", "max_tokens": 0}, 422, "max_tokens"),
        ({}, 422, "exactly one of"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, 422, "exactly one of"),
        ({"prompt": "x", "bogus": 1}, 422, "bogus"),
        ({"prompt": "x" * 40_000}, 413, "limit"),
        ({"prompt": "x", "max_tokens": 100_000}, 422, "max_tokens"),
    ],
)
def test_bad_input_gets_a_code_and_a_message(
    server: Server, body: dict[str, object], status: int, needle: str
) -> None:
    r = httpx.post(f"{server.url}/api/llm/generate", json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] and needle in err["message"]


def test_malformed_json(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/api/llm/generate",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


def test_async_client_streams(server: Server) -> None:
    from ris import AsyncClient

    async def main() -> tuple[list[str], int]:
        async with AsyncClient(server.url, max_retries=0) as c:
            pieces = [p async for p in c.generate_stream("Hello", max_tokens=5, ignore_eos=True)]
            gen = await c.generate("Hello", max_tokens=3, ignore_eos=True)
        return pieces, gen.usage["completion_tokens"]

    pieces, produced = asyncio.run(main())
    assert len(pieces) >= 1 and produced == 3


def test_second_model_loads_on_first_use(client: Client) -> None:
    pytest.importorskip("transformers", reason="the dummy model needs torch and transformers")
    gen = client.generate("hi", model="tiny-dummy", max_tokens=6, ignore_eos=True)
    assert gen.model == "tiny-dummy" and gen.usage["completion_tokens"] == 6
    # The default model is still loaded and answering.
    assert client.generate("hi", max_tokens=2, ignore_eos=True).model == "smollm2"


def test_a_chat_ending_in_the_assistants_words_is_continued_not_begun_again(client: Client) -> None:
    """A last assistant message was answered with a new turn ("1, 2, 3, 4, 5, 6, 7,"): Ollama
    and llama-server continue it (Open WebUI's "continue response", an answer begun for the
    model), the answer holding only what follows."""
    begun = [{"role": "user", "content": "Count to ten."}, {"role": "assistant", "content": "1, 2, 3, 4,"}]
    gen = client.generate(messages=begun, temperature=0, max_tokens=8, seed=1)
    assert gen.text.lstrip().startswith("5"), gen.text
