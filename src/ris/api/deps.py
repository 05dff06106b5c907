"""Request plumbing every route shares: the engine, task lookup, submission and waiting."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from ris import catalogue
from ris.api.errors import APIError, failure, lane_unavailable, queue_full
from ris.api.streams import next_audio
from ris.lanes import Lane
from ris.lanes.llm import LANE as LLM_LANE
from ris.lanes.tts import NOTHING_TO_SPEAK, speakable, speaks, voice_listing
from ris.languages import language_warning, script_language
from ris.runtime.engine import Engine, LaneUnavailable
from ris.runtime.views import TaskHandle, TaskView
from ris.scheduler import QueueFull

_TASK_ID = re.compile(r"^[0-9a-f]{32}$")
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
# Bodies parsed by `json_body`; the app adds their schemas to the OpenAPI document.
DOCUMENTED_BODIES: list[type[BaseModel]] = []


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body with `json_body(request, model)`."""
    DOCUMENTED_BODIES.append(model)
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


async def json_body(request: Request, model: type[M]) -> M:
    """The JSON body, validated by pydantic-core straight from the bytes: one pass where a
    body parameter costs FastAPI two (json.loads, then validation); measurable on the
    hottest routes. Refusals are a body parameter's: 422 invalid_request (400 on /v1)."""
    ctype = (request.headers.get("content-type") or "application/json").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        error = {"loc": ("body",), "msg": f"send JSON with Content-Type: application/json, not {ctype!r}"}
        raise RequestValidationError([{**error, "type": "content_type"}])
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        errors = e.errors(include_url=False)
    if any(err["type"] == "json_invalid" for err in errors):
        # pydantic-core's parser refuses a lone surrogate ("\ud800") in words about hex
        # escapes; Python's parser keeps it, and the schema's own check (limits.RequestBody)
        # then names the field. Only on this error path: the hot path stays one pass.
        try:
            return model.model_validate(json.loads(body, parse_constant=_no_constants))
        except ValidationError as e:
            errors = e.errors(include_url=False)
        except ValueError:
            pass  # not JSON for Python either: pydantic's words stand
    raise RequestValidationError(errors)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's parser takes NaN and Infinity; JSON does not


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def view_or_404(engine: Engine, task_id: str, lane: str | None = None) -> TaskView:
    """A task from the scheduler or the durable store; ids are checked before any lookup."""
    if not _TASK_ID.match(task_id):
        raise APIError(404, "not_found", "task ids are 32 lowercase hex characters")
    view = engine.lookup(task_id)
    if view is None:
        raise APIError(404, "not_found", f"no task {task_id}")
    if lane is not None and view.lane != lane:
        raise APIError(
            404, "not_found", f"task {task_id} is not a{'n' if lane[0] in 'aeiou' else ''} {lane} task"
        )
    return view


def submit(
    engine: Engine, lane: str, model: str, request: Any, priority: int = 0, timeout_s: float | None = None
) -> TaskHandle:
    try:
        return engine.submit(lane, model, request, priority=priority, timeout_s=timeout_s)
    except QueueFull as e:
        raise queue_full(e) from None
    except LaneUnavailable as e:
        raise lane_unavailable(e) from None


def submit_many(engine: Engine, lane: str, model: str, requests: list[Any]) -> list[TaskHandle]:
    """Queue every request or none (a 429 leaves nothing queued)."""
    try:
        return engine.submit_many(lane, model, requests)
    except QueueFull as e:
        raise queue_full(e) from None
    except LaneUnavailable as e:
        raise lane_unavailable(e) from None


def require_lane(engine: Engine, lane: str) -> None:
    if not engine.lane_enabled(lane):
        raise APIError(503, "lane_unavailable", f"the {lane} lane is disabled in the configuration")


def resolve_model(engine: Engine, lane: str, name: str | None) -> str:
    try:
        return engine.config.lane(lane).resolve_model(name)
    except KeyError as e:
        # An unknown name is the client's mistake (404); no default model is the server's (503).
        raise APIError(
            404 if name is not None else 503,
            "unknown_model",
            unknown_model_message(str(e.args[0]), name, lane),
        ) from None


def unknown_model_message(message: str, name: str | None, lane: str) -> str:
    """The refusal of a model that is not configured; for one the catalogue knows, the exact
    command that gets it (never a silent substitute)."""
    hint = None if name is None else catalogue.pull_hint(name, lane)
    return message if hint is None else f"{hint}. {message}"


def llm_warnings(engine: Engine, model: str, texts: Iterable[str | None]) -> list[str]:
    """Notes for an answer the client may not expect: a prompt in a language the model does
    not write (it is answered all the same)."""
    languages = engine.config.lane(Lane.LLM).models[model].languages
    if not languages:  # unknown: nothing is flagged, and the prompt need not be read
        return []
    text = "\n".join(t for t in texts if t)
    note = language_warning(model, languages, text, _suggestion(text))
    return [] if note is None else [note]


def _suggestion(text: str) -> str | None:
    language = script_language(text)
    return None if language is None else catalogue.writer_of(language, Lane.LLM)


def llm_context(engine: Engine, model: str) -> int | None:
    """The context window of an LLM its worker has reported (the default model, loaded at
    start); None for one that loads on first use, whose worker checks it instead."""
    info = engine.model_infos(Lane.LLM).get(model)
    return None if info is None else info.details.context_tokens


