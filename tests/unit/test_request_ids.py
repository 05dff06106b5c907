"""Every answer carries x-request-id: a task's its task id, one with no task a fresh id; a
defect's 500 logs the same id beside its traceback. Answers with no task had none, so a
user's report of a failure named nothing an operator could look up."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ris.lanes import Lane

from .fakes import client_with_a_defect, run, started_engine


@run
async def test_answers_with_no_task_are_named_and_a_defect_is_found_in_the_log_by_its_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with started_engine(tmp_path) as (eng, workers, _):
        workers[Lane.LLM].ready()
        async with client_with_a_defect(eng) as client:
            with caplog.at_level(logging.ERROR, logger="ris.api.errors"):
                failed = await client.get("/defect")
            answers = [
                await client.get("/no/such/route"),
                await client.post("/api/llm/generate", json={"max_tokens": -1}),
                await client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": []}),
                await client.get("/health"),
            ]
    rid = failed.headers["x-request-id"]
    assert failed.status_code == 500 and rid.startswith("req_")
    assert rid in failed.json()["error"]["message"]
    assert any(rid in r.getMessage() and "GET /defect" in r.getMessage() for r in caplog.records)
    ids = [a.headers["x-request-id"] for a in answers]
    assert all(i.startswith("req_") for i in ids) and len(set(ids + [rid])) == 5, ids
