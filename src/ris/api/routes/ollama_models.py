"""Ollama's model routes over the LLM lane: GET /api/tags, POST /api/show, GET /api/ps,
GET /api/version, and POST /api/pull (`ris pull`, its progress in Ollama's NDJSON lines).

Ollama's models are LLMs: the LLM lane's models are listed, by their names in config.json.
Digests and sizes are the model file's where it is one file on disk; a digest here names the
file by its path, size and time (hashing gigabytes per listing would cost seconds), not its
content. docs/OLLAMA_COMPATIBILITY.md says what maps where.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from ris import __version__, catalogue
from ris.api.deps import body_doc, engine_of, json_body, viewer_of
from ris.api.errors import APIError
from ris.api.llm_support import tagged
from ris.api.ollama_schemas import (
    OLLAMA_ERRORS,
    OLLAMA_TEMPERATURE,
    OLLAMA_TOP_P,
    OllamaModelRequest,
    OllamaPullRequest,
)
from ris.api.routes.ollama import NDJSON, llm_model
from ris.api.streams import json_response
from ris.backends import resolve_source
from ris.config import ModelSpec
from ris.config.backend_options import LLAMA_CPP_DEFAULT_N_CTX
from ris.gguf import gguf_facts
from ris.lanes import Lane
from ris.lanes.base import BackendError
from ris.lanes.llm import LANE as LLM
from ris.messages import ModelInfo
from ris.pull import Pulled, PullError, RemoteFile, pull

router = APIRouter(tags=["ollama"], responses=OLLAMA_ERRORS)
# Only on the Ollama listener (server.ollama_port), where "/" is Ollama's and not the console's:
# the Ollama CLI checks the server with `HEAD /` before `run`, `show`, `stop` or `pull`, and
# stops at any status of 400 or more; health checks get "Ollama is running" from `GET /`.
listener_router = APIRouter(include_in_schema=False)


@listener_router.api_route("/", methods=["GET", "HEAD"])
async def ollama_running() -> PlainTextResponse:
    return PlainTextResponse("Ollama is running")


# The Ollama API version reported: the one whose features this API has (tools 0.3, JSON-schema
# `format` 0.5); some clients turn features off for older servers. RIS's own is `ris_version`.
OLLAMA_API_VERSION = "0.5.0"
# Ollama's expires_at of a model kept loaded for ever (keep_alive -1): models here stay loaded
# for their worker's life.
NEVER = "2318-01-01T00:00:00Z"
# A keep_alive far enough ahead (Ollama accepts "3000000h") is shown as its NEVER's distance.
_LATEST_S = 290 * 365 * 86400.0
_QUANT = re.compile(r"(?i)\b(IQ\d\w*|Q\d(?:_[A-Z0-9]+)*|F16|BF16|F32)\b")
# The lane's backends and the file format of their models.
_FORMATS = {"llama_cpp": "gguf", "transformers": "safetensors"}
# Pull errors the client can fix (a name not in the catalogue, or gone from the hub): 404.
_NOT_FOUND = {"unknown_model", "unavailable", "not_found"}
_OWN_FAULT = {"config_error", "config_invalid", "config_not_written"}
# One pull at a time: each rewrites config.json. Held by the pulling thread, so a client that
# leaves mid-pull (its pull runs on to the end) still keeps the next one waiting.
_PULLING = threading.Lock()


def _file(spec: ModelSpec) -> Path | None:
    """The model's file or folder on disk; None where it has none (built-in or missing)."""
    try:
        return resolve_source(spec.source)
    except BackendError:
        return None


