"""The Ollama API through the real apps (the main one, and the Ollama listener's) over fake
workers: the NDJSON stream and its last line, a failure mid-stream, Ollama's error shape where
it applies and RIS's where it does not, a chat history's tool calls paired with their results,
and the listener's port checked against the main one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ris import messages as m
from ris.api.app import create_app, create_ollama_app
from ris.api.limits import MIN_TOP_P
from ris.api.ollama_schemas import OllamaChatMessage, OllamaOptions
from ris.api.routes.ollama import chat_turns, ignored_options
from ris.config import ConfigError
from ris.config.load import parse_config
from ris.lanes import Lane
from ris.lanes.llm import LLMOutcome, LLMRequest, Message, TextDelta
from ris.runtime.engine import Engine

from .fakes import TWO_CORES, FakeWorkers, run, settle, started_engine

ASK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def call(eng: Engine, method: str, path: str, body: Any = None, *, ollama_port: bool) -> httpx.Response:
    main = create_app(eng.config, eng)
    app = create_ollama_app(main) if ollama_port else main
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.request(method, path, json=body)


@asynccontextmanager
async def sent(
    tmp: Path, path: str, body: dict[str, Any]
) -> AsyncIterator[tuple[asyncio.Task[httpx.Response], FakeWorkers]]:
    """`body` POSTed to the Ollama listener's `path`, its task handed to the fake LLM worker."""
    async with started_engine(tmp) as (eng, workers, _):
        workers[Lane.LLM].ready()
        request = asyncio.create_task(call(eng, "POST", path, body, ollama_port=True))
        await settle()
        yield request, workers


def lines(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in r.text.splitlines()]


@run
async def test_a_streamed_chat_is_ndjson_its_last_line_with_the_counts(tmp_path: Path) -> None:
    async with sent(tmp_path, "/api/chat", ASK) as (request, workers):
        llm = workers[Lane.LLM]
        task_id = llm.runs[0].task_id
        for piece in ("Hel", "lo"):
            llm.deliver(m.TaskOutput(task_id, TextDelta(piece)))
        llm.deliver(m.TaskDone(task_id, LLMOutcome("length", 3, 2)))
        r = await asyncio.wait_for(request, 5)
    first, second, last = lines(r)
    assert first["message"] == {"role": "assistant", "content": "Hel"} and first["done"] is False
    # Each line at its own time, as Ollama's: the last one after the pieces.
    assert first["created_at"] <= last["created_at"]
    assert second["message"]["content"] == "lo" and first["model"] == "m"
    assert last["done"] is True and last["done_reason"] == "length"
    assert (last["prompt_eval_count"], last["eval_count"]) == (3, 2)
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(last[key], int) and last[key] >= 0
    assert r.headers["X-Task-Id"] == task_id


@run
async def test_a_failure_mid_stream_is_a_last_error_line(tmp_path: Path) -> None:
    body = {"model": "m", "prompt": "Once"}
    async with sent(tmp_path, "/api/generate", body) as (request, workers):
        llm = workers[Lane.LLM]
        task_id = llm.runs[0].task_id
        llm.deliver(m.TaskOutput(task_id, TextDelta(" upon")))
        llm.deliver(m.TaskError(task_id, "backend_error", "llama.cpp decode failed"))
        r = await asyncio.wait_for(request, 5)
    assert lines(r) == [
        {"model": "m", "created_at": lines(r)[0]["created_at"], "response": " upon", "done": False},
        {"error": "llama.cpp decode failed"},
    ]


@run
async def test_errors_are_ollamas_on_its_paths_and_listener_and_riss_elsewhere(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, _):
        workers[Lane.LLM].ready()
        for on_listener in (True, False):
            lost = await call(eng, "POST", "/api/chat", {**ASK, "model": "llama9"}, ollama_port=on_listener)
            assert (
                lost.status_code == 404 and "llama9" in lost.json()["error"] and "m" in lost.json()["error"]
            )
            # The noop backend cannot constrain decoding: a JSON schema is refused, not ignored.
            fmt = await call(
                eng, "POST", "/api/chat", {**ASK, "format": {"type": "object"}}, ollama_port=on_listener
            )
            assert fmt.status_code == 400 and "format" in fmt.json()["error"]
            bad = await call(
                eng, "POST", "/api/generate", {"model": "m", "prompt": 3}, ollama_port=on_listener
            )
            assert bad.status_code == 400 and isinstance(bad.json()["error"], str)
        # The listener serves the Ollama API and /v1; the main port keeps RIS's own routes and shape.
        assert (await call(eng, "GET", "/api/stats", ollama_port=True)).json() == {"error": "Not Found"}
        seed = await call(eng, "POST", "/api/llm/generate", {"prompt": 3}, ollama_port=False)
        assert seed.status_code == 422 and seed.json()["error"]["code"] == "invalid_request"
        # The listener's /v1 is the OpenAI API, as Ollama serves it on its port: OpenAI's shape.
        assert [m["id"] for m in (await call(eng, "GET", "/v1/models", ollama_port=True)).json()["data"]]
        nowhere = await call(eng, "GET", "/v1/nowhere", ollama_port=True)
        assert nowhere.status_code == 404 and nowhere.json()["error"]["type"] == "invalid_request_error"
        # Ollama's calls not served here are refused in Ollama's words, saying why, on both ports.
        for on_listener in (True, False):
            body = {"model": "m", "input": "x"}
            embed = await call(eng, "POST", "/api/embed", body, ollama_port=on_listener)
            assert embed.status_code == 400 and "no embedding lane" in embed.json()["error"], embed.text
            gone = await call(eng, "DELETE", "/api/delete", {"model": "m"}, ollama_port=on_listener)
            assert gone.status_code == 400 and "config.json" in gone.json()["error"], gone.text


