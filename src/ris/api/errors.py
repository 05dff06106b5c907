"""Errors the API answers with: always JSON `{"error": {"code", "message"}}`."""

from __future__ import annotations

import math
from collections.abc import Mapping

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ris.runtime.engine import LaneUnavailable
from ris.scheduler import QueueFull


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def queue_full(e: QueueFull) -> APIError:
    retry = str(max(1, math.ceil(e.retry_after_s)))
    return APIError(429, "queue_full", f"{e}; retry after {retry} s", headers={"Retry-After": retry})


def lane_unavailable(e: LaneUnavailable) -> APIError:
    return APIError(503, "lane_unavailable", e.message, headers={"Retry-After": "5"})


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p != "body")
        parts.append(f"{loc or 'body'}: {err['msg']}")
    return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
    return error_response(
        exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), exc.headers
    )


HANDLERS = {
    APIError: _api_error,
    RequestValidationError: _validation_error,
    StarletteHTTPException: _http_error,
}
