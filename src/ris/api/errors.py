"""Errors the API answers with, in the dialect of the API asked: RIS's own
`{"error": {"code", "message"}}`, OpenAI's on /v1, Ollama's `{"error": "..."}` on its paths
and on the Ollama listener (server.ollama_port)."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from ris.api.request_ids import request_id
from ris.failures import NOT_TO_RETRY, failure_status
from ris.runtime.engine import LaneUnavailable, NotRecorded
from ris.runtime.views import TaskView
from ris.scheduler import QueueFull

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        # The request field at fault (reported as OpenAI's `param`).
        self.param = param


_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def is_openai(path: str) -> bool:
    return path.startswith("/v1/")


# Ollama's paths on the main port (none clashes with RIS's own /api routes; docs/OLLAMA_COMPATIBILITY.md).
OLLAMA_PATHS = frozenset(
    {"/api/chat", "/api/generate", "/api/tags", "/api/show", "/api/ps", "/api/version", "/api/pull"}
    # Ollama's calls this server does not serve: refused in Ollama's words (routes/ollama_models)
    | {"/api/embed", "/api/embeddings", "/api/create", "/api/copy", "/api/delete", "/api/push"}
)
# `app.state` flag of the Ollama listener: every answer there outside /v1 is in Ollama's shape.
OLLAMA_ONLY = "ollama_only"


def dialect_of(scope: Scope) -> str:
    """Which API's error shape a request gets: "openai", "ollama" or "ris"."""
    path: str = scope.get("path", "")
    app = scope.get("app")  # set by Starlette before its middleware runs
    if is_openai(path):
        return "openai"  # on the Ollama listener too: it serves /v1 as Ollama does
    if getattr(getattr(app, "state", None), OLLAMA_ONLY, False):
        return "ollama"  # the Ollama listener: everything else is Ollama's
    return "ollama" if path in OLLAMA_PATHS else "ris"


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    openai: bool = False,
    dialect: str | None = None,
    param: str | None = None,
) -> JSONResponse:
    """The seed API's `{"error": {"code", "message"}}`, OpenAI's shape on /v1 routes (`openai`,
    or `dialect` "openai"), or Ollama's `{"error": message}` (`dialect` "ollama"), which has no
    place for a code: Ollama's clients read the message and the status."""
    if dialect == "ollama":
        if code == "queue_full":  # Ollama's full queue (ErrMaxQueue) is a 503, in these words
            status, message = (
                503,
                f"server busy, please try again. maximum pending requests exceeded ({message})",
            )
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    if openai or dialect == "openai":
        return JSONResponse(_openai_body(status, code, message, param), status_code=status, headers=headers)
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _openai_body(status: int, code: str, message: str, param: str | None) -> dict[str, Any]:
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_error_body(e: APIError) -> dict[str, Any]:
    """`e` as OpenAI's error body, typed by its status as the same error answered before any
    byte is (a stream's last event, once the 200 is sent)."""
    return _openai_body(400 if e.status == 422 else e.status, e.code, e.message, e.param)


def queue_full(e: QueueFull) -> APIError:
    if e.most is not None:
        return APIError(
            400,
            "batch_too_large",
            f"{e.wanted} tasks asked for together; the {e.lane} lane admits at most {e.most} at once "
            "(its queue places and worker slots): ask for fewer",
            headers=NO_RETRY,
        )
    retry = str(max(1, math.ceil(e.retry_after_s)))
    return APIError(429, "queue_full", f"{e}; retry after {retry} s", headers={"Retry-After": retry})


# A 503 failure is the lane's passing state (a worker replaced, a lane waiting for its cluster,
# a server restarting): a client may try again, after as long as a refused request is told.
RETRY_AFTER_503 = "5"


# What a refusal no retry can change says instead of Retry-After (OpenAI's SDKs obey it; they
# retry any 5xx otherwise).
NO_RETRY = {"x-should-retry": "false"}


def lane_unavailable(e: LaneUnavailable) -> APIError:
    if e.disabled:  # by the config: a retry finds it as disabled
        return APIError(503, e.code, str(e), headers=NO_RETRY)
    return APIError(503, e.code, str(e), headers={"Retry-After": RETRY_AFTER_503})


def task_error(code: str, message: str, *, ran: bool = True) -> APIError:
    """The error response for a failure reported by code (a task's, or the speaking pipeline's).
    `ran`: whether the task reached a worker; a deadline that passed in the queue is a backlog
    a retry may well find gone, not a request that holds the lane as long again."""
    status = failure_status(code)
    if code == "deadline_exceeded" and not ran:
        return APIError(status, code, message)
    if code in NOT_TO_RETRY:
        return APIError(status, code, message, headers=NO_RETRY)
    retry = {"Retry-After": RETRY_AFTER_503} if status == 503 else None
    return APIError(status, code, message, headers=retry)


