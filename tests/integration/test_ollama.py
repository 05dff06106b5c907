"""The Ollama-compatible API with the real default model (SmolLM2-135M) on a live server,
through the unmodified `ollama` client and LangChain's ChatOllama, on the Ollama listener
(server.ollama_port, paths at the root as on Ollama's port 11434) behind an API key, and on
the main port: chat (streamed and not), generate, a JSON schema as `format`, list, show, ps,
version, pull (from the local stand-in hub, tests/integration/hub.py), and Ollama-shaped
errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ris.backends import resolve_source
from ris.lanes.llm import SMOLLM2_SOURCE
from ris.launch import free_port

from .hub import Hub
from .server import Server, make_config

ollama = pytest.importorskip("ollama", reason="the ollama package is a test dependency")
jsonschema = pytest.importorskip("jsonschema", reason="a test dependency")
openai = pytest.importorskip("openai", reason="a test dependency")
pytestmark = pytest.mark.slow

KEY = "ollama-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "country": {"type": "string", "maxLength": 30},
        "population": {"type": "integer"},
    },
    "required": ["city", "country", "population"],
}
QWEN_REPO = "Qwen/Qwen2.5-1.5B-Instruct-GGUF"
QWEN_FILE = "qwen2.5-1.5b-instruct-q4_k_m.gguf"


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    h = Hub().start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hub: Hub) -> Iterator[Server]:
    """The LLM lane alone (speech and images are not what this is about), with a key, the
    Ollama listener on a port of its own, and the stand-in hub as the hub /api/pull reaches."""
    tmp = tmp_path_factory.mktemp("ris-ollama")
    cfg = make_config(tmp)
    for lane in ("tts", "image"):
        cfg["lanes"][lane]["enabled"] = False
    cfg["server"] = {"api_keys": [KEY], "ollama_port": free_port()}
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp / "hf-home"), "HF_HUB_OFFLINE": "0"}
    srv = Server(tmp, cfg, api_key=KEY).start(env=env)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def base(server: Server) -> str:
    return f"http://127.0.0.1:{server.config['server']['ollama_port']}"


@pytest.fixture(scope="module")
def client(base: str) -> Iterator[Any]:
    with ollama.Client(host=base, headers=AUTH) as c:
        yield c


def test_chat_streamed_and_not_and_generate(client: Any) -> None:
    ask = [{"role": "user", "content": "Name one colour of the sky."}]
    r = client.chat(model="smollm2", messages=ask, options={"num_predict": 12, "seed": 1, "top_k": 5})
    assert r.done and r.done_reason in ("stop", "length") and r.message.role == "assistant"
    assert r.message.content and r.model == "smollm2" and r.created_at.endswith("Z")
    assert 0 < r.eval_count <= 12 and r.prompt_eval_count > 0
    assert r.total_duration >= r.prompt_eval_duration + r.eval_duration > 0

    parts = list(client.chat(model="smollm2:latest", messages=ask, stream=True, options={"num_predict": 12}))
    assert len(parts) >= 3 and all(not p.done for p in parts[:-1]) and parts[-1].done
    streamed = "".join(p.message.content or "" for p in parts)
    assert streamed and parts[-1].eval_count > 0 and parts[-1].total_duration > 0

    # Greedy: a sampled continuation may end within 4 tokens, and this asks for the cut.
    g = client.generate(
        model="smollm2",
        prompt="The capital of France is",
        options={"num_predict": 4, "temperature": 0},
        raw=True,
    )
    assert g.done_reason == "length" and g.eval_count == 4 and g.response
    # A tool call and its result sent back: Ollama's calls carry no ids; the server pairs them.
    history = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "content": "-3 C, snow", "tool_name": "weather"},
    ]
    t = client.chat(model="smollm2", messages=history, options={"num_predict": 8})
    assert t.done and t.message.content is not None
    # Nothing to generate: Ollama's way to load a model answers at once.
    assert client.generate(model="smollm2", prompt="").done_reason == "load"


def test_empty_strings_of_ollamas_go_client_are_absent(base: str) -> None:
    """Ollama's Go client (api.GenerateRequest: no omitempty) sends "system", "suffix" and
    "template" as "" on every request; Ollama reads "" as not given, and so must this."""
    empty = {"system": "", "suffix": "", "template": "", "stream": False}
    body = {"model": "smollm2", "prompt": "The sky is", "raw": True, "options": {"num_predict": 2}, **empty}
    r = httpx.post(f"{base}/api/generate", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["done_reason"] in ("stop", "length"), r.text
    load = httpx.post(f"{base}/api/generate", json={"model": "smollm2", "prompt": "", **empty}, headers=AUTH)
    assert load.status_code == 200 and load.json()["done_reason"] == "load", load.text
    # A system prompt with raw: Ollama applies no template and drops it (it was a 400 here).
    body = {**body, "system": "You are terse."}
    r = httpx.post(f"{base}/api/generate", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["done_reason"] in ("stop", "length"), r.text


def test_a_prompt_in_a_language_the_model_does_not_write_is_warned_of(base: str) -> None:
    chinese = {"model": "smollm2", "options": {"num_predict": 2}}
    for path, body in (
        ("/api/chat", {**chinese, "messages": [{"role": "user", "content": "你好，请介绍一下自己"}]}),
        ("/api/generate", {**chinese, "prompt": "你好，请介绍一下自己"}),
    ):
        for stream in (False, True):
            r = httpx.post(f"{base}{path}", json={**body, "stream": stream}, headers=AUTH, timeout=60)
            assert r.status_code == 200, r.text
            (note,) = json.loads(r.headers["x-warnings"])
            assert "writes en only" in note, (path, stream, note)


def test_num_predict_past_the_context_stops_at_the_context(client: Any) -> None:
    """Ollama stops at the context where num_predict asks for more (2048 here); the first
    full stop ends this answer long before."""
    opts = {"num_predict": 3000, "temperature": 0, "stop": ["."]}
    r = client.generate(model="smollm2", prompt="The capital of France is", options=opts)
    assert r.done and r.done_reason == "stop" and 0 < r.eval_count < 2048


def test_a_chat_over_the_context_loses_its_oldest_turns_as_on_ollama(client: Any, base: str) -> None:
    """Ollama's default (`truncate`): a conversation longer than the context (2048 tokens
    here) is answered from its system turn and latest turns; with truncate off, refused."""
    system = {"role": "system", "content": "You are terse."}
    turn = "tell me more about the history of the tea trade in the nineteenth century " * 2
    history = [{"role": r, "content": f"{i}: {turn}"} for i in range(60) for r in ("user", "assistant")]
    messages = [system, *history, {"role": "user", "content": "Say hi."}]
    r = client.chat(model="smollm2", messages=messages, options={"num_predict": 4})
    assert r.done and 1000 < r.prompt_eval_count < 2048
    # Turns go until the answer has room: num_predict, at most a quarter of the context.
    room = client.chat(model="smollm2", messages=messages, options={"num_predict": 200, "stop": ["\n"]})
    assert room.done and 1000 < room.prompt_eval_count <= 2048 - 200, room.prompt_eval_count
    body = {"model": "smollm2", "messages": messages, "stream": False, "truncate": False}
    refused = httpx.post(f"{base}/api/chat", json=body, headers=AUTH, timeout=120)
    assert refused.status_code == 400 and "context" in refused.json()["error"], refused.text


def test_a_document_longer_than_the_context_is_read_from_its_end_as_on_ollama(client: Any) -> None:
    """One message past the context (2048 tokens): a 400 (the prompt is 11,920 tokens), where
    Ollama's runner keeps the first 4 tokens and the end. Kept: as much of the end as leaves
    the answer its room."""
    document = "The tea trade grew in the nineteenth century. " * 400 + "What grew? Answer in one word."
    r = client.generate(model="smollm2", prompt=document, options={"num_predict": 4, "temperature": 0})
    assert r.done and 2048 - 4 - 8 <= r.prompt_eval_count <= 2048 - 4, r.prompt_eval_count
    asked = [{"role": "user", "content": document}]
    chat = client.chat(model="smollm2", messages=asked, options={"num_predict": 4})
    assert chat.done and chat.prompt_eval_count <= 2048 - 4


def test_repetition_penalties_are_applied_as_on_ollama(client: Any, base: str) -> None:
    """repeat_penalty, frequency_penalty and presence_penalty were accepted and ignored (named
    in X-Ignored-Options): a greedy answer that repeats itself changes when they are asked,
    on Ollama's routes and on /v1."""
    ask = "Write the word cat ten times: cat cat cat cat"
    greedy = {"temperature": 0, "num_predict": 24}
    plain = client.generate(model="smollm2", prompt=ask, options=greedy, raw=True)
    strong = {**greedy, "repeat_penalty": 1.8}
    penalized = client.generate(model="smollm2", prompt=ask, options=strong, raw=True)
    assert plain.response.count("cat") > penalized.response.count("cat"), (plain.response, penalized.response)
    body = {"model": "smollm2", "prompt": ask, "max_tokens": 24, "temperature": 0}
    v1 = [
        httpx.post(f"{base}/v1/completions", json={**body, **extra}, headers=AUTH, timeout=120)
        for extra in ({}, {"frequency_penalty": 2.0})
    ]
    assert all(r.status_code == 200 for r in v1), v1[1].text
    texts = [r.json()["choices"][0]["text"] for r in v1]
    assert texts[0].count("cat") > texts[1].count("cat"), texts
    said = httpx.post(
        f"{base}/api/generate",
        json={"model": "smollm2", "prompt": ask, "stream": False, "options": strong},
        headers=AUTH,
        timeout=120,
    )
    assert "repeat_penalty" not in said.headers.get("x-ignored-options", ""), said.headers


