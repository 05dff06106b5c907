"""Ollama's generation API over the LLM lane: POST /api/chat and /api/generate.

Ollama's shapes: NDJSON lines as the answer grows (its default; `"stream": false` for one
object), durations in nanoseconds, errors as `{"error": "..."}` (ris.api.errors). Structured
output (`format`) and tools go through the same grammar path as /v1
(ris.api.openai_tools, ris.lanes.llm_tools). docs/OLLAMA_COMPATIBILITY.md says what maps where.
The models, ps, version and pull routes are in routes/ollama_models.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
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
from ris.api.errors import NO_RETRY, APIError, failure
from ris.api.limits import MIN_TOP_P, OLLAMA_MAX_STOP_CHARS, OLLAMA_MAX_STOPS, wrap_seed
from ris.api.llm_request import NO_PENALTIES, Dialect, Penalties, llm_request
from ris.api.llm_support import llm_context, request_warnings, require_constraining_backend
from ris.api.ollama_schemas import (
    OLLAMA_ERRORS,
    OLLAMA_TEMPERATURE,
    OLLAMA_TOP_P,
    Format,
    OllamaChatMessage,
    OllamaChatRequest,
    OllamaGenerateRequest,
    OllamaOptions,
    OllamaToolDef,
)
from ris.api.streams import json_response, texts, to_json
from ris.lanes import Lane
from ris.lanes.llm import LANE as LLM
from ris.lanes.llm import Constraint, LLMRequest, LLMResult, Message, Tool, ToolCall
from ris.lanes.llm_tools import CallHolder, call_schema, parse_calls
from ris.runtime.engine import Engine
from ris.runtime.views import TaskHandle

router = APIRouter(tags=["ollama"], responses=OLLAMA_ERRORS)
NDJSON = "application/x-ndjson"
JSON_OR_NDJSON: dict[int | str, dict[str, Any]] = {200: {"content": {"application/json": {}, NDJSON: {}}}}
# Ollama answers every invalid request with 400 (and a prompt over the limit too).
# Ollama takes any number of stop strings (Continue's and agents' lists run past OpenAI's 4).
OLLAMA = Dialect(
    too_long=(400, "context_length_exceeded"),
    invalid=(400, "invalid_value"),
    max_stops=OLLAMA_MAX_STOPS,
    max_stop_chars=OLLAMA_MAX_STOP_CHARS,
)
_OPTION_NAME = re.compile(r"[A-Za-z0-9_]{1,40}")
_MAX_NAMED = 20


def created_at() -> str:
    """Ollama's timestamp: RFC 3339 in UTC."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def llm_model(engine: Engine, name: str) -> str:
    """The configured LLM `name` names (Ollama's clients may add the tag `:latest`); 404 in
    Ollama's words, naming the models there are, otherwise."""
    models = engine.config.lane(Lane.LLM).models
    for candidate in (name, name.removesuffix(":latest")):
        if candidate in models:
            return candidate
    message = f"model '{name}' not found; available: {', '.join(models) or 'none'}"
    raise APIError(404, "model_not_found", unknown_model_message(message, name, Lane.LLM), param="model")


def ignored_options(options: OllamaOptions | None, req: LLMRequest | None = None) -> dict[str, str]:
    """The header that names the options given and ignored (Ollama's it does not apply here:
    top_k, num_ctx, ...; `stop` beside a format, penalties a backend does not apply: `req` as
    built says), so a
    client can see it was not served them. Only names an option could have go in a header
    (latin-1, bounded); others are counted."""
    given = sorted((options.model_extra or {}) if options is not None else {})
    if options is not None and any(options.stop or ()) and req is not None and not req.stop:
        given = sorted([*given, "stop"])
    if options is not None and req is not None and not req.penalized:  # a backend that applies none
        given = sorted([*given, *options.penalty_options()])
    if not given:
        return {}
    named = [n for n in given if _OPTION_NAME.fullmatch(n)][:_MAX_NAMED]
    rest = len(given) - len(named)
    return {"X-Ignored-Options": ", ".join(named + ([f"{rest} more"] if rest else []))}


def _constraint(fmt: Format) -> Constraint | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":  # Ollama's "json": any JSON value; an object is what clients parse
        return Constraint(json.dumps({"type": "object"}))
    return Constraint(json.dumps(fmt))


