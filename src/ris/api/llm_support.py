"""What the text routes (/api/llm, /v1/chat, /v1/completions, /api/chat/speak) check of an LLM
request before it is queued: the prompt's language, the model's context window, and whether
the model's backend can decode under a grammar (structured output, tools)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from ris import catalogue
from ris.api.errors import APIError
from ris.api.streams import warnings_header
from ris.lanes import Lane
from ris.lanes.llm import LANE as LLM_LANE
from ris.lanes.llm import LLMRequest, LLMResult
from ris.languages import language_warning, script_language
from ris.runtime.engine import Engine


def tagged(name: str) -> str:
    """A model's name as Ollama lists it: with its tag, ":latest" where it has none. Clients
    match a name they were given against the list (LangChain's validate_model takes "m" for
    "m:latest", not "m:latest" for "m")."""
    return name if ":" in name else f"{name}:latest"


def llm_warnings(engine: Engine, model: str, texts: Iterable[str | None]) -> list[str]:
    """Notes for an answer the client may not expect: a prompt in a language the model does
    not write (it is answered all the same)."""
    languages = engine.config.lane(Lane.LLM).models[model].languages
    if not languages:  # unknown: nothing is flagged, and the prompt need not be read
        return []
    text = "\n".join(t for t in texts if t)
    note = language_warning(model, languages, text, _suggestion(text))
    return [] if note is None else [note]


def context_full(r: LLMResult, asked: int | None) -> list[str]:
    """A note for an answer the model's context cut short of the `max_tokens` asked (None: none
    asked, the context's end is the answer's): it ended "length" after 1 token of 16, a prompt
    of 126 tokens leaving no more of a 128-token context, and nothing said why. OpenAI refuses
    such a request; llama.cpp's server cuts it; here it is answered, and said."""
    if asked is None or r.finish_reason != "length" or r.completion_tokens >= asked:
        return []
    return [
        f"max_tokens: the answer stopped after {r.completion_tokens} of the {asked} tokens asked: "
        f"the prompt's {r.prompt_tokens} tokens left no more room in the model's context (n_ctx)"
    ]


def with_notes(header: dict[str, str], notes: list[str]) -> dict[str, str]:
    """An `X-Warnings` header (warnings_header) with `notes` added."""
    if not notes:
        return header
    said = json.loads(header["X-Warnings"]) if "X-Warnings" in header else []
    return {**header, **warnings_header([*said, *notes])}


def request_warnings(engine: Engine, model: str, req: LLMRequest) -> dict[str, str]:
    """`llm_warnings` of a request as built (its system, prompt and every turn) as the
    `X-Warnings` header: the OpenAI and Ollama answers have no field of their own for them."""
    turns = (t[1] if isinstance(t, tuple) else t.content for t in req.messages or ())
    return warnings_header(llm_warnings(engine, model, [req.system, req.prompt, *turns]))


def _suggestion(text: str) -> str | None:
    language = script_language(text)
    return None if language is None else catalogue.writer_of(language, Lane.LLM)


def llm_context(engine: Engine, model: str) -> int | None:
    """The context window of an LLM its worker has reported (the default model, loaded at
    start); None for one that loads on first use, whose worker checks it instead."""
    info = engine.model_infos(Lane.LLM).get(model)
    return None if info is None else info.details.context_tokens


def require_penalizing_backend(engine: Engine, model: str, param: str) -> None:
    """Refuse repetition penalties for a model whose backend does not apply them
    (transformers): ignored, the answer would repeat itself as if none were asked."""
    _require_ability(engine, model, param, "penalizes", "applies repetition penalties")


def require_constraining_backend(engine: Engine, model: str, param: str) -> None:
    """Refuse structured output or tools for a model whose backend cannot decode under a
    grammar (transformers): they would be ignored, which is worse than a refusal."""
    _require_ability(engine, model, param, "constrains", "constrains decoding")


def _require_ability(engine: Engine, model: str, param: str, ability: str, does: str) -> None:
    """Refuse `param` for a model whose backend lacks `ability` (a BackendEntry flag)."""
    backend = engine.config.lane(Lane.LLM).models[model].backend
    if not getattr(LLM_LANE.backend(backend), ability):
        allowed = [name for name, entry in LLM_LANE.backends.items() if getattr(entry, ability)]
        raise APIError(
            422,  # /v1 answers it as OpenAI does a bad parameter: 400
            "unsupported_for_model",
            f"{param} needs a backend that {does} ({', '.join(sorted(allowed))}); the model "
            f"'{model}' runs on {backend} (GET /api/models shows each model's abilities)",
            param=param,
        )
