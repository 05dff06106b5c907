"""An answer the model's context cut short of the max_tokens asked is said: a 126-token prompt
in a 128-token context answered 1 token of 16, finish "length", warnings [], and nothing said
why (OpenAI refuses such a request; here it is served and said)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from ris import messages as m
from ris.lanes import Lane
from ris.lanes.llm import LLMOutcome, TextDelta

from .fakes import run, settle
from .test_audio_streams import posted


async def _answered(
    tmp: Path, path: str, body: dict[str, object], outcome: LLMOutcome
) -> tuple[int, Any, dict[str, str]]:
    async with posted(tmp, path, body) as (request, workers):
        llm = workers[Lane.LLM]
        task = llm.runs[0].task_id
        llm.deliver(m.TaskOutput(task, TextDelta("a")))
        llm.deliver(m.TaskDone(task, outcome))
        await settle()
        r = await asyncio.wait_for(request, 5)
    return r.status_code, r.json(), dict(r.headers)


@run
async def test_an_answer_the_context_cut_short_says_so(tmp_path: Path) -> None:
    body = {"prompt": "word " * 120, "max_tokens": 16}
    status, answer, _ = await _answered(
        tmp_path / "a", "/api/llm/generate", body, LLMOutcome("length", 126, 1)
    )
    assert status == 200 and answer["finish_reason"] == "length"
    (note,) = answer["warnings"]
    assert note.startswith("max_tokens: the answer stopped after 1 of the 16 tokens asked")
    # An answer that used all it was asked is no news.
    body = {"prompt": "hi", "max_tokens": 1}
    _, answer, _ = await _answered(tmp_path / "b", "/api/llm/generate", body, LLMOutcome("length", 3, 1))
    assert answer["warnings"] == []
    # None asked: its default is no promise the context broke.
    body = {"prompt": "word " * 120}
    _, answer, _ = await _answered(tmp_path / "c", "/api/llm/generate", body, LLMOutcome("length", 126, 2))
    assert answer["warnings"] == []


@run
async def test_on_v1_it_is_said_in_x_warnings_where_max_tokens_was_asked(tmp_path: Path) -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    status, _, headers = await _answered(
        tmp_path / "a", "/v1/chat/completions", chat, LLMOutcome("length", 126, 1)
    )
    assert status == 200 and "after 1 of the 16 tokens asked" in json.loads(headers["x-warnings"])[0]
    # /v1/completions with none asked: its default of 16 is no promise the context broke.
    plain: dict[str, object] = {"model": "m", "prompt": "word " * 120}
    _, _, headers = await _answered(tmp_path / "c", "/v1/completions", plain, LLMOutcome("length", 126, 1))
    assert "x-warnings" not in headers
    plain["max_tokens"] = 16
    _, _, headers = await _answered(tmp_path / "d", "/v1/completions", plain, LLMOutcome("length", 126, 1))
    assert "after 1 of the 16 tokens asked" in json.loads(headers["x-warnings"])[0]
    # None asked: the context's end is where such an answer ends.
    del chat["max_tokens"]
    _, _, headers = await _answered(
        tmp_path / "b", "/v1/chat/completions", chat, LLMOutcome("length", 126, 1)
    )
    assert "x-warnings" not in headers
