"""Every SDK call, written once, as a generator of HTTP exchanges (no I/O of its own).

An operation yields what it needs, a `Call` (one request; its response is sent back in) or a
`Pause`, and returns its result. `Client` runs operations with httpx.Client and time.sleep,
`AsyncClient` awaits them with httpx.AsyncClient and asyncio.sleep (client.py), so the two
cannot drift apart: both get their methods from `Operations` through the `op` and `stream_op`
descriptors, which also type them (`T` on Client, `Awaitable[T]` on AsyncClient).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import inspect
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import httpx

from ris.sdk._common import (
    FINAL_STATES,
    Generation,
    RISError,
    Speech,
    SSEDecoder,
    TaskTimeout,
    check_final,
    error_from,
    generation_from,
    llm_body,
    set_by_the_call,
    stream_failure,
    warn,
    wav_bytes,
)

T = TypeVar("T")
P = ParamSpec("P")


@dataclass(frozen=True)
class Call:
    """One HTTP request of an operation."""

    method: str
    url: str
    json: Any = None
    params: dict[str, Any] | None = None
    # Retry 429 and 503 answers (honouring Retry-After) up to the client's max_retries.
    retry: bool = True
    # Raise RISError for an error answer; False hands any answer back (health, ready).
    check: bool = True


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Undo:
    """What to send, best-effort, if the operation is given up before it returns (its caller's
    timeout, a cancelled asyncio task, Ctrl-C): a task it started and hid the id of is
    cancelled, not left running with no one to ask for it. None: nothing any more."""

    call: Call | None


Op = Generator[Call | Pause | Undo, Any, T]


class LineDecoder(Generic[T]):
    """Turns a streamed response's lines into items (and error events into RISError)."""

    def feed(self, line: str) -> list[T]:
        raise NotImplementedError

    def end(self) -> list[T]:
        """The response ended: the last items, or RISError if it ended short of its end."""
        return []


@dataclass(frozen=True)
class StreamSpec(Generic[T]):
    call: Call
    decoder: Callable[[], LineDecoder[T]]


class SyncRunner:
    """Base of clients that run operations to completion (Client)."""

    def _run(self, operation: Op[T]) -> T:
        raise NotImplementedError

    def _iterate(self, spec: StreamSpec[T]) -> Generator[T, None, None]:
        raise NotImplementedError


class AsyncRunner:
    """Base of clients whose operations are awaited (AsyncClient)."""

    async def _run(self, operation: Op[T]) -> T:
        raise NotImplementedError

    def _iterate(self, spec: StreamSpec[T]) -> AsyncGenerator[T, None]:
        raise NotImplementedError


def _bind(obj: Any, fn: Callable[..., Any], runner: str) -> Callable[..., Any]:
    """`fn` as a method of `obj` whose result goes through `obj.<runner>`; on an AsyncRunner a
    real coroutine (or async generator) function, so inspect and mocks see what it is."""
    run = getattr(obj, runner)
    bound: Callable[..., Any]
    if not isinstance(obj, AsyncRunner):

        def bound(*args: Any, **kwargs: Any) -> Any:
            return run(fn(obj, *args, **kwargs))

    elif runner == "_run":

        async def bound(*args: Any, **kwargs: Any) -> Any:
            return await run(fn(obj, *args, **kwargs))

    else:

        async def bound(*args: Any, **kwargs: Any) -> Any:
            # Closed with this one: the caller's aclose() hangs up the HTTP stream then, as
            # close() does on Client, and the server cancels the task. Left open, the inner
            # generator held the connection (and the model's work) until the collector came.
            async with contextlib.aclosing(run(fn(obj, *args, **kwargs))) as items:
                async for item in items:
                    yield item

    bound = functools.wraps(fn)(bound)
    sig = inspect.signature(fn)  # shown without `self`, as a bound method's
    bound.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])  # type: ignore[attr-defined]
    return bound


S = TypeVar("S")
A = TypeVar("A")


class Method(Generic[P, S, A]):
    """One SDK call as a method: `S` is what it returns on Client, `A` on AsyncClient."""

    def __init__(self, fn: Callable[..., Any], runner: str) -> None:
        self.fn, self.runner, self.__doc__ = fn, runner, fn.__doc__

    @overload
    def __get__(self, obj: SyncRunner, owner: type) -> Callable[P, S]: ...
    @overload
    def __get__(self, obj: AsyncRunner, owner: type) -> Callable[P, A]: ...
    def __get__(self, obj: Any, owner: type) -> Any:
        return self if obj is None else _bind(obj, self.fn, self.runner)


