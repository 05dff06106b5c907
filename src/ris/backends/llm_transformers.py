"""Hugging Face causal LMs (Qwen2.5, Llama) on GPU or CPU, with a `dummy` load format.

`load_format: "dummy"` builds a named architecture with random weights (as vLLM does), so the
scheduling of a 7B-shape model can be measured without downloading weights. Its tokenizer is
a byte-level stand-in: the text it produces is noise, the timings are real.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch

from ris.backends import BackendContext, BackendError, resolve_source
from ris.backends._textgen import StopScanner
from ris.config import ModelSpec
from ris.lanes.llm import LLMBackend, LLMOutcome, LLMRequest, TextOutput, as_message
from ris.lanes.llm_tools import fallback_turns

# Architecture shapes for the dummy load format (Qwen2 family).
DUMMY_SHAPES: dict[str, dict[str, int]] = {
    "qwen2.5-7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
    ),
    "qwen2.5-1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
    ),
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
    ),
}


class ByteTokenizer:
    """Stand-in tokenizer for dummy models: UTF-8 bytes in, printable ASCII out."""

    eos_token_id = 0
    has_template = True

    def encode(self, text: str) -> list[int]:
        return [b + 1 for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(32 + tok % 95) for tok in ids)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages) + "<|assistant|>"


class HFTokenizer:
    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.eos_token_id = self._tok.eos_token_id
        self.has_template = bool(getattr(self._tok, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return str(self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def _dtype(name: str | None, device: str) -> torch.dtype:
    if name:
        return getattr(torch, name)  # type: ignore[no-any-return]
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


class TransformersLLM(LLMBackend):
    def __init__(self, spec: ModelSpec, ctx: BackendContext) -> None:
        from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        torch.set_num_threads(ctx.threads)
        # The worker sees only its own GPU (CUDA_VISIBLE_DEVICES), always as cuda:0.
        self._device = "cuda:0" if ctx.device.startswith("cuda") else "cpu"
        opts: dict[str, Any] = dict(spec.options)
        dtype = _dtype(opts.pop("dtype", None), self._device)
        self._max_ctx = int(opts.pop("max_context", 32768))
        self.context_tokens = self._max_ctx
        if spec.load_format == "dummy":
            shape = spec.source or "qwen2.5-7b"
            if shape not in DUMMY_SHAPES:
                raise BackendError(
                    "bad_model", f"dummy shape {shape!r} unknown; known: {', '.join(DUMMY_SHAPES)}"
                )
            cfg = Qwen2Config(max_position_embeddings=32768, tie_word_embeddings=False, **DUMMY_SHAPES[shape])  # type: ignore[arg-type]
            torch.manual_seed(0)
            prev = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                with torch.device(self._device):
                    self._model = Qwen2ForCausalLM(cfg)
            finally:
                torch.set_default_dtype(prev)
            self._tok: ByteTokenizer | HFTokenizer = ByteTokenizer()
        else:
            path = str(resolve_source(spec.source))
            self._model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, local_files_only=True, **opts
            ).to(self._device)  # type: ignore[arg-type]
            self._tok = HFTokenizer(path)
        self._model.eval()  # type: ignore[no-untyped-call]
        # transformers 5.x renamed the KV-cache argument and output field `past_key_values` -> `cache`.
        params = inspect.signature(self._model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def _sync(self) -> None:
        if self._device.startswith("cuda"):
            torch.cuda.synchronize()

    @torch.inference_mode()
    def generate(self, req: LLMRequest, out: TextOutput) -> LLMOutcome:
        if req.constraint is not None or req.tools:
            # No grammar here: a JSON schema or tool call would be hoped for, not enforced.
            # The API refuses these for this backend first (its registration: no `constrains`).
            raise BackendError(
                "unsupported_for_model",
                "the transformers backend cannot constrain decoding: structured output and tools "
                "need a llama_cpp model",
            )
        turns = req.chat_turns()
        if turns is not None and (req.messages is not None or self._tok.has_template):
            # Past tool calls and tool answers as plain turns (the fallback's text form).
            prompt = self._tok.chat_prompt(fallback_turns([as_message(t) for t in turns], ()))
        else:
            prompt = req.plain_prompt()
        ids = self._tok.encode(prompt) or [self._tok.eos_token_id or 0]
        if len(ids) >= self._max_ctx:
            raise BackendError(
                "context_length_exceeded",
                f"the prompt is {len(ids)} tokens; this model's context is {self._max_ctx}",
            )
        gen = torch.Generator(device=self._device)
        gen.manual_seed(req.seed if req.seed is not None else int.from_bytes(os.urandom(4), "little"))
        scanner = StopScanner(req.stop, out.emit)
        eos = self._tok.eos_token_id
        max_tokens = min(req.max_tokens, self._max_ctx - len(ids))
        input_ids = torch.tensor([ids], device=self._device)
        cache = None
        produced, finish = 0, "length"
        generated: list[int] = []
        emitted = 0
        while produced < max_tokens:
            if out.cancelled():
                finish = "cancelled"
                break
            step = self._model(
                input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self._cache_arg: cache}
            )
            cache = getattr(step, self._cache_arg)
            tok = self._sample(step.logits[0, -1].float(), req, gen)
            self._sync()
            if produced == 0:
                out.prefill_done()
            if tok == eos and not req.ignore_eos:
                finish = "stop"
                break
            produced += 1
            generated.append(tok)
            # Decode the whole answer each step: exact for every tokenizer (BPE merges, partial
            # UTF-8); a trailing U+FFFD means a character is still incomplete, so wait.
            text = self._tok.decode(generated)
            if not text.endswith("\ufffd"):
                scanner.feed(text[emitted:])
                emitted = len(text)
            if scanner.stopped:
                finish = "stop"
                break
            input_ids = torch.tensor([[tok]], device=self._device)
        scanner.flush()
        return LLMOutcome(finish_reason=finish, prompt_tokens=len(ids), completion_tokens=produced)

    @staticmethod
    def _sample(logits: torch.Tensor, req: LLMRequest, gen: torch.Generator) -> int:
        if req.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / req.temperature, dim=-1)
        if req.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < req.top_p
            sorted_p = sorted_p * keep
            choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=gen))

    def close(self) -> None:
        del self._model
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()