def test_format_with_a_json_schema_gives_valid_json(client: Any, base: str) -> None:
    ask = [{"role": "user", "content": "Describe a big city as JSON."}]
    r = client.chat(model="smollm2", messages=ask, format=CITY, options={"temperature": 0.5, "seed": 2})
    assert r.done_reason == "stop"
    jsonschema.validate(json.loads(r.message.content), CITY)
    # "json" bounds nothing: seeded and greedy, so the answer is the same each run (a 135M model
    # left to sample may ramble on in an open object until its context is full).
    opts = {"seed": 1, "temperature": 0, "num_predict": 300}
    g = client.generate(
        model="smollm2",
        prompt="Reply with one JSON object with the keys name and age of a cat.",
        format="json",
        stream=False,
        options=opts,
    )
    assert g.done_reason == "stop", g.response
    assert isinstance(json.loads(g.response), dict)
    # A stop string beside a format would cut the JSON short: left out and said (it was a 400:
    # LangChain's ChatOllama(stop=...).with_structured_output()).
    ask = [{"role": "user", "content": "Describe a big city as JSON."}]
    body = {
        "model": "smollm2",
        "messages": ask,
        "format": CITY,
        "stream": False,
        "options": {**opts, "stop": [","]},
    }
    cut = httpx.post(f"{base}/api/chat", json=body, headers=AUTH, timeout=120)
    assert cut.status_code == 200 and cut.headers["x-ignored-options"] == "stop", cut.text
    jsonschema.validate(json.loads(cut.json()["message"]["content"]), CITY)


