"""`prompt` on the seed API is the user's message to a chat model; `raw` keeps plain
completion; `system` goes with a chat prompt only. No server: the request builder and the
request's own formatting rules."""

from __future__ import annotations

import pytest

from ris.api.errors import APIError
from ris.api.llm_request import OPENAI, llm_request, seed_llm_request
from ris.api.schemas import LLMGenerateRequest
from ris.config import ServerConfig
from ris.lanes.llm import LLMRequest

LIMITS = ServerConfig()


def seed(**body: object) -> LLMRequest:
    return seed_llm_request(LIMITS, LLMGenerateRequest.model_validate(body), None)


def test_a_prompt_is_the_users_message() -> None:
    req = seed(prompt="Hi")
    assert req.prompt_is_message
    assert req.chat_turns() == (("user", "Hi"),)


def test_system_comes_first() -> None:
    req = seed(prompt="Hi", system="Be brief.")
    assert req.chat_turns() == (("system", "Be brief."), ("user", "Hi"))
    # A model without a chat template completes the text as written, the system text first.
    assert req.plain_prompt() == "Be brief.\n\nHi"


def test_raw_is_plain_completion() -> None:
    req = seed(prompt="Once upon a time", raw=True)
    assert req.chat_turns() is None and req.plain_prompt() == "Once upon a time"


def test_messages_are_unchanged() -> None:
    req = seed(messages=[{"role": "user", "content": "Hi"}])
    assert req.chat_turns() == (("user", "Hi"),)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"prompt": "Hi", "raw": True, "system": "Be brief."}, "raw: true"),
        ({"messages": [{"role": "user", "content": "Hi"}], "system": "Be brief."}, "first message"),
    ],
)
def test_system_without_a_chat_prompt_is_refused(body: dict[str, object], needle: str) -> None:
    with pytest.raises(APIError) as e:
        seed(**body)
    assert e.value.status == 422 and e.value.code == "invalid_request" and needle in e.value.message


def test_system_counts_toward_the_prompt_limit() -> None:
    limits = ServerConfig(max_prompt_chars=10)
    body = LLMGenerateRequest(prompt="12345", system="123456")
    with pytest.raises(APIError) as e:
        seed_llm_request(limits, body, None)
    assert e.value.code == "prompt_too_long"


def test_openai_completions_stay_raw() -> None:
    req = llm_request(LIMITS, OPENAI, prompt="Once", messages=None, max_tokens=4, temperature=0.0, top_p=1.0)
    assert not req.prompt_is_message and req.chat_turns() is None