@run
async def test_a_load_request_loads_the_model_before_it_answers(tmp_path: Path) -> None:
    """Nothing to generate is Ollama's way to load a model, answered once it is loaded
    (`ollama run` waits on it): it was answered at once and the first message paid the load.
    A model no worker holds is loaded by a task of one token; one loaded already needs none."""
    async with started_engine(tmp_path) as (eng, workers, _):
        llm = workers[Lane.LLM]
        llm.ready()
        body = {"model": "m:latest"}
        load = asyncio.create_task(call(eng, "POST", "/api/generate", body, ollama_port=True))
        await settle()
        assert not load.done()
        (run_task,) = llm.runs
        assert isinstance(run_task.request, LLMRequest) and run_task.request.max_tokens == 1
        llm.deliver(m.TaskDone(run_task.task_id, LLMOutcome("length", 1, 1)))
        r = await asyncio.wait_for(load, 5)
        assert r.status_code == 200 and r.json()["done_reason"] == "load" and r.json()["response"] == ""
        llm.deliver(m.ModelLoaded(m.ModelInfo("m", "noop", m.ModelDetails())))
        await settle()
        again = await call(eng, "POST", "/api/chat", {"model": "m"}, ollama_port=True)
        assert again.json()["done_reason"] == "load" and len(llm.runs) == 1
        # A model whose load fails is that failure, in Ollama's words, not "loaded".
        llm.deliver(m.ModelUnloaded("m", "expired"))
        await settle()
        load = asyncio.create_task(call(eng, "POST", "/api/generate", {"model": "m"}, ollama_port=True))
        await settle()
        failed = llm.runs[-1]
        llm.deliver(m.TaskError(failed.task_id, "model_not_found", "no file at /models/m.gguf"))
        r = await asyncio.wait_for(load, 5)
        assert r.status_code == 404 and "no file" in r.json()["error"], r.text


def test_a_histories_calls_get_ids_and_tool_results_answer_them_by_name() -> None:
    history = [
        {"role": "user", "content": "Weather and time in Oslo?"},
        {
            "role": "assistant",
            "tool_calls": [
                {"function": {"name": "weather", "arguments": {"city": "Oslo"}}},
                {"function": {"name": "time", "arguments": {"zone": "CET"}}},
            ],
        },
        {"role": "tool", "content": "12:00", "tool_name": "time"},
        {"role": "tool", "content": "-3 C"},
    ]
    turns = chat_turns([OllamaChatMessage.model_validate(x) for x in history])
    assert turns[0] == ("user", "Weather and time in Oslo?")
    call = turns[1]
    assert isinstance(call, Message) and [(c.id, c.name) for c in call.tool_calls] == [
        ("call_1_0", "weather"),
        ("call_1_1", "time"),
    ]
    assert json.loads(call.tool_calls[0].arguments) == {"city": "Oslo"}
    assert turns[2] == Message("tool", "12:00", (), "call_1_1")
    assert turns[3] == Message("tool", "-3 C", (), "call_1_0")  # unnamed: the earliest unanswered


def test_the_ollama_listener_needs_a_port_of_its_own() -> None:
    with pytest.raises(ConfigError, match="ollama_port 8080 is server.port too"):
        parse_config({"server": {"port": 8080, "ollama_port": 8080}})


def test_ignored_options_are_named_in_a_header_that_stays_a_header() -> None:
    opts = OllamaOptions.model_validate({"temperature": 0.1, "top_k": 5, "mirostat": 1, "b\u00e9\u4e2d": 1})
    assert ignored_options(opts) == {"X-Ignored-Options": "mirostat, top_k, 1 more"}
    assert ignored_options(OllamaOptions(temperature=0.5)) == {} == ignored_options(None)


LLAMA = {"models": {"m": {"backend": "llama_cpp", "source": "/x.gguf"}}}
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


