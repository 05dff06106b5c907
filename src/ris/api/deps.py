"""Request plumbing every route shares: bodies, the engine, model names, task lookup,
waiting, and cancelling what a client that left no longer waits for. What only
some routes need lives beside them: llm_support.py (text), tts_support.py (speech)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar, overload

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from ris import catalogue
from ris.api.errors import NO_RETRY, APIError, failure
from ris.api.security import CLIENT_STATE, PRINCIPAL_STATE
from ris.lanes.base import LaneKind, LaneResult
from ris.lanes.llm import TextDelta
from ris.lanes.names import a_lane
from ris.messages import LaneRequest
from ris.runtime.engine import Engine
from ris.runtime.tenancy import ANONYMOUS, NOBODY, Principal
from ris.runtime.views import TaskHandle, TaskView

_TASK_ID = re.compile(r"^[0-9a-f]{32}$")
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Req = TypeVar("Req", bound=LaneRequest)
Res = TypeVar("Res", bound=LaneResult)
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
    hottest routes. Refusals are a body parameter's: 422 invalid_request (400 on /v1).

    A body is read as JSON whatever its Content-Type when the request comes from no web page
    (no Origin header): `curl -d '{...}'` sends application/x-www-form-urlencoded, and
    Ollama's documented examples are such lines (Ollama reads any body as JSON). From a page,
    only a JSON type: the kinds of body a page may post to another site without asking first
    (forms, text/plain) are refused, as cross-origin requests are (security.Guard)."""
    ctype = (request.headers.get("content-type") or "application/json").split(";")[0].strip().lower()
    typed_json = ctype == "application/json" or ctype.endswith("+json")
    if "origin" in request.headers and not typed_json:
        raise _wrong_type(ctype)
    body = await request.body()
    if not body.strip():  # curl -X POST, a client that forgot json=: said as that, any type
        raise _missing_body()
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        errors = e.errors(include_url=False)
    invalid = [err for err in errors if err["type"] == "json_invalid"]
    if any("recursion limit" in err["msg"] for err in invalid):
        # pydantic-core stops at a fixed depth; Python's parser would go on (and everything
        # that walks a schema after it would meet Python's recursion limit: a 500).
        raise _too_deep()
    if invalid:
        # pydantic-core's parser refuses a lone surrogate ("\ud800") in words about hex
        # escapes; Python's parser keeps it, and the schema's own check (limits.RequestBody)
        # then names the field. Only on this error path: the hot path stays one pass.
        try:
            parsed = json.loads(body, parse_constant=_no_constants)
            if _deeper_than(parsed, MAX_JSON_DEPTH):
                raise _too_deep()
            return model.model_validate(parsed)
        except ValidationError as e:
            errors = e.errors(include_url=False)
        except (ValueError, RecursionError) as e:
            if not typed_json:  # read as JSON whatever its type (no web page sent it): why it is
                # not JSON (curl -d 'a=b', a truncated line): "send Content-Type:
                # application/json" blamed a type that was not the fault
                raise _wrong_type(ctype, e) from None
            # not JSON for Python either: pydantic's words stand
    raise RequestValidationError(errors)


def _wrong_type(ctype: str, why: Exception | None = None) -> RequestValidationError:
    """A body that is not JSON sent with another type (or any non-JSON type from a web page).
    `why`: the parser's reason, for a body read as JSON anyway (curl -d, Ollama's examples):
    a truncated JSON line must be told as that, not as a wrong Content-Type."""
    if why is not None:
        msg = (
            f"the body is not valid JSON ({why}): send a JSON object (Content-Type: application/json; "
            f"a body is read as JSON whatever its type, here {ctype!r})"
        )
    else:
        msg = f"send JSON with Content-Type: application/json, not {ctype!r}"
    error = {"loc": ("body",), "msg": msg}
    return RequestValidationError([{**error, "type": "content_type"}])


def _missing_body() -> RequestValidationError:
    error = {"loc": ("body",), "msg": "the request has no body: send a JSON object", "type": "missing"}
    return RequestValidationError([error])


# As deep as pydantic-core's own parser goes (it refuses more in words about a recursion limit),
# so a body refused there is refused here too, by the same rule.
MAX_JSON_DEPTH = 200