def test_list_show_ps_version(client: Any, base: str) -> None:
    listed = client.list()
    (model,) = [m for m in listed.models if m.model == "smollm2:latest"]  # tagged, as Ollama lists
    assert (
        model.size > 1_000_000
        and model.details.format == "gguf"
        and model.details.quantization_level == "Q4_1"
    )
    # Read from the GGUF's header, as Ollama gives them (UIs label models by them).
    assert model.details.family == "llama" and model.details.parameter_size == "134.52M"
    shown = client.show("smollm2")
    assert "completion" in shown.capabilities and "tools" in shown.capabilities
    assert shown.modelinfo["llama.context_length"] == 2048
    assert shown.modelinfo["general.parameter_count"] == 134_515_008
    # Modelfile lines, "name value": what a request without options gets.
    params = dict(line.split(None, 1) for line in (shown.parameters or "").splitlines())
    assert params == {"temperature": "0.8", "top_p": "0.9", "num_ctx": "2048"}
    (running,) = client.ps().models
    assert running.model == "smollm2:latest" and running.context_length == 2048
    # The memory it takes (Ollama's ps), its file's size and more (the KV cache): not the file.
    assert running.size > model.size
    # The name as given, back in the answer (Ollama's clients compare them).
    assert (
        client.generate(model="smollm2:latest", prompt="Hi", options={"num_predict": 1}).model
        == "smollm2:latest"
    )
    version = httpx.get(f"{base}/api/version", headers=AUTH).json()
    assert version["version"] and version["ris_version"]


