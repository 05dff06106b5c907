"""The rest of the `openai` client's surface under /v1: calls RIS does not serve.

A client that calls `images.edit` or `chat.completions.list` should hear which call is not
served and what is, not a bare 404 that reads like a wrong base URL. Each row is one client
call; the router is included after the routes that serve, so `GET /v1/models/{id}` is served
and `DELETE /v1/models/{id}` lands here.
"""

from __future__ import annotations

from typing import NoReturn

from fastapi import APIRouter

from ris.api.errors import APIError

router = APIRouter(prefix="/v1", tags=["openai"], include_in_schema=False)

SERVED = (
    "chat.completions.create, completions.create, audio.speech.create, images.generate, "
    "models.list, models.retrieve"
)

# (method, path, the client's name for the call, why it is not served)
NOT_SERVED: tuple[tuple[str, str, str, str], ...] = (
    ("GET", "/chat/completions", "chat.completions.list", "answers are not stored"),
    ("GET", "/chat/completions/{id}", "chat.completions.retrieve", "answers are not stored"),
    ("POST", "/chat/completions/{id}", "chat.completions.update", "answers are not stored"),
    ("DELETE", "/chat/completions/{id}", "chat.completions.delete", "answers are not stored"),
    ("GET", "/chat/completions/{id}/messages", "chat.completions.messages.list", "answers are not stored"),
    ("POST", "/images/edits", "images.edit", "the image lane generates from text only"),
    ("POST", "/images/variations", "images.create_variation", "the image lane generates from text only"),
    ("POST", "/audio/transcriptions", "audio.transcriptions.create", "no speech recognition lane"),
    ("POST", "/audio/translations", "audio.translations.create", "no speech recognition lane"),
    ("DELETE", "/models/{id:path}", "models.delete", "models are configured in config.json"),
    ("POST", "/embeddings", "embeddings.create", "no embedding lane"),
    ("POST", "/moderations", "moderations.create", "no moderation lane"),
    ("POST", "/responses", "responses.create", "the Responses API is not served: use chat.completions"),
)


# Whole families of the client's calls (every method, every path under them): files.list,
# batches.create, fine_tuning.jobs.list, vector_stores.list ... were a bare 404.
NOT_SERVED_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("/files", "files", "no file store: send content in the request"),
    ("/uploads", "uploads", "no file store: send content in the request"),
    ("/batches", "batches", "no batch API: send requests; each lane queues them"),
    ("/fine_tuning", "fine_tuning", "models are configured in config.json, not trained here"),
    ("/vector_stores", "vector_stores", "no retrieval store"),
    ("/assistants", "beta.assistants", "the Assistants API is not served: use chat.completions"),
    ("/threads", "beta.threads", "the Assistants API is not served: use chat.completions"),
    ("/realtime", "realtime", "no realtime sessions: stream chat.completions and audio.speech"),
    ("/evals", "evals", "no evaluation store"),
    ("/containers", "containers", "no code containers"),
    ("/conversations", "conversations", "the Responses API is not served: use chat.completions"),
)
EVERY_METHOD = ["GET", "POST", "DELETE", "PUT", "PATCH"]


def _refuse(call: str, why: str) -> NoReturn:
    raise APIError(
        400, "unsupported_endpoint", f"{call} is not supported by this server ({why}); served: {SERVED}"
    )


def _add(method: str, path: str, call: str, why: str) -> None:
    async def refuse() -> NoReturn:
        _refuse(call, why)

    router.add_api_route(path, refuse, methods=[method], name=call, response_model=None)


def _add_family(prefix: str, call: str, why: str) -> None:
    async def refuse() -> NoReturn:
        _refuse(f"{call} (any call under {prefix})", why)

    for path in (prefix, f"{prefix}/{{rest:path}}"):
        router.add_api_route(path, refuse, methods=EVERY_METHOD, name=f"{call} {path}", response_model=None)


for _row in NOT_SERVED:
    _add(*_row)
for _family in NOT_SERVED_FAMILIES:
    _add_family(*_family)
