"""GGUF models on llama.cpp (llama-cpp-python): SmolLM2, Qwen2.5, Llama and the like."""

from __future__ import annotations

from typing import Any

from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from ris.backends import BackendContext, BackendError, resolve_source
from ris.backends._textgen import StopScanner
from ris.config import ModelSpec
from ris.lanes.llm import LLMBackend, LLMOutcome, LLMRequest, TextOutput


class LlamaCppLLM(LLMBackend):
    def __init__(self, spec: ModelSpec, ctx: BackendContext) -> None:
        if spec.load_format == "dummy":
            raise BackendError("bad_model", "llama_cpp has no dummy load format; use transformers")
        path = resolve_source(spec.source)
        opts: dict[str, Any] = {"n_ctx": 2048, "verbose": False}
        opts.update(spec.options)
        opts.setdefault("n_gpu_layers", -1 if ctx.device.startswith("cuda") else 0)
        self._llm = Llama(model_path=str(path), n_threads=ctx.threads, n_threads_batch=ctx.threads, **opts)
        self.context_tokens = self._llm.n_ctx()
        self._formatter = self._chat_formatter()

    def _chat_formatter(self) -> Jinja2ChatFormatter | None:
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None

        def special(tok: int) -> str:
            return self._llm.detokenize([tok], special=True).decode("utf-8", "replace")

        return Jinja2ChatFormatter(
            template=template,
            eos_token=special(self._llm.token_eos()),
            bos_token=special(self._llm.token_bos()),
            add_generation_prompt=True,
        )

    def _prompt(self, req: LLMRequest) -> tuple[str, tuple[str, ...]]:
        if req.messages is None:
            return req.prompt or "", ()
        messages = [{"role": r, "content": c} for r, c in req.messages]
        if self._formatter is None:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            return text, ("\nuser:",)
        formatted = self._formatter(messages=messages)  # type: ignore[arg-type]
        stops = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop]
        return formatted.prompt, tuple(s for s in stops if s)

    def generate(self, req: LLMRequest, out: TextOutput) -> LLMOutcome:
        prompt, template_stops = self._prompt(req)
        tokens = self._llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if not tokens:  # an empty prompt, on a model that adds no BOS: start from BOS
            tokens = [self._llm.token_bos()]
        budget = self._llm.n_ctx() - len(tokens)
        if budget <= 0:
            raise BackendError(
                "context_length_exceeded",
                f"the prompt is {len(tokens)} tokens; this model's context is {self._llm.n_ctx()}",
            )
        max_tokens = min(req.max_tokens, budget)
        if req.seed is not None:
            self._llm.set_seed(req.seed)
        scanner = StopScanner(req.stop + template_stops, out.emit)
        eos = self._llm.token_eos()
        produced, finish = 0, "length"
        gen = self._llm.generate(
            tokens,
            temp=req.temperature,
            top_p=req.top_p,
            top_k=40 if req.temperature > 0 else 1,
            repeat_penalty=1.0,
            reset=True,
        )
        try:
            for tok in gen:
                if produced == 0:
                    out.prefill_done()
                if out.cancelled():
                    finish = "cancelled"
                    break
                if tok == eos and not req.ignore_eos:
                    finish = "stop"
                    break
                produced += 1
                if tok != eos:
                    scanner.feed_bytes(self._llm.detokenize([tok], prev_tokens=None))
                if scanner.stopped:
                    finish = "stop"
                    break
                if produced >= max_tokens:
                    break
        finally:
            gen.close()
        scanner.flush()
        return LLMOutcome(finish_reason=finish, prompt_tokens=len(tokens), completion_tokens=produced)

    def close(self) -> None:
        self._llm.close()
