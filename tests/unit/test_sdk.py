"""ris.Client and ris.AsyncClient come from one definition: the same calls, sending the same
requests and returning the same results, checked against httpx's MockTransport."""

from __future__ import annotations

import asyncio
import base64
import inspect
import io
import json
import time
import warnings
import wave
from typing import Any

import httpx
import pytest

from ris import AsyncClient, Client, RISError, RISWarning, TaskTimeout

TASK = "a" * 32
PROGRESS = {"task_id": TASK, "status": "succeeded", "step": 2, "total_steps": 2, "progress": 1.0}
TTS = {
    "task_id": TASK,
    "model": "piper",
    "voice": "en-US",
    "sample_rate": 22050,
    "duration_s": 0.5,
    "audio_url": f"/api/tts/audio/{TASK}",
    "warnings": ["voice: none given and the text is Chinese"],
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
                start = {"task_id": TASK, "model": "m", "warnings": []}
                events = (("start", start), ("token", {"text": "h"}), ("token", {"text": "i"}), ("done", GEN))
                return httpx.Response(200, content=sse(*events))
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
    "generate_events": (("hi",), {"max_tokens": 2}),
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
    "delete": ((TASK,), {}),
    "health": ((), {}),
    "ready": ((), {}),
    "stats": ((), {}),
    "models": ((), {}),
}
STREAMS = {"generate_stream", "generate_events", "speak_events"}


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
    assert [name for name, _ in sync_results["generate_events"]] == ["start", "token", "token", "done"]
    assert sync_results["generate_events"][-1][1] == GEN  # finish_reason, usage: what generate() says
    assert sync_results["speak_events"][0] == ("audio", {"index": 0, "pcm": b"\x00\x01"})
    assert sync_results["synthesize"].audio == f"bytes of /api/tts/audio/{TASK}".encode()
    assert sync_results["synthesize"].warnings == ("voice: none given and the text is Chinese",)


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