def _facts(name: str, spec: ModelSpec) -> dict[str, Any]:
    """What /api/tags, /api/show and /api/ps say of a model besides their own fields."""
    path = _file(spec)
    stat = path.stat() if path is not None and path.is_file() else None
    size = stat.st_size if stat is not None else 0
    mtime = stat.st_mtime if stat is not None else 0.0
    tag = f"{name}\0{spec.source}\0{size}\0{mtime}".encode()
    quant = _QUANT.search(path.name if path is not None else "")
    # A GGUF file names its architecture and holds its parameter count (UIs label models by them).
    gguf = (
        gguf_facts(path, size, mtime)
        if stat is not None and path is not None and path.suffix == ".gguf"
        else None
    )
    family = (gguf.architecture if gguf is not None else None) or spec.backend
    details = {
        "parent_model": "",
        "format": _FORMATS.get(spec.backend, spec.backend),
        "family": family,
        "families": [family],
        "parameter_size": gguf.parameter_size() if gguf is not None else "",
        # The header's own word first: a file renamed says nothing (an outside user's copy).
        "quantization_level": (gguf.quantization if gguf is not None else None)
        or (quant.group(1).upper() if quant else ""),
    }
    return {
        "parameter_count": gguf.parameters if gguf is not None else None,
        "size": size,
        "digest": hashlib.sha256(tag).hexdigest(),
        "modified_at": datetime.fromtimestamp(mtime, UTC).isoformat().replace("+00:00", "Z"),
        "details": details,
    }


def _all_facts(models: Mapping[str, ModelSpec]) -> dict[str, dict[str, Any]]:
    """`_facts` of each model: in a thread, as it reads the disk (the event loop moves bytes)."""
    return {name: _facts(name, spec) for name, spec in models.items()}


@router.get("/api/tags", summary="Ollama: the LLM lane's models")
async def ollama_tags(request: Request) -> Any:
    # A disabled lane's models are not offered: a client would list a model that only fails.
    lane = engine_of(request).config.lane(Lane.LLM)
    models = lane.models if lane.enabled else {}
    facts = await asyncio.to_thread(_all_facts, models)
    shown = ("size", "digest", "modified_at", "details")
    listed = [
        {"name": tagged(name), "model": tagged(name), **{k: facts[name][k] for k in shown}} for name in models
    ]
    return json_response({"models": listed})


def _shown_source(request: Request, name: str, spec: ModelSpec) -> str:
    """What the Modelfile's FROM names: the config's source for an admin (or a server without
    keys); the model's name for a user key, as the console's config is the operator's: a
    source is a path on the server (its folders, a user's home)."""
    return spec.source or spec.backend if viewer_of(request).admin else name


@router.post("/api/show", summary="Ollama: one model's details", openapi_extra=body_doc(OllamaModelRequest))
async def ollama_show(request: Request) -> Any:
    body = await json_body(request, OllamaModelRequest)
    engine = engine_of(request)
    if not (body.model or body.name):  # Ollama's words: a 404 naming model '' told nothing
        raise APIError(400, "invalid_request", "model is required", param="model")
    if not engine.config.lane(Lane.LLM).enabled:  # as /api/tags lists none of its models
        asked = body.model or body.name
        raise APIError(404, "model_not_found", f"model '{asked}' not found: the LLM lane is disabled here")
    name = llm_model(engine, body.model or body.name)
    spec = engine.config.lane(Lane.LLM).models[name]
    facts = await asyncio.to_thread(_facts, name, spec)
    loaded = engine.model_infos(Lane.LLM).get(name)
    # A model not loaded now says the context its config gives it (clients size their prompts
    # by context_length: it was null after keep_alive 0).
    context = configured_context(spec) if loaded is None else loaded.details.context_tokens
    family = facts["details"]["family"]
    features = LLM.model_features(spec.backend, None if loaded is None else loaded.details)
    capabilities = ["completion"] + (["tools"] if features["tools"] != "unsupported" else [])
    return json_response(
        {
            "modelfile": f"# RIS model {name!r} (config.json)\nFROM {_shown_source(request, name, spec)}\n",
            # Ollama's Modelfile form, "name value" a line: the defaults a request without
            # options gets, and the context a loaded model has.
            "parameters": _parameters(context),
            "template": "",  # the model's own chat template applies, read by its worker
            "details": facts["details"],
            "model_info": {
                "general.architecture": family,
                "general.basename": name,
                "general.description": spec.description or "",
                "general.parameter_count": facts["parameter_count"],
                f"{family}.context_length": context,
            },
            "capabilities": capabilities,
            "modified_at": facts["modified_at"],
        }
    )