def _too_deep() -> RequestValidationError:
    error = {
        "loc": ("body",),
        "msg": f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
        "type": "json_too_deep",
    }
    return RequestValidationError([error])


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests containers more than `limit` deep below the top one, as
    pydantic-core counts (walked without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth > limit:
                return True
            stack.extend((x, depth + 1) for x in item if isinstance(x, (dict, list)))
    return False


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's parser takes NaN and Infinity; JSON does not


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


@overload
def view_or_404(request: Request, task_id: str) -> TaskView[LaneResult]: ...


@overload
def view_or_404(request: Request, task_id: str, kind: LaneKind[Any, Any, Res]) -> TaskView[Res]: ...


def view_or_404(request: Request, task_id: str, kind: LaneKind[Any, Any, Any] | None = None) -> TaskView[Any]:
    """A task from the scheduler or the durable store, if the request's key may see it (its
    own, or any for an admin); ids are checked before any lookup. Another user's task is
    answered exactly as an id that does not exist, so ids cannot be probed. With `kind`, only
    a task of that kind's lane is found (its view then holds its result type)."""
    if not _TASK_ID.match(task_id):
        raise APIError(404, "not_found", "task ids are 32 lowercase hex characters")
    engine, viewer = engine_of(request), viewer_of(request)
    view = engine.lookup(task_id, viewer)
    if view is None:
        removed = engine.removal(task_id, viewer)
        if removed is not None:  # it was: say why it is gone, not that it never was
            when = (
                datetime.fromtimestamp(removed.at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            )
            raise APIError(
                410,
                "task_expired",
                f"task {task_id} was removed at {when} by the retention policy: {removed.why}; "
                "its record and its result are gone",
                NO_RETRY,
            )
        raise APIError(404, "not_found", f"no task {task_id}")
    if kind is not None and view.lane != kind.name:
        lane = kind.name
        raise APIError(404, "not_found", f"task {task_id} is not {a_lane(lane)} task")
    return view


def viewer_of(request: Request) -> Principal:
    """Who a request is, for ownership (ris.runtime.tenancy): the principal of the key the
    guard let it in with; with no key configured, the anonymous admin."""
    principal: Principal | None = request.scope.get("state", {}).get(PRINCIPAL_STATE)
    if principal is not None:
        return principal
    return NOBODY if engine_of(request).config.server.api_keys else ANONYMOUS


def owner_of(request: Request) -> str | None:
    """The owner of the tasks a request makes."""
    return viewer_of(request).owner


def client_of(request: Request) -> str:
    """Who a request is from, for fairness across clients: the key it was let in with (a
    fingerprint the guard left, never the key), else the peer's address (a reverse proxy's,
    behind one)."""
    client: str | None = request.scope.get("state", {}).get(CLIENT_STATE)
    return client or "address:" + (request.client.host if request.client else "unknown")


def require_lane(engine: Engine, lane: str) -> None:
    if not engine.lane_enabled(lane):
        raise APIError(503, "lane_unavailable", f"the {lane} lane is disabled in the configuration", NO_RETRY)


def resolve_model(engine: Engine, lane: str, name: str | None) -> str:
    try:
        return engine.config.lane(lane).resolve_model(name)
    except KeyError as e:
        for other, cfg in engine.config.lanes.items():
            if name is not None and other != lane and cfg.enabled and name in cfg.models:
                # A model this server has, on another lane (as /v1 says it: model_wrong_lane);
                # "unknown model" was wrong about it.
                mine = ", ".join(engine.config.lane(lane).models) or "none"
                raise APIError(
                    422,
                    "model_wrong_lane",
                    f"{name} is {a_lane(other)} model; the {lane} lane's models: {mine}",
                ) from None
        # An unknown name is the client's mistake (404); no default model is the server's (503),
        # which no retry mends (its config names none): x-should-retry, not Retry-After.
        raise APIError(
            404 if name is not None else 503,
            "unknown_model",
            unknown_model_message(str(e.args[0]), name, lane),
            headers=None if name is not None else {"x-should-retry": "false"},
        ) from None


def unknown_model_message(message: str, name: str | None, lane: str) -> str:
    """The refusal of a model that is not configured; for one the catalogue knows, the exact
    command that gets it (never a silent substitute)."""
    hint = None if name is None else catalogue.pull_hint(name, lane)
    return message if hint is None else f"{hint}. {message}"


class ClientGone(APIError):
    """The client closed its connection before the answer; nobody will read this response."""

    def __init__(self) -> None:
        super().__init__(499, "client_closed_request", "the client closed the connection")


async def _disconnected(request: Request) -> None:
    """Return when the client has closed the connection. Once the body is read, the server's
    receive() answers only `http.disconnect`, at once when it happens (no polling)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# How long a wait goes unwatched: a task that ends sooner is answered without the watcher task
# (~10 us of the API process's ~390 per no-op generation, measured by removing it); a client
# that leaves meanwhile is seen that much later, when the watch begins.
WATCH_AFTER_S = 0.05


async def unless_gone(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result; if the client closes the connection first, `work` is cancelled and
    ClientGone raised, so a client that gave up does not hold a lane."""
    done: asyncio.Future[T] = asyncio.ensure_future(work)
    gone: asyncio.Future[None] | None = None
    left = False

    def client_left(watcher: asyncio.Future[None]) -> None:
        nonlocal left
        if not watcher.cancelled():  # ended by the client, not by the finally below
            left = True
            done.cancel()  # which wakes this task

    def watch() -> None:
        nonlocal gone
        gone = asyncio.ensure_future(_disconnected(request))
        gone.add_done_callback(client_left)

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, watch)
    try:
        return await done
    except asyncio.CancelledError:
        me = asyncio.current_task()
        # ClientGone only for the client's leaving: a cancellation of this task itself (the
        # server stopping, a timeout around it) stays a cancellation.
        if left and (me is None or me.cancelling() == 0):
            raise ClientGone from None
        raise
    finally:
        timer.cancel()
        if gone is not None:
            gone.cancel()
        if not done.done():
            done.cancel()
            done.add_done_callback(_retrieve)  # its CancelledError is expected: no log noise


def _retrieve(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()


async def wait_task(engine: Engine, handle: TaskHandle[Res], request: Request) -> TaskView[Res]:
    """Wait for the task's end; cancel it if the client goes away first (streaming routes
    do the same as they write: `cancel_unless_ended`)."""
    return (await wait_tasks(engine, [handle], request))[0]


async def wait_tasks(engine: Engine, handles: list[TaskHandle[Res]], request: Request) -> list[TaskView[Res]]:
    """`wait_task` for several tasks of one request: all are cancelled if the client leaves,
    and the others when one fails (its error is raised then: the request's answer is that
    error, and its siblings' images would be unreachable)."""
    try:
        if len(handles) == 1:  # the task's own future: no gathering future around it
            return [await unless_gone(request, handles[0].done)]
        return await unless_gone(request, _all_or_a_failure(handles))
    except BaseException:
        for h in handles:  # a future cancelled with the wait is a task still running
            if h.done.cancelled() or not h.done.done():
                engine.cancel(h.task_id)
        raise


async def _all_or_a_failure(handles: list[TaskHandle[Res]]) -> list[TaskView[Res]]:
    pending: set[asyncio.Future[TaskView[Res]]] = {h.done for h in handles}
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for ended in done:
            if not ended.result().succeeded:
                raise failure(ended.result())
    return [h.done.result() for h in handles]


def result_or_failure(view: TaskView[Res]) -> Res:
    """A finished task's result; the error its failure answers with if it did not succeed."""
    if view.succeeded and view.result is not None:
        return view.result
    raise failure(view)


async def first_or_failure(
    request: Request, engine: Engine, handle: TaskHandle[Any], first: Awaitable[T | None]
) -> T | None:
    """A streamed task's first piece (`first`), awaited while the response's status line is
    still unsent: a task that ends without one answers with its error here, not with a 200
    and an error inside the body (None: it succeeded without one). A client that leaves
    meanwhile takes its task with it."""
    try:
        piece = await unless_gone(request, first)
    except BaseException:
        engine.cancel(handle.task_id)
        raise
    if piece is None:
        view = await handle.done
        if not view.succeeded:
            raise failure(view)
    return piece


async def first_text(engine: Engine, handle: TaskHandle[Any], request: Request) -> str | None:
    """A streamed LLM answer's first piece of text (None: the task ended without one), taken
    before the status line is sent: a task that fails before it answers (a prompt over the
    context, a schema its grammar refuses) is refused with its status, not with a 200 and an
    error inside the body, on /v1 as OpenAI does and on Ollama's routes as for an answer not
    streamed. A client that leaves meanwhile takes its task with it."""

    async def first() -> str | None:
        while (item := await handle.events.get()) is not None:
            if isinstance(item, TextDelta):
                return item.text
        return None

    return await first_or_failure(request, engine, handle, first())


@contextmanager
def cancel_unless_ended(engine: Engine, handle: TaskHandle[Any]) -> Iterator[None]:
    """Around a streamed response's body: if the body stops before the task has ended (the
    client went away mid-stream, or writing failed), cancel the task, so that nobody's lane
    is spent on an answer no one reads."""
    try:
        yield
    finally:
        if not handle.done.done():
            engine.cancel(handle.task_id)