def test_a_wrong_key_fails_at_once_not_after_the_throttles_retry_after() -> None:
    """The wrong-key throttle's 429 (Retry-After 6) was retried as a full queue is: every call
    with a wrong key took 6 s and more, and each retry counted as one more wrong key."""
    seen: list[str] = []

    def throttled(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        err = {"error": {"code": "too_many_wrong_keys", "message": "x"}}
        return httpx.Response(429, headers={"Retry-After": "6"}, json=err)

    results = _both(httpx.MockTransport(throttled), lambda c: c.models())
    assert [(type(r), getattr(r, "code", None)) for r in results] == [(RISError, "too_many_wrong_keys")] * 2
    assert len(seen) == 2  # one request per client: none retried


def _speak_stream(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in events)


def test_speak_returns_a_wav_whose_header_gives_its_length() -> None:
    """speak() reads the answer as its events and writes the WAV with its real sizes (the
    server's streamed WAV could not know them when its header left)."""
    pcm = b"\x01\x00" * 50
    halves = [base64.b64encode(pcm[:40]).decode(), base64.b64encode(pcm[40:]).decode()]

    def answer(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream_format"] == "events"
        return httpx.Response(
            200,
            content=_speak_stream(
                ("start", {"task_id": "t1", "sample_rate": 16000, "tts_model": "espeak", "warnings": []}),
                ("text", {"index": 0, "text": "Hi."}),
                ("audio", {"index": 0, "pcm": halves[0]}),
                ("audio", {"index": 0, "pcm": halves[1]}),
                ("llm_done", {"text": "Hi."}),
                ("done", {"sentences": 1}),
            ),
        )

    for wav in _both(httpx.MockTransport(answer), lambda c: c.speak("hi")):
        with wave.open(io.BytesIO(wav)) as w:
            assert w.getnframes() == 50 and w.readframes(50) == pcm and w.getframerate() == 16000
    assert _both(httpx.MockTransport(answer), lambda c: c.speak("hi", audio_format="pcm")) == [pcm, pcm]


def test_speak_failing_after_its_first_sound_is_a_ris_error_with_the_code() -> None:
    """A later sentence failing broke the WAV stream off: speak() raised httpx's
    RemoteProtocolError with no reason. The events stream ends in the error; and one that ends
    with neither `done` nor `error` was cut short, never a shorter answer passed off as whole."""
    start = ("start", {"task_id": "t1", "sample_rate": 16000, "tts_model": "espeak", "warnings": []})
    sound = ("audio", {"index": 0, "pcm": base64.b64encode(b"\x01\x00" * 8).decode()})
    failed = ("error", {"code": "synthesis_failed", "message": "the engine failed"})

    for events, status, code in (
        ((start, sound, failed), 500, "synthesis_failed"),
        ((start, sound), 502, "stream_incomplete"),
    ):
        transport = httpx.MockTransport(lambda _r, ev=events: httpx.Response(200, content=_speak_stream(*ev)))
        for outcome in _both(transport, lambda c: c.speak("hi")):
            assert isinstance(outcome, RISError) and (outcome.status, outcome.code) == (status, code), outcome
    with (
        Client("http://ris.test", transport=handler([])) as c,
        pytest.raises(TypeError, match=r"speak\(\) sets"),
    ):
        c.speak("hi", stream_format="audio")


def test_a_text_stream_cut_off_before_its_end_is_a_ris_error_not_a_shorter_answer() -> None:
    """generate_stream() ended quietly when the server stopped mid-answer (a restart, a proxy's
    timeout): the caller took the text so far for the whole answer. Now, as speak() does, a
    stream that ends with neither `done` nor `error` raises stream_incomplete; one whose last
    event lacks its closing blank line still counts."""
    token = ("token", {"text": "h"})
    cut = httpx.MockTransport(lambda _r: httpx.Response(200, content=sse(token)))
    for name in ("generate_stream", "generate_events", "speak_events"):
        for outcome in _both(cut, lambda c, n=name: getattr(c, n)("hi")):
            assert isinstance(outcome, RISError), (name, outcome)
            assert (outcome.status, outcome.code) == (502, "stream_incomplete"), name
    unclosed = sse(token, ("done", GEN)).rstrip(b"\n")
    whole = httpx.MockTransport(lambda _r: httpx.Response(200, content=unclosed))
    assert _both(whole, lambda c: c.generate_stream("hi")) == [["h"], ["h"]]
    events = _both(whole, lambda c: c.generate_events("hi"))
    assert events[0] == events[1] == [token, ("done", GEN)]


def test_an_option_the_call_sets_itself_is_a_clear_type_error() -> None:
    with Client("http://ris.test", transport=handler([])) as c:
        with pytest.raises(TypeError, match=r"generate\(\) sets 'stream' itself; generate_stream\(\)"):
            c.generate("hi", stream=True)
        with pytest.raises(TypeError, match=r"speak_events\(\) sets 'stream_format' itself"):
            list(c.speak_events("hi", stream_format="audio"))


def _both(transport: Any, call: Any) -> list[Any]:
    """`call(client)` on a sync and an async client over `transport`: what each returned or raised."""
    out: list[Any] = []
    with Client("http://ris.test", transport=transport, max_retry_wait=0.01) as c:
        try:
            result = call(c)
            out.append(list(result) if inspect.isgenerator(result) else result)
        except Exception as e:  # noqa: BLE001 - compared below
            out.append(e)

    async def run_async() -> Any:
        async with AsyncClient("http://ris.test", transport=transport, max_retry_wait=0.01) as c:
            result = call(c)
            return [x async for x in result] if hasattr(result, "__aiter__") else await result

    try:
        out.append(asyncio.run(run_async()))
    except Exception as e:  # noqa: BLE001
        out.append(e)
    return out


def test_a_crashed_worker_is_not_asked_again_a_full_queue_is() -> None:
    """The request that ran when its worker died may be what killed it: sent again, it would
    take the replaced worker (and the requests batched on it) down again."""
    for code, status, posts in (
        ("worker_crashed", 503, 1),
        ("worker_out_of_memory", 503, 1),
        ("queue_full", 429, 4),
        ("lane_pending", 503, 4),
    ):
        log: list[int] = []

        def answer(
            request: httpx.Request, code: str = code, status: int = status, log: list[int] = log
        ) -> httpx.Response:
            log.append(1)
            return httpx.Response(
                status, headers={"Retry-After": "0"}, json={"error": {"code": code, "message": "x"}}
            )

        results = _both(httpx.MockTransport(answer), lambda c: c.generate("hi"))
        assert all(isinstance(r, RISError) and r.code == code for r in results), results
        assert len(log) == 2 * posts, (code, len(log))


def test_a_server_address_is_taken_as_the_cli_takes_it() -> None:
    """`Client("localhost:8080")` answered health() False and raised UnsupportedProtocol on
    every other call, where `ris status --url localhost:8080` worked; credentials in the URL
    replaced the API key with Basic ones."""
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url} {request.headers.get('authorization')}")
        return httpx.Response(200, json={"status": "ok"})

    with Client("ris.test:8080", api_key="k", transport=httpx.MockTransport(answer)) as c:
        assert c.health()
    assert seen == ["http://ris.test:8080/health Bearer k"]
    for url in ("http://user:secret@ris.test", "http://ris.test:99999", "ftp://ris.test"):
        with pytest.raises(ValueError) as refused:
            Client(url)
        assert "secret" not in str(refused.value)
        with pytest.raises(ValueError):
            AsyncClient(url)


def test_an_answer_the_server_marks_x_should_retry_false_is_not_asked_again() -> None:
    """A lane the config disables answered 503 with `x-should-retry: false`; OpenAI's client
    obeyed it, the SDK sent the request max_retries + 1 times (1.7 s, then the error)."""
    log: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        log.append(1)
        body = {"error": {"code": "lane_unavailable", "message": "the image lane is disabled"}}
        return httpx.Response(503, headers={"x-should-retry": "false"}, json=body)

    results = _both(httpx.MockTransport(answer), lambda c: c.generate_image("a cat"))
    assert all(isinstance(r, RISError) and r.code == "lane_unavailable" for r in results), results
    assert len(log) == 2


def test_a_failure_inside_a_stream_or_a_progress_has_the_status_of_its_response() -> None:
    """generate() and generate_stream() raise the same RISError for the same failure: the
    stream's own response was a 200, but the status told is the failure's (deadline: 504)."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/image/progress/t":
            error = {"code": "worker_crashed", "message": "gone"}
            return httpx.Response(200, json={"task_id": "t", "status": "failed", "error": error})
        failure = {"code": "deadline_exceeded", "message": "late"}
        return httpx.Response(200, content=sse(("token", {"text": "h"}), ("error", failure)))

    streamed = _both(httpx.MockTransport(answer), lambda c: c.generate_stream("hi"))
    assert [(e.status, e.code) for e in streamed] == [(504, "deadline_exceeded")] * 2
    waited = _both(httpx.MockTransport(answer), lambda c: c.wait("t", poll_s=0))
    assert [(e.status, e.code) for e in waited] == [(503, "worker_crashed")] * 2


def test_a_prompt_and_messages_together_are_refused_not_the_prompt_dropped() -> None:
    log: list[tuple[str, str, Any]] = []
    messages = [{"role": "system", "content": "be brief"}]
    results = _both(handler(log), lambda c: c.generate("Translate to French", messages=messages))
    assert all(isinstance(r, ValueError) and "exactly one" in str(r) for r in results), results
    assert log == []  # nothing sent


def test_wait_gives_up_at_its_timeout_not_a_poll_later() -> None:
    def running(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"task_id": "t", "status": "running"})

    for client in (Client("http://ris.test", transport=httpx.MockTransport(running)),):
        t = time.monotonic()
        with client, pytest.raises(TimeoutError):
            client.wait("t", timeout=0.2, poll_s=3)
        assert time.monotonic() - t < 1.5


def test_wait_rides_out_a_server_restart_for_a_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """An image task outlives its server's restart; wait() raised ConnectError at the first
    refused connection, and the client never had the picture the restarted server made."""
    import ris.sdk._ops as ops

    monkeypatch.setattr(ops, "RESTART_POLL_S", 0.01)
    answers = iter(["down", "down", "running", "down", "succeeded"])

    def restarting(request: httpx.Request) -> httpx.Response:
        state = next(answers)
        if state == "down":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return httpx.Response(200, json={"task_id": "t", "status": state})

    with Client("http://ris.test", transport=httpx.MockTransport(restarting)) as c:
        assert c.wait("t", poll_s=0.01)["status"] == "succeeded"

    monkeypatch.setattr(ops, "RIDE_OUT_RESTART_S", 0.05)  # a server gone for good: its error

    def gone(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    results = _both(httpx.MockTransport(gone), lambda c: c.wait("t", poll_s=0.01))
    assert all(isinstance(r, httpx.ConnectError) for r in results), results


def test_tasks_takes_the_filters_the_server_knows_only() -> None:
    log: list[tuple[str, str, Any]] = []
    with Client("http://ris.test", transport=handler(log)) as c:
        c.tasks(state="failed", lane="image", limit=5)
        with pytest.raises(TypeError):
            c.tasks(status="failed")  # type: ignore[call-arg]  # image_tasks' word, ignored by /api/tasks
    assert log == [("GET", "http://ris.test/api/tasks?lane=image&state=failed&limit=5", None)]


def test_ready_is_the_readiness_answer_or_an_error_never_an_error_body() -> None:
    """/ready's 503 is an answer (a lane not up yet); a key refused, or a 503 that is not
    /ready's body (the connection cap's), raises as any other call's error does."""

    def always(status: int, **content: Any) -> httpx.MockTransport:
        return httpx.MockTransport(lambda request: httpx.Response(status, **content))

    def error(code: str) -> dict[str, Any]:
        return {"error": {"code": code, "message": "x"}}

    for body in ({"ready": True, "lanes": {"llm": True}}, {"ready": False, "lanes": {"llm": False}}):
        status = 200 if body["ready"] else 503
        assert _both(always(status, json=body), lambda c: c.ready()) == [body, body]
    for transport, want in (
        (always(401, json=error("unauthorized")), (401, "unauthorized")),
        (always(403, json=error("host_not_allowed")), (403, "host_not_allowed")),
        (always(503, text="too many open connections from this address\n"), (503, "http_error")),
        (always(404, text="Not Found"), (404, "http_error")),
    ):
        results = _both(transport, lambda c: c.ready())
        assert [(type(r), getattr(r, "status", None), getattr(r, "code", None)) for r in results] == [
            (RISError, *want)
        ] * 2, results