def _tools(tools: list[OllamaToolDef] | None) -> tuple[tuple[Tool, ...], Constraint | None]:
    """Ollama has no tool_choice: the model may call or answer (OpenAI's "auto"), a call it
    starts held to the form and schemas by a lazy grammar."""
    if not tools:
        return (), None
    found = tuple(
        Tool(t.function.name, t.function.description, json.dumps(t.function.parameters)) for t in tools
    )
    names = [t.name for t in found]
    if len(set(names)) != len(names):
        raise APIError(400, "invalid_value", "tools: each function needs its own name", param="tools")
    return found, Constraint(call_schema(found), "tool_calls", parallel=True, lazy=True)


def build_request(
    engine: Engine,
    model: str,
    options: OllamaOptions | None,
    fmt: Format,
    tools: list[OllamaToolDef] | None = None,
    truncate: bool = True,
    **text: Any,
) -> LLMRequest:
    """The LLMRequest of an Ollama body: `text` is llm_request's prompt or messages (and system)."""
    opts = options or OllamaOptions()
    constraint = _constraint(fmt)
    tool_defs, tool_constraint = _tools(tools)
    if constraint is not None and tool_constraint is not None:
        raise APIError(
            400, "invalid_value", "format cannot be combined with tools: the answer is JSON or a call"
        )
    if constraint is not None or tool_defs:
        require_constraining_backend(engine, model, "format" if constraint is not None else "tools")
    context = llm_context(engine, model)
    limit = engine.config.server.max_new_tokens
    # Bounds, as on Ollama: more than the context stops at the context (here, or in the worker
    # of a model loaded on first use, whose context is not known yet: max_tokens_at_most).
    if opts.num_predict is None or opts.num_predict <= 0:
        # Ollama's default: until the model stops or the context is full (llama.cpp cuts at
        # the context left after the prompt). 0 too: Ollama's runner limits only above 0.
        max_tokens = min(limit, context) if context is not None else limit
    else:
        # Past server.max_new_tokens it stops there, as past the context at the context: Ollama
        # takes any num_predict (ChatOllama(num_predict=8192) was a 400); done_reason "length".
        asked = min(opts.num_predict, limit)
        max_tokens = asked if context is None else min(asked, context)
    penalties = NO_PENALTIES
    if opts.penalty_names() and LLM.backend(engine.config.lane(Lane.LLM).models[model].backend).penalizes:
        last_n = opts.repeat_last_n if opts.repeat_last_n is not None else NO_PENALTIES.last_n
        penalties = Penalties(
            repeat=opts.repeat_penalty if opts.repeat_penalty is not None else 1.0,
            frequency=opts.frequency_penalty or 0.0,
            presence=opts.presence_penalty or 0.0,
            # -1: the whole context, as on Ollama (llama.cpp reads 0 as none).
            last_n=(context or limit) if last_n < 0 else last_n,
        )
    stops = [s for s in opts.stop or [] if s]
    if constraint is not None and stops:
        # A stop string would cut the JSON short: left out, and said (X-Ignored-Options), where
        # Ollama applies it and answers broken JSON. LangChain's ChatOllama(stop=...) with
        # with_structured_output was a 400.
        stops = []
    return llm_request(
        engine.config.server,
        OLLAMA,
        max_tokens=max_tokens,
        max_tokens_at_most=True,
        temperature=OLLAMA_TEMPERATURE if opts.temperature is None else opts.temperature,
        top_p=OLLAMA_TOP_P if opts.top_p is None else max(opts.top_p, MIN_TOP_P),
        stop=stops,
        seed=None if opts.seed is None or opts.seed < 0 else wrap_seed(opts.seed),
        context_tokens=context,
        constraint=constraint or tool_constraint,
        tools=tool_defs,
        constraint_param="format" if constraint is not None else "tools",
        truncate=truncate,
        penalties=penalties,
        **text,
    )


def chat_turns(messages: list[OllamaChatMessage]) -> list[tuple[str, str] | Message]:
    """The lane's turns of an Ollama chat. Ollama's calls carry no ids: each gets one here, and
    a tool message answers the earliest unanswered call of its tool_name (or any, unnamed)."""
    turns: list[tuple[str, str] | Message] = []
    open_calls: list[ToolCall] = []
    for i, m in enumerate(messages):
        if m.images:
            raise APIError(
                400, "invalid_value", f"messages[{i}].images: no model here reads images", param="images"
            )
        if m.tool_calls:
            calls = tuple(
                ToolCall(f"call_{i}_{j}", c.function.name, json.dumps(c.function.arguments))
                for j, c in enumerate(m.tool_calls)
            )
            open_calls += calls
            turns.append(Message(m.role, m.content, calls))
        elif m.role == "tool":
            answered = next((c for c in open_calls if m.tool_name in (None, c.name)), None)
            if answered is not None:
                open_calls.remove(answered)
            turns.append(Message("tool", m.content, (), None if answered is None else answered.id))
        else:
            turns.append((m.role, m.content))
    return turns


