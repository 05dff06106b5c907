"""The formats responses are written in: JSON bodies, server-sent events and WAV headers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import Response

from ris.lanes.llm import TextDelta
from ris.runtime.views import TaskHandle

# One encoder for every body: Starlette's JSONResponse builds a new one per response, which
# showed on the request path of a no-op generation.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_JSON.encode(content).encode(), status_code, headers, media_type="application/json")


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event of the seed API's streams (a named event, JSON data)."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def sse_data(obj: Any) -> bytes:
    """One unnamed server-sent event (OpenAI's stream format)."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


async def texts(handle: TaskHandle[Any]) -> AsyncIterator[str]:
    """The text pieces of an LLM task as they come."""
    while (item := await handle.events.get()) is not None:
        if isinstance(item, TextDelta):
            yield item.text


class StreamBroken(Exception):
    """Raised by an audio body that already began, when what it was sending failed. Raw audio
    has no place for an error event: the server then closes the connection mid-body, so the
    client sees a truncated response (an error) rather than a clean end it would take for
    complete audio."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