def op(fn: Callable[Concatenate[Any, P], Op[T]]) -> Method[P, T, Awaitable[T]]:
    """An operation: run to completion on Client, awaited on AsyncClient."""
    return Method(fn, "_run")


def stream_op(
    fn: Callable[Concatenate[Any, P], StreamSpec[T]],
) -> Method[P, Generator[T, None, None], AsyncGenerator[T, None]]:
    """A streaming operation: a generator on Client, an async generator on AsyncClient (typed
    as such: close() and aclose() hang up before the end)."""
    return Method(fn, "_iterate")


# ----- decoders of the seed API's event streams -------------------------------------------


# A seed API event stream that ended with neither `done` nor `error`: the server stopped (or
# a proxy cut it) mid-answer. The text so far is not the whole answer, and must not pass for it.
def _incomplete(what: str) -> RISError:
    return RISError(502, "stream_incomplete", f"{what} ended before its end (the server stopped?)")


class _Events(LineDecoder[tuple[str, dict[str, Any]]]):
    """A seed API event stream as (event, data), its `error` event raised as RISError, and an
    end with neither `done` nor `error` as RISError stream_incomplete."""

    what = "the answer's stream"

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._done = False

    def feed(self, line: str) -> list[tuple[str, dict[str, Any]]]:
        event = self._sse.feed(line)
        if event is None:
            return []
        name, data = event
        if name == "error":
            raise stream_failure(data)
        self._done = self._done or name == "done"
        return [(name, data)]

    def end(self) -> list[tuple[str, dict[str, Any]]]:
        last = self.feed("")  # an event the stream's last blank line did not close
        if not self._done:
            raise _incomplete(self.what)
        return last


class _Tokens(LineDecoder[str]):
    """The text of a generate stream's token events (the events: _Events)."""

    def __init__(self) -> None:
        self._events = _Events()

    def feed(self, line: str) -> list[str]:
        return [data["text"] for name, data in self._events.feed(line) if name == "token"]

    def end(self) -> list[str]:
        return [data["text"] for name, data in self._events.end() if name == "token"]


class _SpeakEvents(_Events):
    what = "the spoken answer"

    def feed(self, line: str) -> list[tuple[str, dict[str, Any]]]:
        events = super().feed(line)
        for name, data in events:
            if name == "audio":
                data["pcm"] = base64.b64decode(data["pcm"])
        return events


def _spoken(text: str) -> tuple[int, bytes]:
    """The sample rate and PCM of a whole speak events stream; its `error` event is RISError.
    A stream that ended with neither `done` nor `error` was cut short (the server stopped): a
    RISError too, not a shorter answer passed off as the whole."""
    decoder, rate, pieces = _SpeakEvents(), 0, []
    for name, data in [event for line in text.splitlines() for event in decoder.feed(line)] + decoder.end():
        if name == "start":
            rate = int(data["sample_rate"])
            warn(data.get("warnings"))  # bytes come back: the answer's warnings would be lost
        elif name == "audio":
            pieces.append(data["pcm"])
    return rate, b"".join(pieces)


def _json(resp: httpx.Response) -> dict[str, Any]:
    return dict(resp.json())


def _save(data: bytes, path: str | Path | None) -> bytes:
    if path is not None:
        Path(path).write_bytes(data)
    return data