def load_waited(engine: Engine, model: str) -> Callable[[], float]:
    """Called as a task is submitted: later, the seconds it waited for its model to load (0
    where the model was loaded already). A model loaded on first use loads once the task is
    dispatched: that time was counted as prompt evaluation (load_duration said 0.04 ms after
    `keep_alive: 0`, prompt evaluation 5 s, the log "loaded in 0.86 s")."""
    cold = model not in engine.model_infos(Lane.LLM)
    return lambda: engine.model_log().last_load_s.get((Lane.LLM, model), 0.0) if cold else 0.0


def _timings(r: LLMResult, load_s: float = 0.0) -> dict[str, Any]:
    """Ollama's counts and durations (ns), from the task's timings (ms from submission):
    load_duration is the wait for the lane (queue, a model loading on first use: `load_s`),
    prompt eval up to the first token, eval from there to the end."""
    t = r.timings
    total = t.total_ms or 0.0
    first = t.first_output_ms if t.first_output_ms is not None else total
    queued = min(first, (t.queue_ms or 0.0) + 1000 * load_s)

    def ns(ms: float) -> int:
        return max(0, round(ms * 1_000_000))

    return {
        "total_duration": ns(total),
        "load_duration": ns(queued),
        "prompt_eval_count": r.prompt_tokens,
        "prompt_eval_duration": ns(first - queued),
        "eval_count": r.completion_tokens,
        "eval_duration": ns(total - first),
    }


def _done_reason(r: LLMResult) -> str:
    return "length" if r.finish_reason == "length" else "stop"


def _answer(text: str, r: LLMResult, tool_names: list[str]) -> dict[str, Any]:
    """The assistant message of a finished chat: its tool calls parsed out, or its text."""
    ended = r.finish_reason in ("stop", "length")  # cut short: the calls it finished are kept
    parsed = parse_calls(text, tool_names, r.finish_reason == "length") if tool_names and ended else None
    if parsed is None:
        return {"role": "assistant", "content": text}
    calls = [{"function": {"name": n, "arguments": json.loads(a)}} for n, a in parsed.calls]
    return {"role": "assistant", "content": parsed.content, "tool_calls": calls}


_DURATION = re.compile(r"^(-?)((?:\d+(?:\.\d*)?(?:ns|us|µs|ms|s|m|h))+)$")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")


def keep_alive_seconds(value: str | float | None) -> float | None:
    """Ollama's keep_alive as seconds: None (absent: the lane's keep_alive_s), a negative
    number (kept until evicted), 0 (unloaded once idle) or how long to keep it idle. Takes
    seconds as a number or a numeric string, or a Go duration ("5m", "1h30m", "-1")."""
    if value is None:
        return None
    number: float | None = None
    if isinstance(value, int | float):
        number = float(value)
    else:
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if number is not None and math.isfinite(number):
        return number
    m = None if number is not None else _DURATION.match(str(value).strip())
    if m is None:
        raise APIError(
            400,
            "invalid_value",
            f"keep_alive {value!r} is not a duration; use seconds (300, -1) or a duration like "
            "'5m', '1h30m', '-1m' (negative: keep loaded; 0: unload once idle)",
            param="keep_alive",
        )
    seconds = sum(float(n) * _UNIT_S[unit] for n, unit in _PART.findall(m.group(2)))
    return -seconds if m.group(1) else seconds


# How long an unload answer waits for the worker to let the model go (it goes once nothing
# runs on it): `ollama stop` then `ollama ps` listed the model for another 70 ms.
UNLOAD_WAIT_S = 5.0