def test_health_is_false_when_no_server_answers_other_calls_still_raise() -> None:
    """health() is a yes/no question: a server not running is a no (it raised httpx's
    ConnectError), its other answers too; any other call still raises what the transport did."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    def answer(status: int) -> httpx.MockTransport:
        return httpx.MockTransport(lambda request: httpx.Response(status, json={"status": "ok"}))

    assert _both(httpx.MockTransport(refuse), lambda c: c.health()) == [False, False]
    assert _both(answer(200), lambda c: c.health()) == [True, True]
    assert _both(answer(503), lambda c: c.health()) == [False, False]
    raised = _both(httpx.MockTransport(refuse), lambda c: c.stats())
    assert [type(r) for r in raised] == [httpx.ConnectError] * 2, raised


def test_a_stream_left_early_closes_its_response_at_once_on_both() -> None:
    """A stream closed early (close(), aclose()) hangs up there and then: the server sees the
    client gone and cancels the task. Left to the garbage collector, the connection and the
    task's compute would last until the collector came."""
    closed: list[str] = []
    first = sse(("token", {"text": "h"}))

    class Endless(httpx.SyncByteStream, httpx.AsyncByteStream):
        def __iter__(self) -> Any:
            yield first
            while True:  # the server still generating
                time.sleep(0.01)
                yield b""

        async def __aiter__(self) -> Any:
            yield first
            await asyncio.Event().wait()  # the server still generating
            yield b""

        def close(self) -> None:
            closed.append("sync")

        async def aclose(self) -> None:
            closed.append("async")

    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=Endless()))
    with Client("http://ris.test", transport=transport) as c:
        tokens = c.generate_stream("hi")
        assert next(tokens) == "h"
        tokens.close()
        assert closed == ["sync"]

    async def run_async() -> None:
        async with AsyncClient("http://ris.test", transport=transport) as c:
            tokens = c.generate_stream("hi")
            assert await anext(tokens) == "h"
            await tokens.aclose()
            # At once: not on a later turn of the event loop, when the collector's finalizer runs.
            assert closed == ["sync", "async"]

    asyncio.run(asyncio.wait_for(run_async(), 10))