def require_constraining_backend(engine: Engine, model: str, param: str) -> None:
    """Refuse structured output or tools for a model whose backend cannot decode under a
    grammar (transformers): they would be ignored, which is worse than a refusal."""
    backend = engine.config.lane(Lane.LLM).models[model].backend
    if not LLM_LANE.backend(backend).constrains:
        allowed = [name for name, entry in LLM_LANE.backends.items() if entry.constrains]
        raise APIError(
            422,
            "unsupported_for_model",
            f"{param} needs a backend that constrains decoding ({', '.join(sorted(allowed))}); the model "
            f"'{model}' runs on {backend} (GET /api/models shows each model's structured_output and tools)",
            param=param,
        )


class ClientGone(APIError):
    """The client closed its connection before the answer; nobody will read this response."""

    def __init__(self) -> None:
        super().__init__(499, "client_closed_request", "the client closed the connection")


async def _disconnected(request: Request) -> None:
    """Return when the client has closed the connection. Once the body is read, the server's
    receive() answers only `http.disconnect`, at once when it happens (no polling)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_gone(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result; if the client closes the connection first, `work` is cancelled and
    ClientGone raised, so a client that gave up does not hold a lane."""
    gone: asyncio.Future[None] = asyncio.ensure_future(_disconnected(request))
    done: asyncio.Future[T] = asyncio.ensure_future(work)
    try:
        either: list[asyncio.Future[Any]] = [gone, done]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            raise ClientGone
        return done.result()
    finally:
        gone.cancel()
        if not done.done():
            done.cancel()
            done.add_done_callback(_retrieve)  # its CancelledError is expected: no log noise


def _retrieve(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()


async def wait_task(engine: Engine, handle: TaskHandle, request: Request) -> TaskView:
    """Wait for the task's end; cancel it if the client goes away first (streaming routes
    do the same as they write)."""
    return (await wait_tasks(engine, [handle], request))[0]


async def wait_tasks(engine: Engine, handles: list[TaskHandle], request: Request) -> list[TaskView]:
    """`wait_task` for several tasks of one request: all are cancelled if the client leaves."""
    try:
        return list(await unless_gone(request, asyncio.gather(*(h.done for h in handles))))
    except BaseException:
        for h in handles:  # a future cancelled with the wait is a task still running
            if h.done.cancelled() or not h.done.done():
                engine.cancel(h.task_id)
        raise


def pick_tts_model(engine: Engine, model: str | None, voice: str | None) -> str:
    """The TTS model a request names, else the first configured one that speaks its voice.
    A named model must speak the voice asked for: refused here, before queueing, as its worker
    would refuse it (the worker is the judge while it has not reported its voices yet)."""
    cfg = engine.config.lane(Lane.TTS)
    infos = engine.model_infos(Lane.TTS)
    if model is not None:
        name = resolve_model(engine, Lane.TTS, model)
        info = infos.get(name)
        if voice is not None and info is not None and not speaks(info.details.voices, voice):
            raise APIError(
                422,
                "unknown_voice",
                f"TTS model {name!r} does not speak voice {voice!r}; "
                f"its voices: {voice_listing(info.details.voices)}",
                param="voice",
            )
        return name
    if voice is None:
        return resolve_model(engine, Lane.TTS, None)
    order = [cfg.default_model] + [n for n in cfg.models if n != cfg.default_model]
    for candidate in order:
        info = infos.get(candidate or "")
        if info and speaks(info.details.voices, voice):
            return info.name
    if not infos:
        raise APIError(
            503, "lane_unavailable", "the TTS worker is still starting", headers={"Retry-After": "5"}
        )
    known = sorted({v for i in infos.values() for v in i.details.voices[:1]} | {"en-US", "zh-CN"})
    raise APIError(
        422,
        "unknown_voice",
        f"no configured TTS model speaks voice {voice!r}; examples: {', '.join(known)}",
        param="voice",
    )


def tts_rate(engine: Engine, model: str) -> int:
    """The sample rate of a loaded TTS model (streams need it before the first chunk)."""
    info = engine.model_infos(Lane.TTS).get(model)
    if info is None or not info.details.sample_rate:
        raise APIError(503, "lane_unavailable", "the TTS worker is still starting", {"Retry-After": "5"})
    return info.details.sample_rate


def require_speakable(text: str, status: int = 422, param: str | None = None) -> None:
    """Refuse, before anything is queued, text in which no engine has anything to say."""
    if not speakable(text):
        raise APIError(status, "nothing_to_speak", NOTHING_TO_SPEAK, param=param)


async def first_audio(engine: Engine, handle: TaskHandle, request: Request) -> bytes:
    """A TTS task's first PCM chunk. A task that ends without one answers with its error
    here, while the response's status line is still unsent: a stream must not begin with
    200 and a WAV header for audio that never comes. A client that leaves meanwhile takes
    its task with it."""
    try:
        pcm = await unless_gone(request, next_audio(handle))
    except BaseException:
        engine.cancel(handle.task_id)
        raise
    if pcm is None:
        view = await handle.done
        if not view.succeeded:
            raise failure(view)
        raise APIError(500, "synthesis_empty", "the speech engine produced no audio")
    return pcm