@run
async def test_a_streamed_tool_call_is_held_and_sent_whole_in_the_last_line(tmp_path: Path) -> None:
    async with started_engine(tmp_path, llm=LLAMA) as (eng, workers, _):
        llm = workers[Lane.LLM]
        llm.ready()
        body = {**ASK, "tools": [WEATHER]}
        request = asyncio.create_task(call(eng, "POST", "/api/chat", body, ollama_port=True))
        await settle()
        task_id = llm.runs[0].task_id
        sent_request = llm.runs[0].request
        assert isinstance(sent_request, LLMRequest) and [t.name for t in sent_request.tools] == ["weather"]
        for piece in ("<tool_", 'call>{"name": "weather", ', '"arguments": {"city": "Oslo"}}</tool_call>'):
            llm.deliver(m.TaskOutput(task_id, TextDelta(piece)))
        llm.deliver(m.TaskDone(task_id, LLMOutcome("stop", 9, 20)))
        r = await asyncio.wait_for(request, 5)
    (last,) = lines(r)  # nothing was sent while the answer could still be a call
    assert last["done"] and last["message"]["tool_calls"] == [
        {"function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    ]


def test_keep_alive_is_read_as_ollama_writes_it() -> None:
    from ris.api.errors import APIError
    from ris.api.routes.ollama import keep_alive_seconds

    assert keep_alive_seconds(None) is None  # the lane's keep_alive_s
    assert [keep_alive_seconds(v) for v in (300, "300", 0, "0", -1, "-1")] == [300, 300, 0, 0, -1, -1]
    assert [keep_alive_seconds(v) for v in ("5m", "1h30m", "1.5s", "-1m", "250ms")] == [
        300,
        5400,
        1.5,
        -60,
        0.25,
    ]
    for bad in ("soon", "5 minutes", "inf", "nan", "m5"):
        with pytest.raises(APIError) as exc:
            keep_alive_seconds(bad)
        assert exc.value.code == "invalid_value" and "'5m'" in exc.value.message


def test_ps_tells_what_of_a_model_is_on_the_card() -> None:
    """size_vram was the whole model on any GPU lane, partly offloaded or not."""
    from ris.api.routes.ollama_models import _on_card
    from ris.messages import ModelInfo

    size = 1000  # what the model takes in all (/api/ps's size): on the card and in RAM
    assert _on_card(ModelInfo("m", "llama_cpp", placement="gpu", footprint_bytes=900), size) == 900
    assert _on_card(ModelInfo("m", "llama_cpp", placement="gpu"), size) == size  # nothing counted
    assert _on_card(ModelInfo("m", "llama_cpp", placement="partial", footprint_bytes=400), size) == 400
    assert _on_card(ModelInfo("m", "llama_cpp", placement="cpu", footprint_bytes=400), size) == 0


async def _raw(eng: Engine, method: str, path: str, content: bytes = b"", **headers: str) -> httpx.Response:
    app = create_ollama_app(create_app(eng.config, eng))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.request(method, path, content=content, headers=headers)


@run
async def test_ollamas_curl_examples_are_read_as_json_whatever_their_content_type(tmp_path: Path) -> None:
    # `curl URL -d '{...}'` says application/x-www-form-urlencoded: Ollama reads JSON anyway.
    async with started_engine(tmp_path) as (eng, workers, _):
        workers[Lane.LLM].ready(models=(m.ModelInfo("m", "noop", m.ModelDetails()),))  # loaded: no task
        form = "application/x-www-form-urlencoded"
        r = await _raw(eng, "POST", "/api/generate", b'{"model": "m"}', **{"content-type": form})
        assert r.status_code == 200 and r.json()["done_reason"] == "load"
        # A line cut short is said as that, not as a wrong Content-Type (it was read as JSON).
        r = await _raw(eng, "POST", "/api/generate", b'{"model": "m",', **{"content-type": form})
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"], r.text
        assert "send JSON with" not in r.json()["error"]
        # A web page may post a form to another site without asking first: from a page (it
        # says its Origin), only a JSON type is read, even from this server's own pages.
        page = {"content-type": form, "origin": "http://127.0.0.1"}
        r = await _raw(eng, "POST", "/api/generate", b'{"model": "m"}', **page)
        assert r.status_code == 400 and "Content-Type: application/json" in r.json()["error"]


@run
async def test_the_listener_answers_the_ollama_clis_heartbeat(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, _):
        r = await _raw(eng, "GET", "/")
        assert r.status_code == 200 and r.text == "Ollama is running"
        for path in ("/", "/api/version", "/api/tags"):
            assert (await _raw(eng, "HEAD", path)).status_code == 200, path
        # The main port's "/" stays the console's.
        assert (await call(eng, "GET", "/", ollama_port=False)).json()["console"] == "/ui"


@run
async def test_nulls_are_absent_fields_and_roles_any_case_as_in_ollama(tmp_path: Path) -> None:
    body = {
        "model": "m",
        "stream": None,
        "messages": [
            {"role": "User", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]},
            {"role": "tool", "content": "42", "tool_name": "f"},
        ],
    }
    async with sent(tmp_path, "/api/chat", body) as (request, workers):
        llm = workers[Lane.LLM]
        (run_task,) = llm.runs
        assert isinstance(run_task.request, LLMRequest)
        turns = run_task.request.messages
        assert turns is not None and turns[0] == ("user", "hi")
        assert isinstance(turns[1], Message) and turns[1].content == ""
        llm.deliver(m.TaskDone(run_task.task_id, LLMOutcome("stop", 3, 1)))
        r = await asyncio.wait_for(request, 5)
    assert r.headers["content-type"] == "application/x-ndjson"  # null stream: Ollama's default


@run
async def test_what_ollama_refuses_or_only_loads_is_so_here(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, _):
        workers[Lane.LLM].ready(models=(m.ModelInfo("m", "noop", m.ModelDetails()),))
        refused = [
            ({"model": "m", "prompt": "hi", "keep_alive": True}, "keep_alive"),
            ({"model": "m", "keep_alive": "soon"}, "keep_alive"),  # a load answer parses it too
        ]
        for body, named in refused:
            r = await call(eng, "POST", "/api/generate", body, ollama_port=True)
            assert r.status_code == 400 and named in r.json()["error"], (body, r.text)
        # A system prompt alone is nothing to generate: Ollama's load answer, no task.
        body = {"model": "m", "system": "Be brief.", "stream": False}
        r = await call(eng, "POST", "/api/generate", body, ollama_port=True)
        assert r.status_code == 200 and r.json()["done_reason"] == "load"
        # An unload is answered once the worker let the model go (`ollama ps` right after
        # `ollama stop` listed it).
        stop = asyncio.ensure_future(
            call(eng, "POST", "/api/generate", {"model": "m", "keep_alive": "0s"}, ollama_port=True)
        )
        await asyncio.sleep(0.2)
        assert not stop.done() and "m" in eng.model_infos(Lane.LLM)
        workers[Lane.LLM].deliver(m.ModelUnloaded("m", "expired"))
        r = await asyncio.wait_for(stop, 2)
        assert r.json()["done_reason"] == "unload" and "m" not in eng.model_infos(Lane.LLM)
        assert workers[Lane.LLM].runs == []


@run
async def test_a_chat_over_the_servers_prompt_limit_loses_its_oldest_turns(tmp_path: Path) -> None:
    turns = [{"role": "system", "content": "Be brief."}]
    turns += [{"role": "user", "content": f"{i:02d}" + "x" * 998} for i in range(40)]  # 40,000 chars
    body = {"model": "m", "messages": turns, "stream": False}
    async with sent(tmp_path, "/api/chat", body) as (request, workers):
        (run_task,) = workers[Lane.LLM].runs
        req = run_task.request
        assert isinstance(req, LLMRequest) and req.truncate and req.messages is not None
        kept = [t[1][:2] for t in req.messages if isinstance(t, tuple)]
        # The system turn and the newest turns, within the server's 32,000 characters.
        assert kept[0] == "Be" and kept[1:] == [f"{i:02d}" for i in range(9, 40)]
        request.cancel()
    async with started_engine(tmp_path / "off") as (eng, workers, _):
        workers[Lane.LLM].ready()
        r = await call(eng, "POST", "/api/chat", {**body, "truncate": False}, ollama_port=True)
        assert r.status_code == 400 and "the limit is 32000 (server.max_prompt_chars)" in r.json()["error"]


@run
async def test_a_chat_whose_last_turn_is_over_the_limit_loses_its_old_turns_before_any_of_it(
    tmp_path: Path,
) -> None:
    """Older turns stayed while the current message was cut (10,000 and 1,000 characters kept,
    the last turn cut to 16,000 of its 30,000): they go first, as in the worker."""
    turns = [
        {"role": "system", "content": "s" * 5_000},
        {"role": "user", "content": "u" * 10_000},
        {"role": "assistant", "content": "a" * 1_000},
        {"role": "user", "content": "q" * 29_990 + "THE ASKING"},
    ]
    body = {"model": "m", "messages": turns, "stream": False}
    async with sent(tmp_path, "/api/chat", body) as (request, workers):
        (run_task,) = workers[Lane.LLM].runs
        req = run_task.request
        assert isinstance(req, LLMRequest) and req.messages is not None
        kept = [(t[0], len(t[1])) for t in req.messages if isinstance(t, tuple)]
        assert kept == [("system", 5_000), ("user", 27_000)], kept
        assert req.messages[-1][1].endswith("THE ASKING")  # type: ignore[index]
        request.cancel()


@run
async def test_one_document_over_the_servers_prompt_limit_keeps_its_end(tmp_path: Path) -> None:
    """A 52,900-character prompt was a 400 with truncate on (Ollama's default), where Ollama
    keeps the end of what it cannot hold; the question after a long document is at its end."""
    document = "d" * 40_000 + "THE QUESTION"
    for path, body in (
        ("/api/generate", {"model": "m", "prompt": document, "stream": False}),
        ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": document}], "stream": False}),
    ):
        async with sent(tmp_path / path.rsplit("/", 1)[1], path, body) as (request, workers):
            (run_task,) = workers[Lane.LLM].runs
            req = run_task.request
            assert isinstance(req, LLMRequest)
            text = req.prompt if req.prompt is not None else req.messages[-1][1]  # type: ignore[index]
            assert len(text) == 32_000 and text.endswith("THE QUESTION"), (path, len(text))
            request.cancel()


@run
async def test_an_empty_request_with_a_keep_alive_tells_the_workers(tmp_path: Path) -> None:
    # `ollama stop m` is a generate with nothing to generate and keep_alive 0.
    async with started_engine(tmp_path) as (eng, workers, _):
        llm = workers[Lane.LLM]
        llm.ready(models=(m.ModelInfo("m", "noop", m.ModelDetails()),))  # loaded: a load takes no task
        for body in ({"model": "m", "keep_alive": 0}, {"model": "m", "messages": [], "keep_alive": "5m"}):
            path = "/api/generate" if "messages" not in body else "/api/chat"
            assert (await call(eng, "POST", path, body, ollama_port=True)).status_code == 200
        # No keep_alive: the lane's, from now (a "4s" asked before stayed, and unloaded it).
        await call(eng, "POST", "/api/generate", {"model": "m"}, ollama_port=True)
        kept = [x for x in llm.inbox if isinstance(x, m.KeepModel)]
        assert kept == [m.KeepModel("m", 0.0), m.KeepModel("m", 300.0), m.KeepModel("m", None)]


@run
async def test_num_predict_zero_and_top_p_zero_read_as_on_ollama(tmp_path: Path) -> None:
    """Ollama's runner limits an answer only for num_predict above 0 (0 is no limit, as -1),
    and top_p 0 is the likeliest token alone, as on /v1."""
    body = {"model": "m", "prompt": "hi", "options": {"num_predict": 0, "top_p": 0}}
    async with sent(tmp_path, "/api/generate", body) as (_, workers):
        (task,) = workers[Lane.LLM].runs
        req = task.request
        assert isinstance(req, LLMRequest)
        assert req.top_p == MIN_TOP_P and req.max_tokens > 1 and req.max_tokens_at_most


@run
async def test_a_stream_refused_before_its_first_text_is_an_error_status_not_a_200(tmp_path: Path) -> None:
    """As an answer not streamed is refused (and /v1's streams): a schema the worker's grammar
    refuses was a 200 and then an error line."""
    body = {"model": "m", "prompt": "Once"}
    async with sent(tmp_path, "/api/generate", body) as (request, workers):
        llm = workers[Lane.LLM]
        llm.deliver(m.TaskError(llm.runs[0].task_id, "schema_too_costly", "the schema is refused"))
        r = await asyncio.wait_for(request, 5)
    assert r.status_code == 400 and r.json() == {"error": "the schema is refused"}, r.text


@run
async def test_a_disabled_llm_lanes_models_are_not_offered(tmp_path: Path) -> None:
    """With only speech enabled, /api/tags listed smollm2 and /api/show described it: an Ollama
    client offered a model whose every request failed."""
    async with started_engine(tmp_path, llm={"enabled": False}) as (eng, _, _):
        tags = await call(eng, "GET", "/api/tags", ollama_port=True)
        assert tags.status_code == 200 and tags.json() == {"models": []}
        shown = await call(eng, "POST", "/api/show", {"model": "m"}, ollama_port=True)
        assert shown.status_code == 404 and "the LLM lane is disabled" in shown.json()["error"]
        ask = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        chat = await call(eng, "POST", "/api/chat", ask, ollama_port=True)
        assert chat.status_code == 503  # lane_unavailable, as before
        load = await call(eng, "POST", "/api/generate", {"model": "m"}, ollama_port=True)
        assert load.status_code == 503  # not "loaded" with a 200


@run
async def test_a_pull_of_a_model_served_already_is_up_to_date(tmp_path: Path) -> None:
    """Scripts pull before they use a model: `ollama.pull("smollm2")` of a model RIS serves
    was a 404 (not in the catalogue), where Ollama answers `success` and downloads nothing."""
    async with started_engine(tmp_path) as (eng, workers, _):
        workers[Lane.LLM].ready()
        for name in ("m", "m:latest"):
            r = await call(eng, "POST", "/api/pull", {"model": name, "stream": False}, ollama_port=True)
            assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
        r = await call(eng, "POST", "/api/pull", {"model": "m"}, ollama_port=True)  # streamed by default
        assert lines(r) == [{"status": "success"}]
        unknown = {"model": "no-such-model", "stream": False}
        assert (await call(eng, "POST", "/api/pull", unknown, ollama_port=True)).status_code == 404


@run
async def test_num_predict_and_stop_lists_ollamas_clients_send_are_served(tmp_path: Path) -> None:
    """ChatOllama(num_predict=8192) was a 400 (over server.max_new_tokens), where Ollama takes
    any; five stop strings were a 400 (OpenAI's bound of 4). (Stop beside a format:
    tests/integration/test_ollama.py, on a model that constrains.)"""
    stops = [f"stop{i}" for i in range(10)] + ["x" * 200]
    body = {"model": "m", "prompt": "hi", "stream": False, "options": {"num_predict": 10**6, "stop": stops}}
    async with sent(tmp_path / "a", "/api/generate", body) as (request, workers):
        (run_task,) = workers[Lane.LLM].runs
        req = run_task.request
        assert isinstance(req, LLMRequest) and req.max_tokens == 4096 and list(req.stop) == stops
        request.cancel()
    too_many = {**body, "options": {"stop": [f"s{i}" for i in range(33)]}}
    async with started_engine(tmp_path / "c") as (eng, workers, _):
        workers[Lane.LLM].ready()
        r = await call(eng, "POST", "/api/generate", too_many, ollama_port=True)
        assert r.status_code == 400 and "at most 32 strings" in r.json()["error"]


@run
async def test_models_are_listed_with_their_tag_and_a_context_before_they_load(tmp_path: Path) -> None:
    """/api/tags listed "m" where Ollama lists "m:latest" (LangChain's ChatOllama("m:latest",
    validate_model_on_init=True) failed); /api/show's context_length was null for a model not
    loaded (after keep_alive 0), which clients size their prompts by."""
    llm = {
        "models": {
            "m": {"backend": "noop"},
            "g": {
                "backend": "llama_cpp",
                "source": "package:smollm2_135m_gguf/x.gguf",
                "options": {"n_ctx": 4096},
            },
        }
    }
    async with started_engine(tmp_path, llm=llm) as (eng, workers, _):
        workers[Lane.LLM].ready()
        tags = (await call(eng, "GET", "/api/tags", ollama_port=True)).json()["models"]
        assert [t["name"] for t in tags] == ["m:latest", "g:latest"] and tags[0]["model"] == "m:latest"
        shown = (await call(eng, "POST", "/api/show", {"model": "g:latest"}, ollama_port=True)).json()
        assert [v for k, v in shown["model_info"].items() if k.endswith(".context_length")] == [4096]
        assert "num_ctx" in shown["parameters"]


@run
async def test_the_ollama_listener_lets_in_the_origins_ollama_does(tmp_path: Path) -> None:
    """A web UI on localhost:3000, an editor's webview, a desktop app: Ollama lets them in by
    default; every one was a 403 here, preflight included (a webview's origin is random, so it
    could not be listed either: patterns now can)."""
    async with started_engine(tmp_path) as (eng, workers, _):
        workers[Lane.LLM].ready()
        main = create_app(eng.config, eng)
        for app, origin, allowed in (
            (create_ollama_app(main), "http://localhost:3000", True),
            (create_ollama_app(main), "vscode-webview://1a2b3c", True),
            (create_ollama_app(main), "app://obsidian.md", True),
            (create_ollama_app(main), "file://", True),  # an Electron app's page, as Ollama lets in
            (create_ollama_app(main), "http://localhost.evil.example:3000", False),
            (create_ollama_app(main), "https://evil.example", False),
            (main, "http://localhost:3000", False),  # the main port: server.allowed_origins only
        ):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                pre = await client.options(
                    "/api/tags", headers={"Origin": origin, "Access-Control-Request-Method": "GET"}
                )
                got = await client.get("/api/tags", headers={"Origin": origin})
            assert (pre.status_code in (200, 204)) is allowed and (got.status_code == 200) is allowed, origin
            assert (got.headers.get("access-control-allow-origin") == origin) is allowed, origin
        # Not a pull: it downloads gigabytes and rewrites config.json (with no key, the
        # anonymous caller is an admin): an origin the operator named may.
        transport = httpx.ASGITransport(app=create_ollama_app(main))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            pull = await client.post(
                "/api/pull", json={"model": "qwen2.5"}, headers={"Origin": "http://localhost:3000"}
            )
        assert pull.status_code == 403 and "to pull a model" in pull.json()["error"], pull.text


@run
async def test_what_ollamas_clients_send_on_its_port_is_taken_as_ollama_takes_it(tmp_path: Path) -> None:
    """/v1/models on Ollama's port listed the voices and image models (Open WebUI offered them
    as chat models); ChatOllama(seed=2**40) was a 400 (the same seed was taken on /v1); HEAD /
    on the main port was a 405 (the Ollama CLI's health check)."""
    async with started_engine(tmp_path) as (eng, workers, _):
        workers[Lane.LLM].ready()
        listed = (await call(eng, "GET", "/v1/models", ollama_port=True)).json()["data"]
        assert [m["id"] for m in listed] == ["m:latest"]
        assert (await call(eng, "GET", "/v1/models/m", ollama_port=True)).json()["id"] == "m"
        every = (await call(eng, "GET", "/v1/models", ollama_port=False)).json()["data"]
        assert "e" in [m["id"] for m in every]  # the main port's /v1 lists every lane's
        assert (await call(eng, "HEAD", "/", ollama_port=False)).status_code == 200
        for port in (True, False):  # a monitor's HEAD of the model list was a 405 on /v1
            head = await call(eng, "HEAD", "/v1/models", ollama_port=port)
            assert head.status_code == 200 and head.content == b""
            assert (await call(eng, "HEAD", "/v1/models/m", ollama_port=port)).status_code == 200
            assert (await call(eng, "HEAD", "/v1/models/nope", ollama_port=port)).status_code == 404
        body = {"model": "m", "prompt": "hi", "stream": False, "options": {"seed": 2**40 + 5}}
        request = asyncio.create_task(call(eng, "POST", "/api/generate", body, ollama_port=True))
        await settle()
        (run_task,) = workers[Lane.LLM].runs
        assert isinstance(run_task.request, LLMRequest) and run_task.request.seed == 5
        request.cancel()


def test_a_developer_turn_is_a_system_turn_as_on_v1() -> None:
    """OpenAI's "developer" role, which clients written for both APIs send: a 400 here."""
    assert OllamaChatMessage.model_validate({"role": "Developer", "content": "Be brief."}).role == "system"


@run
async def test_penalties_a_backend_cannot_apply_are_said_not_dropped(tmp_path: Path) -> None:
    """A model whose backend applies no repetition penalty: Ollama's options name them in
    X-Ignored-Options (Ollama ignores what its runner does not apply); /v1 refuses them, as it
    refuses a response_format that backend cannot honour."""
    body = {"model": "m", "prompt": "hi", "stream": False, "options": {"repeat_penalty": 1.1, "top_k": 5}}
    async with sent(tmp_path / "a", "/api/generate", body) as (request, workers):
        (run_task,) = workers[Lane.LLM].runs
        assert isinstance(run_task.request, LLMRequest) and not run_task.request.penalized
        workers[Lane.LLM].deliver(m.TaskDone(run_task.task_id, LLMOutcome("stop", 1, 1)))
        r = await asyncio.wait_for(request, 5)
    assert r.headers["x-ignored-options"] == "repeat_penalty, top_k", r.headers
    async with started_engine(tmp_path / "b") as (eng, workers, _):
        workers[Lane.LLM].ready()
        chat = {**ASK, "frequency_penalty": 0.5}
        refused = await call(eng, "POST", "/v1/chat/completions", chat, ollama_port=False)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported_for_model"
        assert refused.json()["error"]["param"] == "frequency_penalty"


@run
async def test_penalties_reach_a_llama_cpp_models_request(tmp_path: Path) -> None:
    """Ollama's options and /v1's fields as the llama.cpp model's request carries them:
    repeat_last_n -1 is the whole context (the server's limit while the model's is unknown)."""
    gguf = {"backend": "llama_cpp", "source": "package:smollm2_135m_gguf/x.gguf"}
    llm = {"default_model": "g", "models": {"g": gguf}}
    opts = {"repeat_penalty": 1.3, "frequency_penalty": 0.2, "presence_penalty": 0.1, "repeat_last_n": -1}
    body = {"model": "g", "prompt": "hi", "stream": False, "options": opts}
    async with started_engine(tmp_path / "a", llm=llm) as (eng, workers, _):
        workers[Lane.LLM].ready(slots=2)
        request = asyncio.create_task(call(eng, "POST", "/api/generate", body, ollama_port=True))
        chat = {"model": "g", "messages": [{"role": "user", "content": "hi"}], "frequency_penalty": -0.5}
        v1 = asyncio.create_task(call(eng, "POST", "/v1/chat/completions", chat, ollama_port=False))
        await settle()
        ollama_req, v1_req = (r.request for r in workers[Lane.LLM].runs)
        assert isinstance(ollama_req, LLMRequest) and isinstance(v1_req, LLMRequest)
        assert (ollama_req.repeat_penalty, ollama_req.frequency_penalty, ollama_req.presence_penalty) == (
            1.3,
            0.2,
            0.1,
        )
        assert ollama_req.repeat_last_n == 4096 and ollama_req.penalized
        assert (v1_req.frequency_penalty, v1_req.presence_penalty, v1_req.repeat_last_n) == (-0.5, 0.0, 64)
        request.cancel()
        v1.cancel()
    # A backend that applies none: repeat_last_n is named too (it was dropped unsaid).
    assert ignored_options(OllamaOptions(repeat_last_n=32), LLMRequest(prompt="x")) == {
        "X-Ignored-Options": "repeat_last_n"
    }


@run
async def test_a_model_loaded_for_the_request_is_its_load_duration(tmp_path: Path) -> None:
    """After keep_alive 0 the next request loads the model: load_duration said 0.04 ms and the
    load's 0.86 s went into prompt_eval_duration."""
    body = {"model": "m", "prompt": "hi", "stream": False}
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready()  # "m" not loaded
        request = asyncio.create_task(call(eng, "POST", "/api/generate", body, ollama_port=True))
        await settle()
        (run_task,) = llm.runs
        clock.advance(0.75)
        llm.deliver(m.ModelLoaded(m.ModelInfo("m", "noop", m.ModelDetails(), load_s=0.75)))
        clock.advance(0.25)
        llm.deliver(m.TaskOutput(run_task.task_id, TextDelta("Hi")))
        llm.deliver(m.TaskDone(run_task.task_id, LLMOutcome("stop", 1, 1)))
        r = await asyncio.wait_for(request, 5)
    said = r.json()
    assert said["load_duration"] == 750_000_000 and said["prompt_eval_duration"] == 250_000_000, said


@run
async def test_openais_speech_and_image_model_names_are_retrieved_where_their_routes_take_them(
    tmp_path: Path,
) -> None:
    """retrieve("tts-1") was a 404 for a name /v1/audio/speech takes as the lane's default."""
    async with started_engine(tmp_path) as (eng, _, _):  # the image lane is off here
        tts = await call(eng, "GET", "/v1/models/tts-1", ollama_port=False)
        assert tts.status_code == 200 and tts.json()["id"] == "tts-1" and tts.json()["owned_by"] == "ris:tts"
        image = await call(eng, "GET", "/v1/models/dall-e-3", ollama_port=False)
        assert image.status_code == 404 and image.json()["error"]["code"] == "model_not_found"
        listener = await call(eng, "GET", "/v1/models/tts-1", ollama_port=True)
        assert listener.status_code == 404  # Ollama's port lists its text models only


@run
async def test_the_listener_answers_head_on_an_image_result_as_get_and_says_nosniff(tmp_path: Path) -> None:
    """HEAD of a result URL the listener's /v1/images gave out was 405 there (200 on the main
    port); and an error's JSON, which echoes what was asked, is never sniffed as a page."""
    async with started_engine(tmp_path) as (eng, _, _):
        for ollama_port in (True, False):
            path = f"/api/image/result/{'0' * 32}"
            head = await call(eng, "HEAD", path, ollama_port=ollama_port)
            get = await call(eng, "GET", path, ollama_port=ollama_port)
            assert head.status_code == get.status_code == 404, (ollama_port, head.status_code)
            assert get.headers["x-content-type-options"] == "nosniff"
            assert get.headers["cache-control"] == "no-store"  # JSON: live state, never cached
        stats = await call(eng, "GET", "/api/stats", ollama_port=False)
        assert stats.status_code == 200 and stats.headers["cache-control"] == "no-store"
        page = await call(eng, "GET", "/ui/models", ollama_port=False)
        assert page.headers.get_list("x-content-type-options") == ["nosniff"]  # said once
        refused = await _raw(eng, "GET", "/api/tags", host="evil.example")  # the guard's own
        assert refused.status_code == 403 and refused.headers["x-content-type-options"] == "nosniff"


@run
async def test_a_user_key_is_shown_a_models_name_not_the_path_its_file_lies_at(tmp_path: Path) -> None:
    """/api/show's Modelfile said `FROM /srv/models/...` to every key: a path on the server,
    which a user key is not shown elsewhere (the console's config is the operator's). An admin
    key still reads the source there."""
    source = str(tmp_path / "operators-folder" / "model.gguf")
    llm = {"models": {"m": {"backend": "noop"}, "g": {"backend": "llama_cpp", "source": source}}}
    async with started_engine(tmp_path, llm=llm) as (eng, workers, _):
        workers[Lane.LLM].ready()
        data = json.loads(eng.config.model_dump_json())
        alice, root = "alice-key-0123456789", "root-key-0123456789abc"
        data["server"]["api_keys"] = [{"name": "alice", "key": alice}, root]
        transport = httpx.ASGITransport(app=create_app(parse_config(data, TWO_CORES), eng))
        shown = {}
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            for key in (alice, root):
                auth = {"Authorization": f"Bearer {key}"}
                r = await client.post("/api/show", json={"model": "g"}, headers=auth)
                assert r.status_code == 200, r.text
                shown[key] = r.text
    assert "operators-folder" not in shown[alice] and "FROM g\\n" in shown[alice]
    assert f"FROM {source}\\n" in shown[root]


@run
async def test_what_ollama_refuses_or_calls_otherwise_is_said_in_its_terms(tmp_path: Path) -> None:
    """An Ollama client's run: `think` and `logprobs` were dropped in silence (Ollama refuses
    thinking of a model that does not think, and clients ask again without it); a full queue
    was a 429 where Ollama answers 503; `curl -d ''` and `-d 'not json'` were told to change
    their Content-Type, which the docs say does not matter."""
    llm = {"parallel": 1, "max_queue": 1}
    async with started_engine(tmp_path, llm=llm) as (eng, workers, _):
        workers[Lane.LLM].ready(models=(m.ModelInfo("m", "noop", m.ModelDetails()),))  # loaded: no task
        for extra, said in (
            ({"think": True}, '"m" does not support thinking'),
            ({"think": "high"}, '"m" does not support thinking'),
            ({"logprobs": True}, "logprobs: no model here gives token probabilities"),
            ({"top_logprobs": 2}, "top_logprobs: no model here gives token probabilities"),
        ):
            for path in ("/api/chat", "/api/generate"):
                r = await call(eng, "POST", path, {**ASK, "prompt": "hi", **extra}, ollama_port=True)
                assert r.status_code == 400 and r.json()["error"] == said, (path, extra, r.text)
        nameless = await call(eng, "POST", "/api/show", {}, ollama_port=True)
        assert nameless.status_code == 400 and nameless.json()["error"] == "model is required"
        passes = await call(eng, "POST", "/api/generate", {"model": "m", "think": False}, ollama_port=True)
        assert passes.status_code == 200, passes.text  # false asks for nothing
        form = {"content-type": "application/x-www-form-urlencoded"}
        for headers in (form, {"content-type": "application/json"}, {}):  # any type, or none
            empty = await _raw(eng, "POST", "/api/chat", b"", **headers)
            assert empty.status_code == 400 and "has no body" in empty.json()["error"], (headers, empty.text)
        text = await _raw(eng, "POST", "/api/chat", b"not json", **form)
        assert text.status_code == 400 and "not valid JSON" in text.json()["error"], text.text
        # The queue: one running, one waiting, the third refused as Ollama refuses it.
        ask = {**ASK, "stream": False}
        running = [
            asyncio.create_task(call(eng, "POST", "/api/chat", ask, ollama_port=True)) for _ in range(2)
        ]
        await settle()
        full = await call(eng, "POST", "/api/chat", ask, ollama_port=True)
        assert full.status_code == 503 and full.json()["error"].startswith("server busy, please try again.")
        assert int(full.headers["retry-after"]) >= 1
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