def test_pull_streams_progress_into_config(client: Any, hub: Hub, server: Server) -> None:
    # Over one of huggingface_hub's 10 MiB chunks: progress shows within the file. Never
    # loaded: the server would serve it after a restart. A real GGUF (SmolLM2's, under Qwen's
    # name): the pull adds a model only where the config still loads with it.
    gguf = resolve_source(SMOLLM2_SOURCE).read_bytes()
    hub.repos[QWEN_REPO] = {QWEN_FILE: gguf}
    lines = list(client.pull("qwen2.5", stream=True))
    statuses = [p.status for p in lines]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    done = [p.completed for p in lines if p.status == f"pulling {QWEN_FILE}"]
    assert done[0] == 0 and 0 < done[1] < len(gguf) and done[-1] == len(gguf) and done == sorted(set(done))
    assert {p.total for p in lines if p.status == f"pulling {QWEN_FILE}"} == {len(gguf)}
    files = [p for p in lines if p.status == f"pulling {QWEN_FILE}"]
    assert files[0].digest.startswith("sha256:")
    assert any("restart the server" in (s or "") for s in statuses)
    entry = json.loads(Path(server.config_path).read_text())["lanes"]["llm"]["models"]["qwen2.5"]
    assert Path(entry["source"]).read_bytes() == gguf

    with pytest.raises(ollama.ResponseError) as e:
        client.pull("gpt-9")
    assert e.value.status_code == 404 and "qwen2.5" in e.value.error  # the catalogue's names