def no_result(view: TaskView[Any], what: str) -> APIError:
    """Why a task's result (`what`: "image", "audio") cannot be fetched: 409 `not_ready` while
    it may still come; once the task ended without one, `cancelled` or `task_failed` with the
    task's own error, so a client that polls on `not_ready` stops."""
    # An ended task never gets one: said not to retry (OpenAI's SDKs retry a 409).
    if view.state == "cancelled":
        return APIError(409, "cancelled", f"task {view.id} was cancelled; it has no {what}", NO_RETRY)
    if view.state == "failed":
        why = f"{view.error_code or 'failed'}: {view.error_message or 'the task failed'}"
        return APIError(409, "task_failed", f"task {view.id} failed ({why}); it has no {what}", NO_RETRY)
    return APIError(409, "not_ready", f"task {view.id} is {view.state}; no {what} yet")


def failure(view: TaskView[Any]) -> APIError:
    """The error a task that did not succeed answers with."""
    return task_error(
        view.error_code or "failed", view.error_message or "the task failed", ran=view.started_at is not None
    )


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    dialect = dialect_of(request.scope)
    # OpenAI and Ollama answer every invalid request with 400; the seed API's 422s (a task the
    # worker refused, an unknown voice) are that on /v1 and on Ollama's paths.
    status = 400 if dialect != "ris" and exc.status == 422 else exc.status
    return error_response(status, exc.code, exc.message, exc.headers, dialect=dialect, param=exc.param)


# What pydantic puts in an error's location for the member of a union a value failed against
# ("constrained-str", "function-after[...]", "literal['none','auto']", "list[...]", "str"):
# the validator's words, not the client's field.
# A union of models names the member by its class ("NamedToolChoice"): the API's fields are
# never capitalised.
_UNION_MEMBER = re.compile(r"[\[\]]|^(str|int|float|bool|bytes|none|constrained-[a-z]+)$|^[A-Z][A-Za-z0-9]*$")


def field_path(loc: Sequence[int | str]) -> str:
    """A validation error's location as the client wrote the field: `messages[0].content`,
    as OpenAI's errors name parameters and RIS's own checks do."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "body" and not _UNION_MEMBER.search(part):
            out += f".{part}" if out else part
    return out


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    said: dict[str, list[str]] = {}  # by field, in order: a union's members name one field
    for err in exc.errors():
        # The validation library's "Value error, " before a validator's own words says nothing.
        said.setdefault(field_path(err["loc"]), []).append(str(err["msg"]).removeprefix("Value error, "))
    first = next((path for path in said if path), None)
    message = "; ".join(f"{path or 'body'}: {'; or '.join(msgs)}" for path, msgs in said.items())
    message = message or "invalid request"
    dialect = dialect_of(request.scope)
    if dialect != "ris":  # OpenAI and Ollama answer invalid parameters with 400
        return error_response(400, "invalid_request", message, dialect=dialect, param=first)
    return error_response(422, "invalid_request", message)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
    code = codes.get(exc.status_code, "http_error")
    return error_response(
        exc.status_code, code, str(exc.detail), exc.headers, dialect=dialect_of(request.scope)
    )


async def _queue_full(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFull)
    return await _api_error(request, queue_full(exc))


async def _lane_unavailable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LaneUnavailable)
    return await _api_error(request, lane_unavailable(exc))


async def _not_recorded(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NotRecorded)
    if exc.code == "storage_full":
        return await _api_error(request, APIError(507, exc.code, str(exc)))
    return await _api_error(
        request, APIError(503, exc.code, str(exc), headers={"Retry-After": RETRY_AFTER_503})
    )


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A defect's answer: still an error body with a code, in the request's dialect (Starlette's
    own is a plain-text "Internal Server Error"). Starlette logs the traceback after it, and the
    line before it names the request as its answer does, so a user's report finds it. Sent
    outside the middleware that names answers: the header is set here."""
    rid = request_id(request.scope)
    log.error(
        "request %s (%s %s) failed: %s; its traceback follows", rid, request.method, request.url.path, exc
    )
    return error_response(
        500,
        "internal_error",
        f"the server failed on this request; the log has the details under request id {rid}",
        headers={"x-request-id": rid, "x-content-type-options": "nosniff"},
        dialect=dialect_of(request.scope),
    )


# The engine's refusals answer from here, so a route submits with `engine.submit` itself.
# `Exception` goes to Starlette's outermost middleware: only for a response not yet begun.
HANDLERS = {
    Exception: _internal_error,
    APIError: _api_error,
    QueueFull: _queue_full,
    LaneUnavailable: _lane_unavailable,
    NotRecorded: _not_recorded,
    RequestValidationError: _validation_error,
    StarletteHTTPException: _http_error,
}
