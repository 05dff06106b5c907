"""/v1's text routes through the real app over fake workers: how a request reaches the lane
(seeds and top_p from OpenAI's ranges), the field a refusal names, a stream's failure typed
as the same failure without streaming, and /v1/completions' body read as chat's is."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from ris import messages as m
from ris.api.app import create_app
from ris.api.limits import MIN_TOP_P, SEED_MAX
from ris.lanes import Lane
from ris.lanes.llm import LLMRequest, TextDelta
from ris.runtime.engine import Engine

from .fakes import run, settle, started_engine

ASK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def post(eng: Engine, path: str, body: Any = None, content: bytes | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(eng.config, eng))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        if content is not None:
            return await client.post(path, content=content)
        return await client.post(path, json=body)


@run
async def test_openais_seed_and_top_p_ranges_reach_the_lane_in_its_own(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, _):
        llm = workers[Lane.LLM]
        llm.ready(slots=2)
        asked = [
            asyncio.create_task(post(eng, "/v1/chat/completions", {**ASK, "seed": seed, "top_p": 0}))
            for seed in (-1, 2**40)
        ]
        await settle()
        requests = [r.request for r in llm.runs]
        assert [(r.seed, r.top_p) for r in requests if isinstance(r, LLMRequest)] == [
            (SEED_MAX, MIN_TOP_P),  # -1 modulo 2**32
            (2**40 % (SEED_MAX + 1), MIN_TOP_P),
        ]
        for task in asked:
            task.cancel()


@run
async def test_a_refusal_names_the_field_the_client_sent(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, _):
        workers[Lane.LLM].ready()
        r = await post(eng, "/v1/chat/completions", {**ASK, "max_completion_tokens": 10**6})
        error = r.json()["error"]
        assert r.status_code == 400 and error["param"] == "max_completion_tokens"
        assert error["message"].startswith("max_completion_tokens 1000000 is over")


@run
async def test_a_validators_words_come_without_the_librarys_prefix(tmp_path: Path) -> None:
    """ "messages[0]: Value error, a message of role 'user' needs content": the prefix is
    pydantic's, and says nothing."""
    async with started_engine(tmp_path) as (eng, workers, _):
        workers[Lane.LLM].ready()
        r = await post(eng, "/v1/chat/completions", {"model": "m", "messages": [{"role": "user"}]})
        message = r.json()["error"]["message"]
        assert r.status_code == 400 and message.startswith("messages[0]: a message of role 'user'"), message


@run
async def test_a_stream_refused_before_its_first_token_is_an_error_status_not_a_200(tmp_path: Path) -> None:
    too_long = "the prompt is 5031 tokens; this model's context is 2048"
    for path in ("/v1/chat/completions", "/v1/completions"):
        body = {**ASK, "stream": True} if "chat" in path else {"model": "m", "prompt": "x", "stream": True}
        async with started_engine(tmp_path / path.rsplit("/", 1)[1]) as (eng, workers, _):
            llm = workers[Lane.LLM]
            llm.ready()
            request = asyncio.create_task(post(eng, path, body))
            await settle()
            llm.deliver(m.TaskError(llm.runs[0].task_id, "context_length_exceeded", too_long))
            r = await asyncio.wait_for(request, 5)
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "context_length_exceeded"


@run
async def test_a_configured_model_whose_file_is_gone_is_a_404_as_an_unknown_one(tmp_path: Path) -> None:
    """The worker finds a model loaded on first use missing from the disk: that answered 500
    (which the OpenAI SDK retries twice) under the code of a 404."""
    for path in ("/v1/chat/completions", "/api/llm/generate"):
        body = ASK if path.startswith("/v1") else {"prompt": "x"}
        async with started_engine(tmp_path / path.rsplit("/", 1)[1]) as (eng, workers, _):
            llm = workers[Lane.LLM]
            llm.ready()
            request = asyncio.create_task(post(eng, path, body))
            await settle()
            gone = "model source '/nope/ghost.gguf': '/nope/ghost.gguf' does not exist"
            llm.deliver(m.TaskError(llm.runs[0].task_id, "model_not_found", gone))
            r = await asyncio.wait_for(request, 5)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["code"] == "model_not_found"


