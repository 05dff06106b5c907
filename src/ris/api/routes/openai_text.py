"""The OpenAI-compatible text API: /v1/models, /v1/chat/completions, /v1/completions.

Errors use OpenAI's shape (see errors.py); streams are OpenAI's `data:` chunks and `[DONE]`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from ris.api.deps import (
    body_doc,
    cancel_unless_ended,
    client_of,
    engine_of,
    first_text,
    json_body,
    owner_of,
    result_or_failure,
    unknown_model_message,
    wait_task,
)
from ris.api.errors import OLLAMA_ONLY, APIError, failure, openai_error_body
from ris.api.limits import MIN_TOP_P, wrap_seed
from ris.api.llm_request import NO_PENALTIES, OPENAI, Penalties, llm_request
from ris.api.llm_support import (
    context_full,
    llm_context,
    request_warnings,
    require_constraining_backend,
    require_penalizing_backend,
    tagged,
    with_notes,
)
from ris.api.openai_schemas import ChatCompletionRequest, CompletionRequest, SamplingBody
from ris.api.openai_strict import refuse_other_lane
from ris.api.openai_tools import (
    ToolCallStream,
    ToolPlan,
    chat_answer,
    chat_turns,
    refuse_unsupported,
    response_constraint,
    tool_plan,
)
from ris.api.routes.openai_media import OPENAI_IMAGE_MODELS, OPENAI_SPEECH_MODELS
from ris.api.streams import SSE_DONE, sse_data, texts
from ris.lanes import Lane
from ris.lanes.llm import LANE as LLM
from ris.lanes.llm import Constraint, LLMRequest, LLMResult, Message, Tool
from ris.runtime.engine import Engine
from ris.runtime.views import TaskHandle

router = APIRouter(prefix="/v1", tags=["openai"])
JSON_OR_SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {}, "text/event-stream": {}}}
}


def _models(request: Request) -> list[dict[str, Any]]:
    """Every lane's models; on the Ollama listener, as Ollama's /v1/models lists them: its text
    models, tagged (Open WebUI offered the voices and image models there as chat models)."""
    engine = engine_of(request)
    if getattr(request.app.state, OLLAMA_ONLY, False):
        cfg = engine.config.lane(Lane.LLM)
        names = [tagged(name) for name in cfg.models] if cfg.enabled else []
        return [{"id": name, "object": "model", "created": 0, "owned_by": "library"} for name in names]
    return [
        {"id": name, "object": "model", "created": 0, "owned_by": f"ris:{lane}"}
        for lane, cfg in engine.config.lanes.items()
        if cfg.enabled
        for name in cfg.models
    ]


@router.get("/models", summary="Configured models of every lane")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": _models(request)}


@router.get("/models/{model_id:path}", summary="One configured model (client.models.retrieve)")
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    models = _models(request)
    for m in models:
        if m["id"] == model_id:
            return m
        if m["id"] == tagged(model_id) and getattr(request.app.state, OLLAMA_ONLY, False):
            return {**m, "id": model_id}  # "smollm2" on Ollama's port, listed "smollm2:latest"
    # Named as Ollama's /api/tags lists it, tag and all (chat takes that name: _llm_model);
    # answered under the name asked, as Ollama's /v1/models/{model} does.
    untagged = model_id.removesuffix(":latest")
    for m in models:
        if untagged != model_id and m["id"] == untagged and m["owned_by"] == f"ris:{Lane.LLM}":
            return {**m, "id": model_id}
    # OpenAI's speech and image model names, which /v1/audio/speech and /v1/images/generations
    # take for the lane's default: retrieve("tts-1") was a 404 for a name the route served.
    engine = engine_of(request)
    for lane, names in ((Lane.TTS, OPENAI_SPEECH_MODELS), (Lane.IMAGE, OPENAI_IMAGE_MODELS)):
        cfg = engine.config.lane(lane)
        if model_id in names and cfg.enabled and not getattr(request.app.state, OLLAMA_ONLY, False):
            return {"id": model_id, "object": "model", "created": 0, "owned_by": f"ris:{lane}"}
    raise APIError(
        404,
        "model_not_found",
        f"The model '{model_id}' does not exist; available: {', '.join(m['id'] for m in models) or 'none'}",
        param="model",
    )


# A HEAD of the list or of a model (monitors, `curl -I`) as of a GET: headers, status, no body.
router.add_api_route("/models", list_models, methods=["HEAD"], include_in_schema=False)
router.add_api_route("/models/{model_id:path}", retrieve_model, methods=["HEAD"], include_in_schema=False)


def _llm_model(engine: Engine, name: str, route: str) -> str:
    models = engine.config.lane(Lane.LLM).models
    # A tool set up for Ollama's /v1 names the model as /api/tags lists it, tag and all.
    if name not in models and name.removesuffix(":latest") in models:
        return name.removesuffix(":latest")
    if name not in models:
        refuse_other_lane(engine, name, Lane.LLM, route)
        raise APIError(
            404,
            "model_not_found",
            unknown_model_message(
                f"The model '{name}' does not exist; available: {', '.join(models) or 'none'}", name, Lane.LLM
            ),
            param="model",
        )
    return name


def _request(
    engine: Engine,
    body: SamplingBody,
    model: str,
    prompt: str | None,
    messages: list[tuple[str, str] | Message] | None,
    max_tokens: int,
    plan: ToolPlan | None = None,
    max_tokens_at_most: bool = False,
    max_tokens_param: str = "max_tokens",
) -> LLMRequest:
    refuse_unsupported(body)
    constraint = response_constraint(body.response_format)
    tools: tuple[Tool, ...] = ()
    if plan is not None:
        if constraint is not None:
            raise APIError(
                400,
                "invalid_value",
                "response_format json_object or json_schema cannot be combined with tools "
                '(unless tool_choice is "none"): the answer is either JSON or tool calls',
                param="response_format",
            )
        constraint, tools = plan.constraint, plan.tools
    if constraint is not None or tools:
        require_constraining_backend(engine, model, "response_format" if plan is None else "tools")
    penalties = Penalties(frequency=body.frequency_penalty or 0.0, presence=body.presence_penalty or 0.0)
    if penalties != NO_PENALTIES:
        named = "frequency_penalty" if body.frequency_penalty else "presence_penalty"
        require_penalizing_backend(engine, model, named)
    return llm_request(
        engine.config.server,
        OPENAI,
        prompt=prompt,
        messages=messages,
        max_tokens=max_tokens,
        max_tokens_at_most=max_tokens_at_most,
        temperature=1.0 if body.temperature is None else body.temperature,
        # top_p 0 (OpenAI allows it) keeps only the likeliest token: a nucleus of one.
        top_p=1.0 if body.top_p is None else max(body.top_p, MIN_TOP_P),
        # OpenAI's clients may send empty stop strings; they stop nothing.
        stop=[s for s in ([body.stop] if isinstance(body.stop, str) else body.stop or []) if s],
        # OpenAI takes any 64-bit seed (clients draw random ones, or send -1): the same seed
        # still gives the same answer, within the range the backends take.
        seed=None if body.seed is None else wrap_seed(body.seed),
        ignore_eos=body.ignore_eos,
        max_tokens_param=max_tokens_param,
        context_tokens=llm_context(engine, model),
        constraint=constraint,
        tools=tools,
        constraint_param=_param(constraint),
        penalties=penalties,
    )


def _param(constraint: Constraint | None) -> str:
    return "tool_choice" if constraint is not None and constraint.form == "tool_calls" else "response_format"


def _usage(r: LLMResult) -> dict[str, int]:
    return {
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens + r.completion_tokens,
    }


def _envelope(id_prefix: str, kind: str, task_id: str, model: str) -> dict[str, Any]:
    """The fields every completion object and chunk starts with."""
    return {"id": f"{id_prefix}-{task_id}", "object": kind, "created": int(time.time()), "model": model}


def _until_done(engine: Engine, model: str) -> int:
    """A chat without max_tokens runs, as on OpenAI, until the model stops or its context is
    full (llama.cpp cuts at what the prompt leaves), within server.max_new_tokens (for a model
    loaded on first use, whose context is not known yet, its worker bounds it: at most)."""
    context = llm_context(engine, model)
    limit = engine.config.server.max_new_tokens
    return min(limit, context) if context is not None else limit


def _finish_reason(r: LLMResult) -> str:
    return r.finish_reason if r.finish_reason in ("stop", "length") else "stop"


@router.post(
    "/chat/completions",
    responses=JSON_OR_SSE,
    summary="Chat completion (streams chat.completion.chunk events)",
    openapi_extra=body_doc(ChatCompletionRequest),
)
async def chat_completions(request: Request, response: Response) -> Any:
    body = await json_body(request, ChatCompletionRequest)
    engine = engine_of(request)
    model = _llm_model(engine, body.model, "/v1/chat/completions")
    asked = body.max_completion_tokens or body.max_tokens
    max_tokens = asked or _until_done(engine, model)
    plan = tool_plan(body)
    named = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    req = _request(
        engine, body, model, None, chat_turns(body.messages), max_tokens, plan, asked is None, named
    )
    warned = request_warnings(engine, model, req)  # a prompt in a language the model does not write
    handle = engine.submit(LLM, model, req, client=client_of(request), owner=owner_of(request))
    base = _envelope("chatcmpl", "chat.completion", handle.task_id, model)
    call_ids = f"call_{handle.task_id}_"
    if body.stream:
        base["object"] = "chat.completion.chunk"

        def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                **base,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }

        calls = None if plan is None else ToolCallStream(plan, call_ids)

        def piece(text: str) -> list[dict[str, Any]]:
            return [choice(d) for d in (calls.feed(text) if calls else [{"content": text}])]

        def end(reason: str) -> list[dict[str, Any]]:
            deltas, reason = calls.finish(reason) if calls else ([], reason)
            return [*(choice(d) for d in deltas), choice({}, reason)]

        return _streaming(
            _stream(
                engine,
                handle,
                base,
                first=choice({"role": "assistant", "content": ""}),
                first_text=await first_text(engine, handle, request),
                piece=piece,
                end=end,
                include_usage=bool(body.stream_options and body.stream_options.include_usage),
            ),
            handle,
            warned,
        )
    r = result_or_failure(await wait_task(engine, handle, request))
    response.headers.update({**with_notes(warned, context_full(r, asked)), **_task_headers(handle)})
    message, finish = chat_answer(r.text, _finish_reason(r), plan, call_ids)
    return {
        **base,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": _usage(r),
    }


@router.post(
    "/completions",
    responses=JSON_OR_SSE,
    summary="Text completion (legacy); streams text_completion events",
    openapi_extra=body_doc(CompletionRequest),
)
async def completions(request: Request, response: Response) -> Any:
    # Read as chat's body is: the same words for bad JSON, the same depth bound, any type.
    body = await json_body(request, CompletionRequest)
    engine = engine_of(request)
    model = _llm_model(engine, body.model, "/v1/completions")
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise APIError(400, "invalid_value", "exactly one prompt is supported", param="prompt")
    req = _request(engine, body, model, prompts[0], None, body.max_tokens or 16)
    warned = request_warnings(engine, model, req)
    handle = engine.submit(LLM, model, req, client=client_of(request), owner=owner_of(request))
    base = _envelope("cmpl", "text_completion", handle.task_id, model)

    def choice(text: str, finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

    if body.stream:
        return _streaming(
            _stream(
                engine,
                handle,
                base,
                first=None,
                first_text=await first_text(engine, handle, request),
                piece=lambda text: [choice(text)],
                end=lambda reason: [choice("", reason)],
                include_usage=bool(body.stream_options and body.stream_options.include_usage),
            ),
            handle,
            warned,
        )
    r = result_or_failure(await wait_task(engine, handle, request))
    asked = req.max_tokens if body.max_tokens is not None else None  # (its default is 16)
    response.headers.update({**with_notes(warned, context_full(r, asked)), **_task_headers(handle)})
    return {**choice(r.text, _finish_reason(r)), "usage": _usage(r)}


def _streaming(
    chunks: AsyncIterator[bytes], handle: TaskHandle[LLMResult], headers: dict[str, str]
) -> StreamingResponse:
    return StreamingResponse(
        chunks, media_type="text/event-stream", headers={**_task_headers(handle), **headers}
    )


def _task_headers(handle: TaskHandle[LLMResult]) -> dict[str, str]:
    """The task's id, streamed or not: X-Task-Id as on every RIS answer, and x-request-id,
    which OpenAI's SDKs read into a response's `_request_id` (what users quote in a report)."""
    return {"X-Task-Id": handle.task_id, "x-request-id": handle.task_id}


async def _stream(
    engine: Engine,
    handle: TaskHandle[LLMResult],
    base: dict[str, Any],
    *,
    first: dict[str, Any] | None,
    first_text: str | None,
    piece: Callable[[str], list[dict[str, Any]]],
    end: Callable[[str], list[dict[str, Any]]],
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """OpenAI's stream of chunks: `first`, then `piece(text)`'s per text from `first_text`
    (deps.first_text's; None: the task ended without text), `end(finish_reason)`'s, usage, [DONE]."""
    with cancel_unless_ended(engine, handle):
        if first is not None:
            yield sse_data(first)
        if first_text is not None:
            for chunk in piece(first_text):
                yield sse_data(chunk)
            async for text in texts(handle):
                for chunk in piece(text):
                    yield sse_data(chunk)
        view = await handle.done
        r = view.result if view.succeeded else None
        if r is None:
            # Typed as the same failure is without streaming: a refused request (a prompt over the
            # context) is the client's error, not the server's, whatever the 200 already sent.
            yield sse_data(openai_error_body(failure(view)))
        else:
            for chunk in end(_finish_reason(r)):
                yield sse_data(chunk)
            if include_usage:
                yield sse_data({**base, "choices": [], "usage": _usage(r)})
        yield SSE_DONE