def test_a_retry_that_finds_no_server_says_what_the_server_said_before() -> None:
    """SIGTERM during a call: the server answered 503 server_shutdown, the SDK retried after
    Retry-After, found the port closed and raised a bare httpx.ConnectError."""
    answers = iter(["shutdown", "down"] * 2)

    def stopping(request: httpx.Request) -> httpx.Response:
        if next(answers) == "down":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        body = {"error": {"code": "server_shutdown", "message": "the server is shutting down"}}
        return httpx.Response(503, json=body, headers={"Retry-After": "1"})

    results = _both(httpx.MockTransport(stopping), lambda c: c.generate("hi"))
    for r in results:
        assert isinstance(r, RISError) and (r.status, r.code) == (503, "server_shutdown"), r
        assert "the server could not be reached" in r.message and "ConnectError" in r.message


def test_speech_made_before_a_restart_is_fetched_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """synthesize() made the speech, then its audio's download met the restarting server: a
    bare ConnectError, and the app had not even the task id of the kept audio."""
    import ris.sdk._ops as ops

    monkeypatch.setattr(ops, "RESTART_POLL_S", 0.01)
    made = {"task_id": "t", "model": "piper", "voice": "en", "sample_rate": 22050, "duration_s": 1.0}
    made["audio_url"] = "/api/tts/audio/t"
    downs = iter([True, True, False] * 2)

    def restarting(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json=made)
        if next(downs):
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return httpx.Response(200, content=b"RIFF....WAVE")

    results = _both(httpx.MockTransport(restarting), lambda c: c.synthesize("Hello."))
    assert all(getattr(r, "audio", None) == b"RIFF....WAVE" for r in results), results