async def _loaded(
    request: Request, engine: Engine, model: str, field: str, empty: Any, keep_alive: str | float | None
) -> dict[str, Any]:
    """Ollama's answer to a request with nothing to generate: its way to load a model, or to
    unload it (keep_alive 0: `ollama stop`, answered once the model is gone, or after
    UNLOAD_WAIT_S while others' answers still run on it). A load is answered once the model is
    loaded, as Ollama's (`ollama run` shows its spinner meanwhile, and the first message does
    not pay the load): a model no worker holds is loaded by a task of one token, queued as any
    (a load waits behind the lane's work, as in Ollama); its keep_alive (the lane's when none is
    given) applies to it from now."""
    if not engine.config.lane(Lane.LLM).enabled:  # "loaded", with a 200, on a lane that is off
        raise APIError(503, "lane_unavailable", "the llm lane is disabled in the configuration", NO_RETRY)
    seconds = keep_alive_seconds(keep_alive)
    # Absent, the lane's keep_alive_s applies from now, as to any request: a load without one
    # left a "4s" asked before in force, and the model went 4 s later.
    engine.keep_model(Lane.LLM, model, seconds)
    if seconds == 0:
        deadline = time.monotonic() + UNLOAD_WAIT_S
        while model in engine.model_infos(Lane.LLM) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    elif model not in engine.model_infos(Lane.LLM):
        # A space: an empty prompt is refused on a model that adds no BOS token.
        load = LLMRequest(prompt=" ", max_tokens=1, temperature=0.0)
        handle = engine.submit(
            LLM, model, load, client=client_of(request), owner=owner_of(request), keep_alive_s=seconds
        )
        result_or_failure(await wait_task(engine, handle, request))
    reason = "unload" if seconds == 0 else "load"
    return {"model": model, "created_at": created_at(), field: empty, "done": True, "done_reason": reason}


@router.post(
    "/api/chat",
    responses=JSON_OR_NDJSON,
    summary="Ollama: chat (NDJSON stream by default)",
    openapi_extra=body_doc(OllamaChatRequest),
)
async def ollama_chat(request: Request) -> Any:
    body = await json_body(request, OllamaChatRequest)
    engine = engine_of(request)
    model = llm_model(engine, body.model)
    _refuse_unserved(body)
    if not body.messages:
        empty = {"role": "assistant", "content": ""}
        loaded = await _loaded(request, engine, model, "message", empty, body.keep_alive)
        return json_response({**loaded, "model": body.model})
    req = build_request(
        engine,
        model,
        body.options,
        body.format,
        body.tools,
        body.truncate,
        prompt=None,
        messages=chat_turns(body.messages),
    )
    names = [t.name for t in req.tools]
    # Options ignored, a prompt in a language the model does not write: said in headers.
    said = {**ignored_options(body.options, req), **request_warnings(engine, model, req)}
    keep_alive = keep_alive_seconds(body.keep_alive)
    waited = load_waited(engine, model)
    handle = engine.submit(
        LLM, model, req, client=client_of(request), owner=owner_of(request), keep_alive_s=keep_alive
    )
    # The name as the client gave it ("smollm2:latest"), as Ollama answers; each line's
    # created_at is its own time, as Ollama's.
    head = {"model": body.model}
    if body.stream:
        holder = CallHolder() if names else None

        def piece(text: str) -> dict[str, Any] | None:
            shown = text if holder is None else holder.feed(text)
            return {"message": {"role": "assistant", "content": shown}} if shown else None

        def end(r: LLMResult) -> dict[str, Any]:
            held = "" if holder is None else holder.held()
            message = _answer(held, r, names) if held else {"role": "assistant", "content": ""}
            return {"message": message}

        first = await first_text(engine, handle, request)
        return _ndjson(engine, handle, head, first, piece, end, said, waited)
    r = result_or_failure(await wait_task(engine, handle, request))
    return json_response(
        {
            **head,
            "created_at": created_at(),
            "message": _answer(r.text, r, names),
            "done": True,
            "done_reason": _done_reason(r),
            **_timings(r, waited()),
        },
        headers={"X-Task-Id": handle.task_id, **said},
    )


def _refuse_unserved(body: OllamaChatRequest | OllamaGenerateRequest) -> None:
    """Thinking and token probabilities, asked for: a 400 in Ollama's words for thinking
    ("... does not support thinking", which clients catch to ask again without it)."""
    if body.think:
        raise APIError(
            400, "unsupported_parameter", f'"{body.model}" does not support thinking', param="think"
        )
    if body.logprobs or body.top_logprobs:
        name = "logprobs" if body.logprobs else "top_logprobs"
        raise APIError(
            400, "unsupported_parameter", f"{name}: no model here gives token probabilities", param=name
        )


