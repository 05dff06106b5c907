"""GGUF models on llama.cpp (llama-cpp-python): SmolLM2, Qwen2.5, Llama and the like.

Generation runs on a continuous batch (llama_batch.py) of BackendContext.parallel sequences,
each with `n_ctx` tokens of context; the `Llama` object holds the model, its tokenizer and
chat template. Options besides llama-cpp-python's own: `prefill_chunk` (prompt tokens per
sequence per step). On a GPU lane with a budget, `n_gpu_layers` unset places as many layers
as the budget holds with their KV cache (ris.memory.fit.layer_split), the rest on the CPU.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from ris.backends import BackendContext, BackendError, resolve_source
from ris.backends.llama_batch import PREFILL_CHUNK_CPU, PREFILL_CHUNK_GPU, LlamaBatch
from ris.config import ModelSpec
from ris.config.backend_options import LLAMA_CPP_DEFAULT_N_CTX
from ris.lanes.base import ModelDetails
from ris.lanes.llm import (
    LLMBackend,
    LLMOutcome,
    LLMRequest,
    TextOutput,
    as_message,
    continued_turn,
    generate_alone,
)
from ris.lanes.llm_tools import fallback_turns, openai_tool, template_turns
from ris.memory.fit import layer_split, mib
from ris.memory.footprint import file_footprint

_UNUSED_CTX = 64
# The options llama-cpp-python's Llama takes by name (its signature, so its version's), and
# those this backend reads itself (config.backend_options.LlamaCppOptions).
_LLAMA_OPTIONS = frozenset(inspect.signature(Llama.__init__).parameters) - {"self", "kwargs", "model_path"}
_OWN_OPTIONS = frozenset({"n_ctx", "prefill_chunk", "flash_attn"})


def _check_options(spec: ModelSpec) -> None:
    """Llama() takes **kwargs and ignores what it does not know: a typo ("n_ctxx") went unsaid."""
    unknown = sorted(set(spec.options) - _LLAMA_OPTIONS - _OWN_OPTIONS)
    if unknown:
        known = ", ".join(sorted(_LLAMA_OPTIONS | _OWN_OPTIONS))
        raise BackendError(
            "bad_model",
            f"options {', '.join(unknown)}: not options of llama.cpp (llama-cpp-python's Llama) "
            f"nor of RIS's llama_cpp backend; they are: {known}",
        )


class LlamaCppLLM(LLMBackend):
    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        if spec.load_format != "dummy" and resolve_source(spec.source).is_dir():
            raise BackendError(
                "bad_model", f"model source {spec.source!r} is a folder; llama_cpp loads one .gguf file"
            )
        _check_options(spec)

    def __init__(self, spec: ModelSpec, ctx: BackendContext) -> None:
        if spec.load_format == "dummy":
            raise BackendError("bad_model", "llama_cpp has no dummy load format; use transformers")
        path = resolve_source(spec.source)
        opts: dict[str, Any] = {"n_ctx": LLAMA_CPP_DEFAULT_N_CTX, "verbose": False}
        opts.update(spec.options)
        n_ctx = int(opts.pop("n_ctx"))
        gpu = ctx.device.startswith("cuda")
        prefill_chunk = int(opts.pop("prefill_chunk", PREFILL_CHUNK_GPU if gpu else PREFILL_CHUNK_CPU))
        self.placement: str | None = None
        self.placement_reason: str | None = None
        if gpu and "n_gpu_layers" not in opts and ctx.gpu_budget_bytes is not None:
            opts["n_gpu_layers"] = self._layers_for(path, spec, n_ctx, ctx)
        opts.setdefault("n_gpu_layers", -1 if gpu else 0)
        # Unset: on a GPU llama.cpp decides (on where the backend supports it), as llama-server
        # does. On the CPU off: there a sequence's text then depends on how its prompt was
        # batched (a seeded answer differs when its prefix was copied from a busy slot; measured
        # with SmolLM2; far more often than with it off), and it bought no
        # speed on one thread (decode 0.96x, docs/PERFORMANCE_OPTIMIZATION.md).
        flash_attn = opts.pop("flash_attn", None if gpu else False)
        _check_options(spec)
        # The Llama object's own context is never used for generation: keep it tiny.
        self._llm = Llama(
            model_path=str(path),
            n_threads=ctx.threads,
            n_threads_batch=ctx.threads,
            n_ctx=_UNUSED_CTX,
            n_batch=_UNUSED_CTX,
            **opts,
        )
        self.context_tokens = n_ctx
        self._formatter = self._chat_formatter()
        # A template that mentions `tools` renders them itself (Qwen2.5, Llama 3.1, Hermes);
        # for any other the tools go in a system message (llm_tools.fallback_turns).
        template = self._llm.metadata.get("tokenizer.chat_template") or ""
        self.native_tools = self._formatter is not None and "tools" in template
        self._batch = LlamaBatch(
            self._llm,
            ctx.parallel,
            n_ctx,
            self._tokens,
            prefill_chunk,
            None if flash_attn is None else bool(flash_attn),
        )

    def _layers_for(self, path: Path, spec: ModelSpec, n_ctx: int, ctx: BackendContext) -> int:
        """As many layers on the GPU as its budget holds with their KV cache, the rest on the
        CPU (Ollama's partial offload), from the file's tensor sizes; said as the placement."""
        assert ctx.gpu_budget_bytes is not None
        options = {**spec.options, "n_ctx": n_ctx}
        fp = file_footprint(path, options, ctx.parallel)
        if fp is None or not fp.layers:
            return -1  # no layer table to split by: llama.cpp places all
        split = layer_split(fp, ctx.gpu_budget_bytes)
        self.placement = split.placement
        self.placement_reason = (
            f"{min(split.n_gpu_layers, split.n_layer)} of {split.n_layer} layers"
            f"{' and the output head' if split.placement == 'gpu' else ''} on the GPU "
            f"({mib(split.gpu_bytes)} with their KV cache) within the lane's budget "
            f"({mib(ctx.gpu_budget_bytes)}); the model needs {mib(fp.total)}"
        )
        return split.n_gpu_layers

    def _chat_formatter(self) -> Jinja2ChatFormatter | None:
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None

        def special(tok: int) -> str:
            # -1: the GGUF has no such token (llama.cpp would throw across ctypes and end the
            # worker on detokenize([-1]), as llama-cpp-python's own guard knows).
            return "" if tok < 0 else self._llm.detokenize([tok], special=True).decode("utf-8", "replace")

        return Jinja2ChatFormatter(
            template=template,
            eos_token=special(self._llm.token_eos()),
            bos_token=special(self._llm.token_bos()),
            add_generation_prompt=True,
        )

    def _prompt(self, req: LLMRequest) -> tuple[str, tuple[str, ...]]:
        chat = req.chat_turns()
        # A prompt meant as a user's message goes through the template; on a model without one
        # it is completed as written (the role-prefixed fallback below is for `messages`).
        if chat is None or (req.messages is None and self._formatter is None):
            return req.plain_prompt(), ()
        turns, begun = continued_turn([as_message(t) for t in chat], req.constraint is not None)
        tools = [openai_tool(t) for t in req.tools]
        if self._formatter is None:
            plain = fallback_turns(turns, req.tools)
            text = "".join(f"{m['role']}: {m['content']}\n" for m in plain) + "assistant:"
            return text + (f" {begun}" if begun else ""), ("\nuser:",)
        try:
            if self.native_tools:
                formatted = self._formatter(messages=template_turns(turns), tools=tools or None)  # type: ignore[arg-type]
            else:
                formatted = self._formatter(messages=fallback_turns(turns, req.tools))  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - a template's raise_exception(), e.g. roles out of order
            raise BackendError(
                "invalid_request", f"the model's chat template refused the messages: {e}"
            ) from e
        stops = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop]
        return formatted.prompt + begun, tuple(s for s in stops if s)

    def _tokens(self, req: LLMRequest) -> tuple[list[int], tuple[str, ...]]:
        prompt, template_stops = self._prompt(req)
        tokens: list[int] = self._llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        bos = self._llm.token_bos()
        if len(tokens) >= 2 and tokens[0] == tokens[1] == bos:
            # A chat template that writes {{ bos_token }} itself (Llama 3, Mistral, Gemma) on a
            # vocab that adds one too: two BOS, a prompt the model never saw in training (and
            # llama.cpp's own warning). One, as llama-cpp-python and llama-server give.
            tokens = tokens[1:]
        if not tokens:  # an empty prompt, on a model that adds no BOS: start from BOS
            if bos < 0:
                raise BackendError("invalid_request", "the prompt is empty and this model has no BOS token")
            tokens = [bos]
        return tokens, template_stops

    def describe(self) -> ModelDetails:
        return ModelDetails(
            context_tokens=self.context_tokens,
            native_tools=self.native_tools,
            kv_cache_bytes=self._batch.kv_cache_bytes,
            placement=self.placement,
            placement_reason=self.placement_reason,
        )

    def batch(self) -> LlamaBatch:
        return self._batch

    def generate(self, req: LLMRequest, out: TextOutput) -> LLMOutcome:
        """One request alone, on the batch (direct calls; the lane's runner uses `batch()`)."""
        return generate_alone(self._batch, req, out)

    def close(self) -> None:
        self._batch.close()
        self._llm.close()