@run
async def test_a_streamed_requests_later_failure_is_typed_as_without_streaming(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, _):
        llm = workers[Lane.LLM]
        llm.ready()
        request = asyncio.create_task(post(eng, "/v1/chat/completions", {**ASK, "stream": True}))
        await settle()
        task_id = llm.runs[0].task_id
        llm.deliver(m.TaskOutput(task_id, TextDelta("Hel")))
        llm.deliver(m.TaskError(task_id, "invalid_request", "a refusal after the first token"))
        r = await asyncio.wait_for(request, 5)
    assert r.status_code == 200
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[1]["choices"][0]["delta"] == {"content": "Hel"}
    error = events[-1]["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request"
    assert "param" in error


@run
async def test_completions_read_their_body_as_chat_does(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, _):
        workers[Lane.LLM].ready()
        bad = b'{"model": "m", "prompt": '
        chat_r = await post(eng, "/v1/chat/completions", content=bad)
        completion_r = await post(eng, "/v1/completions", content=bad)
        assert completion_r.status_code == chat_r.status_code == 400
        assert completion_r.json()["error"]["message"] == chat_r.json()["error"]["message"]


@run
async def test_a_message_without_content_and_calls_not_served_are_refused_in_the_clients_words(
    tmp_path: Path,
) -> None:
    # Every call bounded: one accepted by mistake waits on the fake worker for ever.
    async with started_engine(tmp_path) as (eng, workers, _):
        workers[Lane.LLM].ready()
        # Content is required (an assistant turn may carry tool_calls instead), as on OpenAI:
        # an empty turn answered as one was a silent drop.
        for message in ({"role": "user"}, {"role": "user", "content": None}, {"role": "user", "content": []}):
            r = await asyncio.wait_for(post(eng, "/v1/chat/completions", {**ASK, "messages": [message]}), 5)
            error = r.json()["error"]
            assert r.status_code == 400 and error["param"] == "messages[0]", (message, error)
            assert "content" in error["message"]
        # A value of the wrong type is named by its field as the client wrote it, not by the
        # validator's union members ("constrained-str", "list[function-after[...]]").
        wrong = {**ASK, "messages": [{"role": "user", "content": 123}]}
        r = await asyncio.wait_for(post(eng, "/v1/chat/completions", wrong), 5)
        error = r.json()["error"]
        assert error["param"] == "messages[0].content", error
        assert "[" not in error["message"].replace("messages[0]", ""), error["message"]
        # Values of the wrong JSON type are refused, as OpenAI refuses them, not read as the
        # right one ("yes" as true, "5" or true as 5).
        for field, value in (("stream", "yes"), ("stream", 1), ("max_tokens", "5"), ("max_tokens", True)):
            r = await asyncio.wait_for(post(eng, "/v1/chat/completions", {**ASK, field: value}), 5)
            assert r.status_code == 400 and r.json()["error"]["param"] == field, (field, value, r.text)
        assert not workers[Lane.LLM].runs
        # Calls of the openai client this server does not serve say so, not a bare 404.
        for path, call in (("/v1/embeddings", "embeddings.create"), ("/v1/responses", "responses.create")):
            r = await asyncio.wait_for(post(eng, path, {"model": "m", "input": "x"}), 5)
            error = r.json()["error"]
            assert r.status_code == 400 and error["code"] == "unsupported_endpoint", error
            assert call in error["message"] and "chat.completions.create" in error["message"]
        # Whole families too (files.list, batches.list ... were a bare 404), any method.
        transport = httpx.ASGITransport(app=create_app(eng.config, eng))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            for method, path in (
                ("GET", "/v1/files"),
                ("GET", "/v1/batches"),
                ("GET", "/v1/fine_tuning/jobs"),
                ("POST", "/v1/vector_stores/vs_1/files"),
                ("DELETE", "/v1/files/file-abc"),
            ):
                r = await client.request(method, path)
                error = r.json()["error"]
                assert r.status_code == 400 and error["code"] == "unsupported_endpoint", (path, error)
            assert (await client.get("/v1/filesx")).status_code == 404  # not a client's call


@run
async def test_a_request_whose_worker_died_under_it_is_not_sent_again_by_openais_sdk(tmp_path: Path) -> None:
    """The 503 said Retry-After: 5, and OpenAI's SDK sent the request again (it may be what
    killed the worker: RIS's own SDK never retries it)."""
    import openai

    async with started_engine(tmp_path) as (eng, workers, _):
        llm = workers[Lane.LLM]
        llm.ready()
        transport = httpx.ASGITransport(app=create_app(eng.config, eng))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1/v1") as http:
            client = openai.AsyncOpenAI(
                base_url="http://127.0.0.1/v1", api_key="x", http_client=http, max_retries=2
            )
            call = asyncio.create_task(
                client.chat.completions.with_raw_response.create(model="m", messages=ASK["messages"])
            )
            for _ in range(500):  # the SDK takes a few turns (and threads) before it sends
                if llm.runs:
                    break
                await asyncio.sleep(0.01)
            llm.deliver(m.TaskError(llm.runs[0].task_id, "worker_crashed", "the llm worker process died"))
            try:
                await asyncio.wait_for(call, 10)
            except openai.InternalServerError as e:
                answer = e.response
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "worker_crashed"
        assert answer.headers["x-should-retry"] == "false" and "retry-after" not in answer.headers
        assert len(llm.runs) == 1  # asked once


@run
async def test_a_disabled_lane_says_no_retry_on_every_api(tmp_path: Path) -> None:
    """A lane the config disables answered 503 with Retry-After: 5 on /api and /v1: OpenAI's
    SDK waited and asked twice more for a lane no retry brings."""
    async with started_engine(tmp_path, llm={"enabled": False}) as (eng, _, _):
        for path, body in (("/v1/chat/completions", ASK), ("/api/llm/generate", {"prompt": "x"})):
            r = await post(eng, path, body)
            assert r.status_code == 503 and r.json()["error"]["code"] == "lane_unavailable", path
            assert r.headers["x-should-retry"] == "false" and "retry-after" not in r.headers, path