@router.post(
    "/api/generate",
    responses=JSON_OR_NDJSON,
    summary="Ollama: completion of a prompt (NDJSON stream by default)",
    openapi_extra=body_doc(OllamaGenerateRequest),
)
async def ollama_generate(request: Request) -> Any:
    body = await json_body(request, OllamaGenerateRequest)
    engine = engine_of(request)
    model = llm_model(engine, body.model)
    _refuse_unserved(body)
    for name, why in (
        ("suffix", "fill-in-the-middle is not supported"),
        ("template", "the model's own chat template applies (or raw: true and a prompt of your own)"),
        ("context", "send the conversation as text again, or use /api/chat"),
        ("images", "no model here reads images"),
    ):
        if getattr(body, name):
            raise APIError(400, "unsupported_parameter", f"{name}: {why}", param=name)
    # Ollama's own Go client sends `"system": ""` with every request: empty is absent, as in
    # Ollama (the model's default system prompt stays; raw text stays allowed). With raw, no
    # template applies and Ollama drops the system prompt: so here (it was a 400).
    system = None if body.raw else body.system or None
    if not body.prompt:  # as in Ollama, a system prompt alone is nothing to generate
        loaded = await _loaded(request, engine, model, "response", "", body.keep_alive)
        return json_response({**loaded, "model": body.model})
    req = build_request(
        engine,
        model,
        body.options,
        body.format,
        truncate=body.truncate,
        prompt=body.prompt,
        messages=None,
        system=system,
        prompt_is_message=not body.raw,
    )
    said = {**ignored_options(body.options, req), **request_warnings(engine, model, req)}
    keep_alive = keep_alive_seconds(body.keep_alive)
    waited = load_waited(engine, model)
    handle = engine.submit(
        LLM, model, req, client=client_of(request), owner=owner_of(request), keep_alive_s=keep_alive
    )
    # The name as the client gave it ("smollm2:latest"), as Ollama answers; each line's
    # created_at is its own time, as Ollama's.
    head = {"model": body.model}
    if body.stream:
        return _ndjson(
            engine,
            handle,
            head,
            await first_text(engine, handle, request),
            lambda text: {"response": text},
            lambda r: {"response": ""},
            said,
            waited,
        )
    r = result_or_failure(await wait_task(engine, handle, request))
    return json_response(
        {
            **head,
            "created_at": created_at(),
            "response": r.text,
            "done": True,
            "done_reason": _done_reason(r),
            **_timings(r, waited()),
        },
        headers={"X-Task-Id": handle.task_id, **said},
    )


def _ndjson(
    engine: Engine,
    handle: TaskHandle[LLMResult],
    head: dict[str, Any],
    first: str | None,
    piece: Callable[[str], dict[str, Any] | None],
    end: Callable[[LLMResult], dict[str, Any]],
    headers: dict[str, str],
    waited: Callable[[], float],
) -> StreamingResponse:
    """`first`: the answer's first text, taken before the status line (deps.first_text)."""
    return StreamingResponse(
        _lines(engine, handle, head, first, piece, end, waited),
        media_type=NDJSON,
        headers={"X-Task-Id": handle.task_id, **headers},
    )


def _line(obj: dict[str, Any]) -> bytes:
    return to_json(obj) + b"\n"


async def _lines(
    engine: Engine,
    handle: TaskHandle[LLMResult],
    head: dict[str, Any],
    first: str | None,
    piece: Callable[[str], dict[str, Any] | None],
    end: Callable[[LLMResult], dict[str, Any]],
    waited: Callable[[], float],
) -> AsyncIterator[bytes]:
    """One line per piece of text (`done: false`), from `first` (None: the task ended without
    text), then the last one with the counts; a failure after the stream began is a line
    `{"error": ...}`, which Ollama's clients raise."""

    async def pieces() -> AsyncIterator[str]:
        if first is None:
            return
        yield first
        async for text in texts(handle):
            yield text

    with cancel_unless_ended(engine, handle):
        async for text in pieces():
            fields = piece(text)
            if fields is not None:
                yield _line({**head, "created_at": created_at(), **fields, "done": False})
        view = await handle.done
        r = view.result if view.succeeded else None
        if r is None:
            yield _line({"error": failure(view).message})
            return
        yield _line(
            {
                **head,
                "created_at": created_at(),
                **end(r),
                "done": True,
                "done_reason": _done_reason(r),
                **_timings(r, waited()),
            }
        )