class Operations:
    """The SDK's calls. On `ris.Client` each returns its result; on `ris.AsyncClient` each is
    awaited (streams: iterated with `async for`). 429 and 503 answers are retried up to
    `max_retries` times, honouring Retry-After, except speak's and speak_events' and a 429
    for too many wrong API keys. A stream closed before its end (close(), or
    aclose() on AsyncClient) hangs up at once, and the server cancels its task."""

    # ----- LLM -----------------------------------------------------------------------------

    @op
    def generate(
        self, /, prompt: str | None = None, *, messages: list[dict[str, str]] | None = None, **options: Any
    ) -> Op[Generation]:
        """Generate text; `prompt` is the user's message (`raw=True`: plain completion). Options:
        model, system, raw, temperature, top_p, max_tokens, stop, seed, priority, json_schema (a
        JSON Schema the answer must match, enforced while decoding)."""
        options = set_by_the_call("generate", options, {"stream": False}, "generate_stream() streams")
        resp = yield Call("POST", "/api/llm/generate", json=llm_body(prompt, messages, **options))
        return generation_from(resp.json())

    @stream_op
    def generate_stream(
        self, /, prompt: str | None = None, *, messages: list[dict[str, str]] | None = None, **options: Any
    ) -> StreamSpec[str]:
        """Text pieces as the model produces them (options as generate() takes them). A failure
        is a RISError with its code, before the first piece or after it; so is a stream cut off
        before its end (`stream_incomplete`: the server stopped). generate_events() gives the
        task id, finish_reason, usage and warnings too."""
        options = set_by_the_call(
            "generate_stream", options, {"stream": True}, "generate() waits for the whole text"
        )
        body = llm_body(prompt, messages, **options)
        return StreamSpec(Call("POST", "/api/llm/generate", json=body), _Tokens)

    @stream_op
    def generate_events(
        self, /, prompt: str | None = None, *, messages: list[dict[str, str]] | None = None, **options: Any
    ) -> StreamSpec[tuple[str, dict[str, Any]]]:
        """(event, data) as they happen: start (task_id, model, warnings), token (text), then
        done, whose data is the whole answer as generate() returns it in JSON (task_id, model,
        text, finish_reason, usage, timings, warnings). Failures and a cut-off stream raise as
        generate_stream()'s do."""
        options = set_by_the_call(
            "generate_events", options, {"stream": True}, "generate() waits for the whole text"
        )
        body = llm_body(prompt, messages, **options)
        return StreamSpec(Call("POST", "/api/llm/generate", json=body), _Events)

    # ----- TTS -----------------------------------------------------------------------------

    @op
    def synthesize(
        self,
        /,
        text: str,
        *,
        voice: str | None = None,
        speed: float = 1.0,
        model: str | None = None,
        format: str | None = None,
        path: str | Path | None = None,
        **options: Any,
    ) -> Op[Speech]:
        """Synthesize speech; returns a Speech (its task id, model, voice, rate, duration and
        the audio's bytes; written to `path` if given): WAV, or `format` ("mp3", "opus", "aac",
        "flac", "wav", "pcm"). A server that restarts between the synthesis and the audio's
        download is waited for, as wait() waits (the audio outlives a restart)."""
        body = {"text": text, "voice": voice, "speed": speed, "model": model, "format": format, **options}
        resp = yield Call(
            "POST", "/api/tts/synthesize", json={k: v for k, v in body.items() if v is not None}
        )
        meta = resp.json()
        audio = (yield from _fetch_riding_out(meta["audio_url"])).content
        speech = Speech(
            meta["task_id"],
            meta["model"],
            meta["voice"],
            meta["sample_rate"],
            meta["duration_s"],
            audio,
            tuple(meta.get("warnings", ())),
        )
        if path is not None:
            speech.save(path)
        return speech

    # ----- images --------------------------------------------------------------------------

    @op
    def generate_image(self, /, prompt: str, **options: Any) -> Op[dict[str, Any]]:
        """Queue an image; returns at once with task_id, status and queue_position.
        Options: width, height, steps, guidance, seed, negative_prompt, use_turbo, model, priority."""
        body = {"prompt": prompt, **{k: v for k, v in options.items() if v is not None}}
        return _json((yield Call("POST", "/api/image/generate", json=body)))

    @op
    def progress(self, /, task_id: str) -> Op[dict[str, Any]]:
        return _json((yield Call("GET", f"/api/image/progress/{task_id}")))

    @op
    def wait(
        self,
        /,
        task_id: str,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll_s: float = 0.25,
        timeout: float | None = None,
    ) -> Op[dict[str, Any]]:
        """Poll an image task until it ends; return its last progress, or raise RISError if it
        failed (404 not_found for an id that is not an image task's), TaskTimeout (a
        TimeoutError with the `task_id`) once `timeout` seconds passed with the task still
        queued or running (it is not cancelled: cancel(task_id) does that).
        A server restart is ridden out (the task is durable): httpx's error only once the
        server has not answered for RIDE_OUT_RESTART_S (120 s), or by `timeout`, whichever
        comes first (a request under way is not cut short: its own HTTP timeout bounds it)."""
        return (yield from _wait(task_id, on_progress, poll_s, timeout))

    @op
    def result(self, /, task_id: str, path: str | Path | None = None) -> Op[bytes]:
        """The PNG of a finished image task (written to `path` too if given)."""
        return _save((yield Call("GET", f"/api/image/result/{task_id}")).content, path)

    @op
    def image(
        self,
        /,
        prompt: str,
        *,
        path: str | Path | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Op[bytes]:
        """Generate, wait and fetch: the PNG bytes (written to `path` if given). `on_progress`
        and `timeout` as wait() takes them (a progress bar; TaskTimeout, a TimeoutError with
        the `task_id`, past `timeout`); other options go to the request (width, height, steps,
        seed, ...). Given up before the picture came (`timeout`, a cancelled asyncio task, an
        interrupt), the task is cancelled: its id was the caller's only way to stop it."""
        body = {"prompt": prompt, **{k: v for k, v in options.items() if v is not None}}
        queued = (yield Call("POST", "/api/image/generate", json=body)).json()
        task_id = queued["task_id"]
        yield Undo(Call("POST", f"/api/tasks/{task_id}/cancel", retry=False))
        # Bytes come back: the task's warnings would be lost. After the undo: a warning made an
        # error (warnings' "error" filter) cancels the task as any other way of giving up.
        warn(queued.get("warnings"))
        yield from _wait(task_id, on_progress, 0.25, timeout)
        yield Undo(None)  # it ended: nothing left to stop
        return _save((yield Call("GET", f"/api/image/result/{task_id}")).content, path)

    @op
    def image_tasks(self, /, status: str | None = None, limit: int = 100) -> Op[list[dict[str, Any]]]:
        params = {k: v for k, v in (("status", status), ("limit", limit)) if v is not None}
        return list((yield Call("GET", "/api/image/tasks", params=params)).json()["tasks"])

    # ----- speaking pipeline ---------------------------------------------------------------

    @op
    def speak(
        self,
        /,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        path: str | Path | None = None,
        **options: Any,
    ) -> Op[bytes]:
        """An answer spoken as it is generated: the WAV bytes (written to `path` if given); raw
        PCM with `audio_format="pcm"`. Options: model, voice, speed, tts_model, max_tokens,
        temperature, seed. A failure after the first sound (a later sentence's synthesis, the
        LLM) is a RISError with its code, as one before it: the audio is read as the events
        stream, which ends in the error, where a WAV stream could only break off (httpx's
        RemoteProtocolError, no reason). Not retried: an answer refused after it began to be
        spoken would be spoken twice."""
        options = set_by_the_call(
            "speak", options, {"stream_format": "events"}, "speak_events() gives the events"
        )
        pcm_only = options.get("audio_format") == "pcm"
        body = llm_body(prompt, messages, **options)
        resp = yield Call("POST", "/api/chat/speak", json=body, retry=False)
        rate, pcm = _spoken(resp.text)
        return _save(pcm if pcm_only else wav_bytes(rate, pcm), path)

    @stream_op
    def speak_events(
        self, /, prompt: str | None = None, *, messages: list[dict[str, str]] | None = None, **options: Any
    ) -> StreamSpec[tuple[str, dict[str, Any]]]:
        """(event, data) as they happen: start (task_id, sample_rate, tts_model), text, audio
        (data["pcm"] as bytes), llm_done, done. A failure raises RISError with its code; so
        does a stream cut off before `done` (`stream_incomplete`)."""
        options = set_by_the_call(
            "speak_events", options, {"stream_format": "events"}, "speak() returns the audio"
        )
        body = llm_body(prompt, messages, **options)
        return StreamSpec(Call("POST", "/api/chat/speak", json=body, retry=False), _SpeakEvents)

    # ----- tasks and status ----------------------------------------------------------------

    @op
    def task(self, /, task_id: str) -> Op[dict[str, Any]]:
        return _json((yield Call("GET", f"/api/tasks/{task_id}")))

    @op
    def tasks(
        self, /, *, lane: str | None = None, state: str | None = None, limit: int | None = None
    ) -> Op[list[dict[str, Any]]]:
        """Recent tasks, newest first, of one lane and state if given (GET /api/tasks; a lane or
        state the server does not know is refused with 422), those kept from before a restart
        (images, speech) included."""
        params = {k: v for k, v in {"lane": lane, "state": state, "limit": limit}.items() if v is not None}
        return list((yield Call("GET", "/api/tasks", params=params)).json()["tasks"])

    @op
    def cancel(self, /, task_id: str) -> Op[dict[str, Any]]:
        return _json((yield Call("POST", f"/api/tasks/{task_id}/cancel")))

    @op
    def delete(self, /, task_id: str) -> Op[dict[str, Any]]:
        """Delete a finished task now, its record and its result file with it (DELETE
        /api/tasks/{id}); a task still queued or running is refused (409 task_not_finished):
        cancel it first."""
        return _json((yield Call("DELETE", f"/api/tasks/{task_id}")))

    @op
    def health(self, /) -> Op[bool]:
        """Whether the server answers /health: False for any other answer and for no answer (a
        server not running, not reachable, or timing out), where other calls raise httpx's
        error."""
        try:
            resp = yield Call("GET", "/health", retry=False, check=False)
        except httpx.TransportError:
            return False
        return bool(resp.status_code == 200)

    @op
    def ready(self, /) -> Op[dict[str, Any]]:
        """The server's readiness: `{"ready": bool, "lanes": {...}}` as /ready answers it, 200
        or 503 (a lane's workers not up yet). Any other answer raises RISError."""
        resp = yield Call("GET", "/ready", retry=False, check=False)
        # A 503 is an answer only as /ready's own body: the connection cap's plain-text 503 or
        # a proxy's is not the server saying it is not ready.
        if resp.status_code in (200, 503):
            try:
                body = resp.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and "ready" in body:
                return body
        raise error_from(resp)

    @op
    def stats(self, /) -> Op[dict[str, Any]]:
        return _json((yield Call("GET", "/api/stats")))

    @op
    def models(self, /) -> Op[dict[str, Any]]:
        return _json((yield Call("GET", "/api/models")))


# How long wait() keeps asking a server that does not answer (a restart: its models load
# before it listens again), and how often.
RIDE_OUT_RESTART_S = 120.0
RESTART_POLL_S = 1.0


def _unanswered(e: httpx.TransportError) -> bool:
    """Whether `e` says the server is not there (a restart: refused, or the connection cut),
    which is ridden out; not that it is slow to answer (a timeout: the client's `timeout`
    bounds a call, and a read timeout was asked again for RIDE_OUT_RESTART_S)."""
    return not isinstance(e, httpx.TimeoutException) or isinstance(e, httpx.ConnectTimeout)


def _fetch_riding_out(url: str) -> Generator[Call | Pause, Any, httpx.Response]:
    """GET `url`, asking again for RIDE_OUT_RESTART_S while the server does not answer (a
    synthesis made, then its server restarted: the audio was lost to the caller with a bare
    ConnectError, though it was kept and served after the restart)."""
    unanswered_since: float | None = None
    while True:
        try:
            resp: httpx.Response = yield Call("GET", url)
            return resp
        except httpx.TransportError as e:
            if not _unanswered(e):
                raise
            now = time.monotonic()
            unanswered_since = now if unanswered_since is None else unanswered_since
            if now - unanswered_since > RIDE_OUT_RESTART_S:
                raise
            yield Pause(RESTART_POLL_S)


def _wait(
    task_id: str,
    on_progress: Callable[[dict[str, Any]], None] | None,
    poll_s: float,
    timeout: float | None,
) -> Op[dict[str, Any]]:
    deadline = None if timeout is None else time.monotonic() + timeout
    unanswered_since: float | None = None
    while True:
        try:
            prog = _json((yield Call("GET", f"/api/image/progress/{task_id}")))
        except httpx.TransportError as e:
            if not _unanswered(e):
                raise
            # An image task outlives a restart of its server (the durable queue): a wait that
            # raised ConnectError at the restart's first refused connection left the client
            # without the picture the server then made. Ridden out for a bounded time.
            now = time.monotonic()
            unanswered_since = now if unanswered_since is None else unanswered_since
            if now - unanswered_since > RIDE_OUT_RESTART_S or (deadline is not None and now >= deadline):
                raise
            yield Pause(RESTART_POLL_S if deadline is None else max(0.0, min(RESTART_POLL_S, deadline - now)))
            continue
        unanswered_since = None
        if on_progress is not None:
            on_progress(prog)
        if prog["status"] in FINAL_STATES:
            return check_final(prog)
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TaskTimeout(task_id, f"task {task_id} still {prog['status']} after {timeout} s")
        # Never past the deadline: one last look when it comes, then the answer.
        yield Pause(poll_s if left is None else min(poll_s, left))