def test_image_takes_a_progress_callback_and_a_timeout_as_wait_does() -> None:
    """image(on_progress=print) sent the callback in the request ("not JSON serializable")."""
    bodies: list[Any] = []
    polls = iter(["running", "succeeded"])

    def server(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            bodies.append(json.loads(request.content))
            return httpx.Response(202, json={"task_id": "t", "status": "queued"})
        if "/progress/" in request.url.path:
            return httpx.Response(200, json={"task_id": "t", "status": next(polls), "progress": 0.5})
        return httpx.Response(200, content=b"\x89PNG")

    seen: list[dict[str, Any]] = []
    with Client("http://ris.test", transport=httpx.MockTransport(server)) as c:
        assert c.image("a cat", on_progress=seen.append, timeout=30, steps=2) == b"\x89PNG"
    assert bodies == [{"prompt": "a cat", "steps": 2}] and [p["status"] for p in seen] == [
        "running",
        "succeeded",
    ]


def _running_image_server(log: list[str]) -> httpx.MockTransport:
    """An image task that never ends; every request logged as "METHOD path"."""

    def server(request: httpx.Request) -> httpx.Response:
        log.append(f"{request.method} {request.url.path}")
        if request.url.path == "/api/image/generate":
            return httpx.Response(202, json={"task_id": TASK, "status": "queued"})
        if request.url.path.endswith("/cancel"):
            return httpx.Response(200, json={"task_id": TASK, "outcome": "requested"})
        return httpx.Response(200, json={"task_id": TASK, "status": "running", "progress": 0.5})

    return httpx.MockTransport(server)


def test_an_image_given_up_is_cancelled_and_its_timeout_names_the_task() -> None:
    """image() hides its task's id: given up at its timeout, or by a cancelled asyncio task
    (asyncio.wait_for), the picture was made all the same, for no one (an app developer's
    run: step 57 of 100 when the caller had gone, then succeeded)."""
    log: list[str] = []
    results = _both(_running_image_server(log), lambda c: c.image("a cat", timeout=0.05))
    assert all(isinstance(r, TaskTimeout) and r.task_id == TASK for r in results), results
    assert log.count(f"POST /api/tasks/{TASK}/cancel") == 2  # once by each client

    async def abandoned() -> None:
        async with AsyncClient("http://ris.test", transport=_running_image_server(log)) as c:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(c.image("a dog"), 0.3)

    log.clear()
    asyncio.run(abandoned())
    assert log[0] == "POST /api/image/generate" and log[-1] == f"POST /api/tasks/{TASK}/cancel"
    # Pickled as made (a process pool hands it back); a client closed under a running image()
    # raises what ended it, not httpx's "client has been closed" from the cancel.
    import pickle

    again = pickle.loads(pickle.dumps(results[0]))
    assert isinstance(again, TaskTimeout) and (again.task_id, str(again)) == (TASK, str(results[0]))

    async def closed_under_it() -> None:
        c = AsyncClient("http://ris.test", transport=_running_image_server(log))
        running = asyncio.ensure_future(c.image("a fish"))
        await asyncio.sleep(0.05)
        await c.aclose()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    asyncio.run(closed_under_it())
    # wait() leaves the task alone: its caller has the id.
    log.clear()
    with Client("http://ris.test", transport=_running_image_server(log)) as c, pytest.raises(TaskTimeout):
        c.wait(TASK, timeout=0.05, poll_s=0.01)
    assert not any(entry.endswith("/cancel") for entry in log)


def test_a_slow_server_is_not_taken_for_a_restart() -> None:
    """A read timeout means a server that is there: the client's timeout bounds the call (it
    was asked again for 120 s, as a restarting server is)."""
    asked: list[str] = []

    def slow(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        raise httpx.ReadTimeout("timed out", request=request)

    results = _both(httpx.MockTransport(slow), lambda c: c.wait(TASK, poll_s=0.01))
    assert all(isinstance(r, httpx.ReadTimeout) for r in results), results
    assert len(asked) == 2  # once each


def test_a_stream_whose_connection_breaks_is_stream_incomplete_too() -> None:
    """A killed server leaves its chunked body cut short: httpx raises RemoteProtocolError
    (incomplete chunked read), which a caller catching RISError, as documented, missed."""

    class Broken(httpx.SyncByteStream, httpx.AsyncByteStream):
        def __iter__(self) -> Any:
            yield sse(("token", {"text": "h"}))
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

        async def __aiter__(self) -> Any:
            yield sse(("token", {"text": "h"}))
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    transport = httpx.MockTransport(lambda _r: httpx.Response(200, stream=Broken()))
    for name in ("generate_stream", "generate_events", "speak_events"):
        for outcome in _both(transport, lambda c, n=name: getattr(c, n)("hi")):
            assert isinstance(outcome, RISError) and outcome.code == "stream_incomplete", (name, outcome)
            assert "RemoteProtocolError" in outcome.message


def test_the_address_and_key_come_from_the_environment_as_the_ris_command_reads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With $RIS_API_KEY exported (as the README says the examples and `ris status` read it),
    ris.Client(url) still sent no key: every call was a 401."""
    seen: list[tuple[str, str | None]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        return httpx.Response(200, json={"status": "ok"})

    monkeypatch.setenv("RIS_URL", "http://gpu-box:9000")
    monkeypatch.setenv("RIS_API_KEY", "from-the-env")
    with Client(transport=httpx.MockTransport(answer)) as c:
        c.health()
    with Client("http://other:1", api_key="given", transport=httpx.MockTransport(answer)) as c:
        c.health()  # what the caller gives wins
    assert seen == [
        ("http://gpu-box:9000/health", "Bearer from-the-env"),
        ("http://other:1/health", "Bearer given"),
    ]


def test_the_calls_that_return_bare_bytes_raise_the_servers_warnings_as_python_warnings() -> None:
    """image() and speak() return bytes: the task's warnings (use_turbo served by a model that
    is not a turbo one) reached generate_image()'s JSON only, never their callers."""
    said = "use_turbo: no turbo model is installed; sd-tiny runs 4 steps"

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/image/generate":
            return httpx.Response(202, json={"task_id": "t", "status": "queued", "warnings": [said]})
        if "/progress/" in request.url.path:
            return httpx.Response(200, json={"task_id": "t", "status": "succeeded", "progress": 1.0})
        if request.url.path == "/api/chat/speak":
            start = {"task_id": "s", "sample_rate": 16000, "tts_model": "e", "warnings": ["voice chosen: zh"]}
            return httpx.Response(200, content=_speak_stream(("start", start), ("done", {})))
        return httpx.Response(200, content=b"\x89PNG")

    calls = (
        (lambda c: c.image("a cat", use_turbo=True), said),
        (lambda c: c.speak("hi"), "voice chosen: zh"),
    )
    for call, expected in calls:
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            results = _both(httpx.MockTransport(server), call)
        assert not [r for r in results if isinstance(r, Exception)], results
        # Once from each client, the sync and the async one; the sync one at the caller's line.
        warned = [w for w in got if w.category is RISWarning]
        assert [str(w.message) for w in warned] == [expected, expected]
        assert warned[0].filename == __file__, warned[0].filename
    # Made an error by the caller's filter: image() gives up, and cancels its task as it does
    # for every other way of giving up (the task id was the caller's only way to stop it).
    log: list[str] = []

    def logged(request: httpx.Request) -> httpx.Response:
        log.append(f"{request.method} {request.url.path}")
        if request.url.path.endswith("/cancel"):
            return httpx.Response(200, json={"task_id": "t", "outcome": "requested"})
        return server(request)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RISWarning)
        with Client("http://ris.test", transport=httpx.MockTransport(logged)) as c:
            with pytest.raises(RISWarning):
                c.image("a cat", use_turbo=True)
    assert log == ["POST /api/image/generate", "POST /api/tasks/t/cancel"]