def test_errors_are_ollama_shaped_on_both_ports(client: Any, base: str, server: Server) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="llama9", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404 and "smollm2" in e.value.error

    # Options Ollama has and this server does not apply are named in a header, not refused.
    ignored = httpx.post(
        f"{base}/api/generate",
        json={
            "model": "smollm2",
            "prompt": "Hi",
            "stream": False,
            "options": {"num_predict": 1, "top_k": 5, "mirostat": 1},
        },
        headers=AUTH,
        timeout=120,
    )
    assert ignored.status_code == 200 and ignored.headers["X-Ignored-Options"] == "mirostat, top_k"
    bad = httpx.post(
        f"{base}/api/generate",
        json={"model": "smollm2", "prompt": "x", "options": {"temperature": 9}},
        headers=AUTH,
    )
    assert bad.status_code == 400 and "temperature" in bad.json()["error"]
    schema = {"model": "smollm2", "prompt": "x", "format": "yaml"}
    assert httpx.post(f"{base}/api/generate", json=schema, headers=AUTH).status_code == 400

    # The Ollama listener's guards are the main port's, in Ollama's words.
    nokey = httpx.get(f"{base}/api/tags")
    assert nokey.status_code == 401 and isinstance(nokey.json()["error"], str)
    # Its health check is open, as /health is (monitors, the Ollama CLI's heartbeat send no key);
    # the main port's "/" (the console) is not.
    alive = httpx.get(f"{base}/")
    assert alive.status_code == 200 and alive.text == "Ollama is running"
    assert httpx.head(f"{base}/").status_code == 200
    assert httpx.post(f"{base}/", content=b"x" * 1000).status_code == 401  # GET and HEAD alone
    assert httpx.get(f"{server.url}/").status_code == 401
    host = httpx.get(f"{base}/api/tags", headers={**AUTH, "Host": "evil.example"})
    assert host.status_code == 403 and "evil.example" in host.json()["error"]
    # It serves the Ollama API, and the OpenAI API under /v1 as Ollama does on its port (tools
    # set up for Ollama use http://localhost:11434/v1 and the names /api/tags lists).
    assert httpx.get(f"{base}/api/stats", headers=AUTH).json() == {"error": "Not Found"}
    oa = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    listed = [m.id for m in oa.models.list()]  # its text models, tagged, as Ollama's /v1 lists them
    assert "smollm2:latest" in listed and not {"piper", "espeak"} & set(listed), listed
    said = oa.chat.completions.create(
        model="smollm2:latest", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert said.model == "smollm2" and said.usage is not None and said.usage.completion_tokens == 2
    with pytest.raises(openai.NotFoundError) as e:  # /v1 errors in OpenAI's shape there too
        oa.chat.completions.create(model="llama9", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"

    # The main port serves the same paths (none clashes with RIS's own /api routes).
    main = httpx.post(
        f"{server.url}/api/generate",
        json={"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 2}},
        headers=AUTH,
        timeout=120,
    )
    assert main.status_code == 200 and main.json()["done"] and main.json()["eval_count"] == 2
    lost = httpx.post(f"{server.url}/api/show", json={"model": "nope"}, headers=AUTH)
    assert lost.status_code == 404 and "smollm2" in lost.json()["error"]
    assert httpx.get(f"{server.url}/api/stats", headers=AUTH).status_code == 200  # RIS's own, as before


def test_langchain_chat_ollama(base: str) -> None:
    chat_ollama = pytest.importorskip("langchain_ollama", reason="a test dependency").ChatOllama
    llm = chat_ollama(model="smollm2", base_url=base, num_predict=8, client_kwargs={"headers": AUTH})
    try:
        answer = llm.invoke("Say hello.")
    finally:
        llm._client.close()  # ChatOllama leaves its ollama client's connection open
    assert answer.content and answer.response_metadata["done"]


def test_a_listener_port_in_use_is_one_line_before_any_worker(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = make_config(tmp_path)
        cfg["server"] = {"port": free_port(), "ollama_port": port}
        path = tmp_path / "config.json"
        path.write_text(json.dumps(cfg))
        done = subprocess.run(
            [sys.executable, "-m", "ris", "serve", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    # A configuration's problem, as a busy main port is (exit 2); the likely owner named.
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"ris serve: server.ollama_port {port}: Address already in use (Ollama itself")


def test_a_tool_named_as_mcp_bridges_name_them_is_served(base: str) -> None:
    """`<server>.<tool>` names (MCP bridges for Ollama) were a 400 before any model saw them;
    the grammar built from the name runs in the worker."""
    read = {
        "type": "function",
        "function": {
            "name": "filesystem.read_file",
            "description": "Read a file",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"],
            },
        },
    }
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Read the file /etc/hosts."}],
        "tools": [read],
        "stream": False,
        "options": {"temperature": 0, "seed": 1, "num_predict": 60},
    }
    r = httpx.post(f"{base}/api/chat", json=body, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    calls = r.json()["message"].get("tool_calls") or []
    assert all(c["function"]["name"] == "filesystem.read_file" for c in calls), calls