def configured_context(spec: ModelSpec) -> int | None:
    """The context a model's config gives it, before its worker reports the one it has: a
    llama_cpp model's n_ctx. None for others (a transformers model's is its max_context or
    less, as its KV cache's share allows: only its worker knows)."""
    if spec.backend == "llama_cpp":
        return int(spec.options.get("n_ctx", LLAMA_CPP_DEFAULT_N_CTX))
    return None


def _parameters(context: int | None) -> str:
    lines = [("temperature", OLLAMA_TEMPERATURE), ("top_p", OLLAMA_TOP_P)]
    if context is not None:
        lines.append(("num_ctx", context))
    return "\n".join(f"{name:<30} {value}" for name, value in lines)


@router.get("/api/ps", summary="Ollama: the models loaded now")
async def ollama_ps(request: Request) -> Any:
    engine = engine_of(request)
    lane = engine.config.lane(Lane.LLM)
    gpu = lane.device != "cpu"
    loaded = engine.model_infos(Lane.LLM)
    expiries = engine.model_expiries(Lane.LLM)
    all_facts = await asyncio.to_thread(_all_facts, {name: lane.models[name] for name in loaded})
    running = []
    for name, info in loaded.items():
        facts = all_facts[name]
        # Ollama's size here is the memory the loaded model takes (its file size in /api/tags):
        # the worker's count of it (weights, KV cache, margin; on a card and in RAM), else the file.
        size = facts["size"] if info.footprint_bytes is None else info.footprint_bytes + (info.ram_bytes or 0)
        running.append(
            {
                "name": tagged(name),
                "model": tagged(name),
                "size": size,
                "digest": facts["digest"],
                "details": facts["details"],
                "expires_at": _expires_at(expiries.get(name)),
                "size_vram": _on_card(info, size) if gpu else 0,
                "context_length": info.details.context_tokens,
            }
        )
    return json_response({"models": running})


def _expires_at(seconds: float | None) -> str:
    """Ollama's expires_at: when keep_alive unloads the model, as a UTC time (NEVER for none)."""
    if seconds is None:
        return NEVER
    at = datetime.now(UTC) + timedelta(seconds=min(seconds, _LATEST_S))
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _on_card(info: ModelInfo, size: int) -> int:
    """What of a loaded model is on the card, as Ollama's size_vram says: what its worker
    counted there (all of it placed "gpu"; the layers that fit, an offload plan's part, placed
    partly), not what stays in RAM beside; none on the CPU."""
    if info.placement == "cpu":
        return 0
    if info.footprint_bytes is None:
        return size
    return min(size, info.footprint_bytes)


@router.get("/api/version", summary="Ollama: the API version")
async def ollama_version() -> Any:
    return json_response({"version": OLLAMA_API_VERSION, "ris_version": __version__})


# Ollama answers HEAD on these two as well (the server drops the body of a HEAD's answer).
listener_router.add_api_route("/api/tags", ollama_tags, methods=["HEAD"])
listener_router.add_api_route("/api/version", ollama_version, methods=["HEAD"])


@router.post(
    "/api/pull",
    responses={200: {"content": {"application/json": {}, NDJSON: {}}}},
    summary="Ollama: `ris pull` a catalogued model into config.json (NDJSON progress)",
    openapi_extra=body_doc(OllamaPullRequest),
)
async def ollama_pull(request: Request) -> Any:
    body = await json_body(request, OllamaPullRequest)
    served = engine_of(request).config.lane(Lane.LLM).models
    given = (body.model or body.name).strip()
    if given in served or given.removesuffix(":latest") in served:
        # Served already: up to date, as Ollama answers a pull of a model it has. Scripts pull
        # before they use a model; one RIS serves was a 404 (not in the catalogue), or a 403
        # for a user key, for a pull that downloads nothing.
        done = {"status": "success"}
        if body.stream:
            return StreamingResponse(_ndjson(_lines(done)), media_type=NDJSON)
        return json_response(done)
    # A pull downloads gigabytes and rewrites the server's config.json: the operator's act, as
    # `ris pull` on the host is, not a user key's.
    if not viewer_of(request).admin:
        raise APIError(
            403,
            "admin_only",
            "/api/pull is for admin keys (server.api_keys: a plain key, or role 'admin'): it "
            "downloads a model and rewrites the server's config file",
        )
    name = (body.model or body.name).strip().removesuffix(":latest")
    if catalogue.lookup(name) is None:
        why = catalogue.UNAVAILABLE.get(name.lower())
        raise APIError(
            404,
            "unknown_model",
            why or f"pull model manifest: {name!r} is not in the catalogue; known: {catalogue.listing()}",
        )
    config_path: Path | None = getattr(request.app.state, "config_path", None)
    if config_path is None:
        raise APIError(
            400,
            "no_config_file",
            "this server was started without a config file (ris serve --config, or RIS_CONFIG): "
            "a pulled model has nowhere to be added; run `ris pull` instead",
        )
    lines = _pull_lines(name, config_path)
    if body.stream:
        return StreamingResponse(_ndjson(lines), media_type=NDJSON)
    last: dict[str, Any] = {}
    async for line in lines:
        last = line
    if "error" in last:
        raise APIError(last["status_code"], "pull_failed", last["error"])
    return json_response(last)


