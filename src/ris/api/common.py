"""Request plumbing shared by the seed API, the OpenAI-compatible API and the speaking pipeline."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ris.api.errors import APIError, lane_unavailable, queue_full
from ris.runtime.engine import Engine, LaneUnavailable, TaskHandle
from ris.scheduler import Lane, QueueFull, Task


def check_prompt(engine: Engine, prompt: str | None, contents: list[str] | None, max_tokens: int) -> None:
    """The seed-API checks of an LLM request: one of prompt/messages, and the configured limits."""
    limits = engine.config.server
    if (prompt is None) == (contents is None):
        raise APIError(422, "invalid_request", "give exactly one of `prompt` or `messages`")
    chars = len(prompt or "") + sum(len(c) for c in contents or [])
    if chars > limits.max_prompt_chars:
        raise APIError(
            413,
            "prompt_too_long",
            f"the prompt is {chars} characters; the limit is {limits.max_prompt_chars}",
        )
    if max_tokens > limits.max_new_tokens:
        raise APIError(
            422, "invalid_request", f"max_tokens {max_tokens} is over the limit of {limits.max_new_tokens}"
        )


def submit(
    engine: Engine, lane: Lane, model: str, request: Any, priority: int, timeout_s: float | None
) -> TaskHandle:
    try:
        return engine.submit(lane, model, request, priority=priority, timeout_s=timeout_s)
    except QueueFull as e:
        raise queue_full(e) from None
    except LaneUnavailable as e:
        raise lane_unavailable(e) from None


def resolve_model(engine: Engine, lane: Lane, name: str | None) -> str:
    try:
        return engine.config.lane(lane).resolve_model(name)
    except KeyError as e:
        # An unknown name is the client's mistake (404); no default model is the server's (503).
        raise APIError(404 if name is not None else 503, "unknown_model", str(e.args[0])) from None


def failure(task: Task) -> APIError:
    code = task.error_code or "failed"
    status = {
        "deadline_exceeded": 504,
        "worker_timeout": 504,
        "worker_crashed": 503,
        "cancelled": 409,
        "server_shutdown": 503,
        "unknown_voice": 422,
        "context_length_exceeded": 422,
    }.get(code, 500)
    return APIError(status, code, task.error_message or "the task failed")


async def wait_task(engine: Engine, handle: TaskHandle) -> Task:
    """Wait for the task's end; cancel it if the client goes away first."""
    try:
        return await asyncio.shield(handle.done)
    except asyncio.CancelledError:
        engine.cancel(handle.task_id)
        raise


def pick_tts_model(engine: Engine, model: str | None, voice: str | None) -> str:
    """The TTS model a request names, else the first configured one that speaks its voice."""
    cfg = engine.config.lane(Lane.TTS)
    if model is not None:
        return resolve_model(engine, Lane.TTS, model)
    if voice is None:
        return resolve_model(engine, Lane.TTS, None)
    infos = engine.model_infos(Lane.TTS)
    wanted = voice.lower().replace("_", "-")
    order = [cfg.default_model] + [n for n in cfg.models if n != cfg.default_model]
    for name in order:
        info = infos.get(name or "")
        if info and any(v.lower().replace("_", "-") == wanted for v in info.voices):
            return info.name
    if not infos:
        raise APIError(
            503, "lane_unavailable", "the TTS worker is still starting", headers={"Retry-After": "5"}
        )
    known = sorted({v for i in infos.values() for v in i.voices[:1]} | {"en-US", "zh-CN"})
    raise APIError(
        422,
        "unknown_voice",
        f"no configured TTS model speaks voice {voice!r}; examples: {', '.join(known)}",
    )


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event of the seed API's streams (named event, JSON data)."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
