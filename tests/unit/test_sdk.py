"""ris.Client and ris.AsyncClient come from one definition: the same calls, sending the same
requests and returning the same results, checked against httpx's MockTransport."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
from typing import Any

import httpx
import pytest

from ris import AsyncClient, Client, RISError

TASK = "a" * 32
PROGRESS = {"task_id": TASK, "status": "succeeded", "step": 2, "total_steps": 2, "progress": 1.0}
TTS = {
    "task_id": TASK,
    "model": "piper",
    "voice": "en-US",
    "sample_rate": 22050,
    "duration_s": 0.5,
    "audio_url": f"/api/tts/audio/{TASK}",
}
GEN = {
    "task_id": TASK,
    "model": "m",
    "text": "hi",
    "finish_reason": "stop",
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    "timings": {"queue_ms": 0.1, "first_output_ms": 1.0, "total_ms": 2.0},
}


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in events)


def handler(log: list[tuple[str, str, Any]]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        body: Any = json.loads(request.content) if request.content else None
        log.append((request.method, str(request.url), body))
        path = request.url.path
        if path == "/api/llm/generate":
            if body["stream"]:
                return httpx.Response(200, content=sse(("token", {"text": "h"}), ("token", {"text": "i"})))
            return httpx.Response(200, json=GEN)
        if path == "/api/chat/speak":
            if body.get("stream_format") == "events":
                pcm = base64.b64encode(b"\x00\x01").decode()
                return httpx.Response(200, content=sse(("audio", {"index": 0, "pcm": pcm}), ("done", {})))
            return httpx.Response(200, content=b"RIFF....")
        routes: dict[str, Any] = {
            "/api/tts/synthesize": TTS,
            "/api/image/generate": {"task_id": TASK, "status": "queued"},
            f"/api/image/progress/{TASK}": PROGRESS,
            "/api/image/tasks": {"tasks": [PROGRESS]},
            f"/api/tasks/{TASK}": {"task_id": TASK, "state": "succeeded"},
            "/api/tasks": {"tasks": []},
            f"/api/tasks/{TASK}/cancel": {"task_id": TASK, "outcome": "finished"},
            "/health": {"status": "ok"},
            "/ready": {"ready": True},
            "/api/stats": {"lanes": {}},
            "/api/models": {"lanes": {}},
        }
        if path in routes:
            return httpx.Response(200, json=routes[path])
        if path in (f"/api/tts/audio/{TASK}", f"/api/image/result/{TASK}"):
            return httpx.Response(200, content=b"bytes of " + path.encode())
        return httpx.Response(404, json={"error": {"code": "not_found", "message": path}})

    return httpx.MockTransport(answer)


# Every public call of the SDK, with arguments.
CALLS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "generate": (("hi",), {"max_tokens": 2}),
    "generate_stream": ((), {"messages": [{"role": "user", "content": "hi"}]}),
    "synthesize": (("hello",), {"voice": "en-US"}),
    "generate_image": (("a cat",), {"width": 64, "height": 64}),
    "progress": ((TASK,), {}),
    "wait": ((TASK,), {"poll_s": 0.0}),
    "result": ((TASK,), {}),
    "image": (("a dog",), {"steps": 2}),
    "image_tasks": ((), {"status": "succeeded"}),
    "speak": (("hi",), {"voice": "en-US"}),
    "speak_events": (("hi",), {}),
    "task": ((TASK,), {}),
    "tasks": ((), {"lane": "llm"}),
    "cancel": ((TASK,), {}),
    "health": ((), {}),
    "ready": ((), {}),
    "stats": ((), {}),
    "models": ((), {}),
}
STREAMS = {"generate_stream", "speak_events"}


def public(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def test_both_clients_have_the_same_calls_with_the_same_signatures() -> None:
    assert public(Client) - {"close"} == public(AsyncClient) - {"aclose"} == set(CALLS)
    sync, asyn = Client(max_retries=5), AsyncClient(max_retries=5)
    assert sync.max_retries == asyn.max_retries == 5
    for name in CALLS:
        assert inspect.signature(getattr(sync, name)) == inspect.signature(getattr(asyn, name)), name
        assert getattr(sync, name).__doc__ == getattr(asyn, name).__doc__
        # What inspect (and mocks built with spec=) see: coroutines and async generators.
        kind = inspect.isasyncgenfunction if name in STREAMS else inspect.iscoroutinefunction
        assert kind(getattr(asyn, name)), name


def test_synthesize_asks_for_a_format_and_fetches_the_audio_url_it_gets() -> None:
    log: list[tuple[str, str, Any]] = []
    with Client("http://ris.test", transport=handler(log)) as c:
        c.synthesize("hello", format="mp3")
    assert log[0][2] == {"text": "hello", "speed": 1.0, "format": "mp3"}
    assert log[1][:2] == ("GET", f"http://ris.test/api/tts/audio/{TASK}")  # as the server names it


def test_both_clients_send_the_same_requests_and_return_the_same_results() -> None:
    sync_log: list[tuple[str, str, Any]] = []
    with Client("http://ris.test", transport=handler(sync_log)) as c:
        sync_results = {
            name: list(getattr(c, name)(*a, **kw)) if name in STREAMS else getattr(c, name)(*a, **kw)
            for name, (a, kw) in CALLS.items()
        }

    async def run_async() -> tuple[dict[str, Any], list[tuple[str, str, Any]]]:
        log: list[tuple[str, str, Any]] = []
        out: dict[str, Any] = {}
        async with AsyncClient("http://ris.test", transport=handler(log)) as c:
            for name, (a, kw) in CALLS.items():
                call = getattr(c, name)(*a, **kw)
                out[name] = [x async for x in call] if name in STREAMS else await call
        return out, log

    async_results, async_log = asyncio.run(run_async())
    assert sync_log == async_log
    assert sync_results == async_results
    assert sync_results["generate_stream"] == ["h", "i"]
    assert sync_results["speak_events"][0] == ("audio", {"index": 0, "pcm": b"\x00\x01"})
    assert sync_results["synthesize"].audio == f"bytes of /api/tts/audio/{TASK}".encode()


def test_errors_and_retries_are_the_same_on_both() -> None:
    answers = iter([429, 429, 200])

    def flaky(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        if status == 429:
            return httpx.Response(
                429, headers={"Retry-After": "0"}, json={"error": {"code": "queue_full", "message": "x"}}
            )
        return httpx.Response(200, json=GEN)

    with Client("http://ris.test", transport=httpx.MockTransport(flaky)) as c:
        assert c.generate("hi").text == "hi"  # two 429s retried
    with Client("http://ris.test", transport=handler([]), max_retries=0) as c, pytest.raises(RISError) as exc:
        c.progress("missing")
    assert exc.value.status == 404 and exc.value.code == "not_found"

    async def async_404() -> None:
        async with AsyncClient("http://ris.test", transport=handler([]), max_retries=0) as c:
            await c.progress("missing")

    with pytest.raises(RISError, match="404 not_found"):
        asyncio.run(async_404())