async def _lines(*lines: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    for line in lines:
        yield line


async def _ndjson(lines: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for line in lines:
        line.pop("status_code", None)  # said by the status of a whole answer; a stream's is 200
        yield (json.dumps(line, ensure_ascii=False) + "\n").encode()


async def _pull_lines(name: str, config_path: Path) -> AsyncIterator[dict[str, Any]]:
    """`ris pull` in a thread (it blocks on the network and the disk); Ollama's progress
    objects as it goes, and an `error` object (with the status it answers) if it fails."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    last: tuple[str, int] | None = None

    def progress(f: RemoteFile, done: int) -> None:
        nonlocal last
        if last == (f.path, done):
            return  # the last chunk's count, then the same once checked: one line
        last = (f.path, done)
        line: dict[str, Any] = {"status": f"pulling {f.path}", "total": f.size or done, "completed": done}
        if f.sha256 is not None:
            line["digest"] = f"sha256:{f.sha256}"
        loop.call_soon_threadsafe(queue.put_nowait, line)

    def run() -> Pulled:
        with _PULLING:
            return pull(name, config_path, log=lambda _: None, progress=progress)

    yield {"status": "pulling manifest"}
    work = asyncio.ensure_future(asyncio.to_thread(run))
    while not (work.done() and queue.empty()):
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait([getter, work], return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            yield getter.result()
        else:
            getter.cancel()
    try:
        pulled = work.result()
    except PullError as e:
        # The hub's failures are a bad gateway; this server's own config file is its own error.
        status = 404 if e.code in _NOT_FOUND else 500 if e.code in _OWN_FAULT else 502
        yield {"error": e.message, "status_code": status}
        return
    except OSError as e:  # config.json not writable, disk full
        yield {"error": f"pull {name}: {e}", "status_code": 500}
        return
    yield {
        "status": f"added {pulled.name!r} to the {pulled.lane} lane of {config_path}; "
        "restart the server to use it"
    }
    yield {"status": "success"}


# Ollama's calls this server does not serve, refused in Ollama's words rather than with a bare
# 404 that reads like a wrong address: (method, path, why).
NOT_SERVED: tuple[tuple[str, str, str], ...] = (
    ("POST", "/api/embed", "embeddings are not supported by this server (no embedding lane)"),
    ("POST", "/api/embeddings", "embeddings are not supported by this server (no embedding lane)"),
    ("POST", "/api/create", "models are configured in the server's config.json, not created"),
    ("POST", "/api/copy", "models are configured in the server's config.json, not copied"),
    ("DELETE", "/api/delete", "models are configured in the server's config.json, not deleted"),
    ("POST", "/api/push", "this server does not push models to a registry"),
)


def _refusal(path: str, why: str) -> Any:
    async def refuse() -> Any:
        raise APIError(400, "unsupported_endpoint", f"{path}: {why}")

    return refuse


for _method, _path, _why in NOT_SERVED:
    router.add_api_route(_path, _refusal(_path, _why), methods=[_method], include_in_schema=False)
