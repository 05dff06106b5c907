"""Hugging Face causal LMs (Qwen2.5, Llama) on GPU or CPU, with a `dummy` load format.

Options besides `from_pretrained`'s own: `dtype`, `max_context`, `kv_cache_tokens`, and for the
continuous-batching engine `cuda_graphs` (true/false; unset: the engine decides) and
`compile_level` (0-3: torch.compile of its steps; 0: none).

`load_format: "dummy"` builds a named architecture with random weights (as vLLM does), so the
scheduling of a 7B-shape model can be measured without downloading weights. Its tokenizer is
a byte-level stand-in: the text it produces is noise, the timings are real.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ris.backends import BackendContext, BackendError, resolve_source
from ris.backends.hf_batch import TransformersBatch
from ris.backends.torch_memory import cap_allocator
from ris.config import ModelSpec
from ris.lanes.llm import (
    LLMBackend,
    LLMOutcome,
    LLMRequest,
    TextOutput,
    as_message,
    continued_turn,
    generate_alone,
)
from ris.lanes.llm_tools import fallback_turns
from ris.memory.footprint import DEFAULT_LOAD_DTYPES
from ris.messages import ModelDetails

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

    def encode(self, text: str, special: bool = False) -> list[int]:
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

    def encode(self, text: str, special: bool = False) -> list[int]:
        """`special`: the tokenizer's own BOS (and such) around it, as for a raw completion; a
        chat template writes its own."""
        return list(self._tok.encode(text, add_special_tokens=special))

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return str(self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def end_ids(model_eos: int | list[int] | None, tokenizer_eos: int | None) -> tuple[int, ...]:
    """Every token that ends an answer: the model's generation config (one id or a list) and
    its tokenizer's end token, as transformers' own generate stops on any of them."""
    ids = model_eos if isinstance(model_eos, (list, tuple)) else [model_eos]
    return tuple(sorted({int(i) for i in (*ids, tokenizer_eos) if i is not None and int(i) >= 0}))


def _dtype(name: str | None, device: str) -> torch.dtype:
    # The default is the footprint's (DEFAULT_LOAD_DTYPES), so the budget counts what loads.
    return getattr(torch, name or DEFAULT_LOAD_DTYPES["transformers", device.startswith("cuda")])  # type: ignore[no-any-return]


class TransformersLLM(LLMBackend):
    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        if spec.load_format != "dummy":
            resolve_source(spec.source)  # model_not_found

    def __init__(self, spec: ModelSpec, ctx: BackendContext) -> None:
        from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        torch.set_num_threads(ctx.threads)
        # The worker sees only its own GPU (CUDA_VISIBLE_DEVICES), always as cuda:0.
        self._device = "cuda:0" if ctx.device.startswith("cuda") else "cpu"
        # The lane's GPU budget caps the allocator: weights, KV cache and every step's
        # temporaries stay inside it, or the step fails `gpu_out_of_memory` (worker_main).
        cap_allocator(ctx)
        opts: dict[str, Any] = dict(spec.options)
        dtype = _dtype(opts.pop("dtype", None), self._device)
        self._max_ctx = int(opts.pop("max_context", 32768))
        kv_tokens = opts.pop("kv_cache_tokens", None)
        cuda_graphs = opts.pop("cuda_graphs", None)
        compile_level = int(opts.pop("compile_level", 0))
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
        self._batch = TransformersBatch(
            self._model,
            self._tokens,
            self._tok.decode,
            end_ids(getattr(self._model.generation_config, "eos_token_id", None), self._tok.eos_token_id),
            parallel=ctx.parallel,
            n_ctx=self._max_ctx,
            kv_cache_tokens=kv_tokens,
            cuda_graphs=None if cuda_graphs is None else bool(cuda_graphs),
            compile_level=compile_level,
        )
        self.context_tokens = self._max_ctx = self._batch.n_ctx

    def _tokens(self, req: LLMRequest) -> tuple[list[int], tuple[str, ...]]:
        """The prompt's tokens, and the stops its form adds (a fallback chat's next turn)."""
        turns = req.chat_turns()
        if turns is not None and (req.messages is not None or self._tok.has_template):
            # Past tool calls and tool answers as plain turns (the fallback's text form).
            chat, begun = continued_turn([as_message(t) for t in turns], req.constraint is not None)
            plain = fallback_turns(chat, ())
            if self._tok.has_template:
                ids = self._tok.encode(self._tok.chat_prompt(plain) + begun)
                return ids or [self._tok.eos_token_id or 0], ()
            # No chat template (a base model): the turns as text, as the llama.cpp lane does.
            text = "".join(f"{m['role']}: {m['content']}\n" for m in plain) + "assistant:"
            text += f" {begun}" if begun else ""
            return self._tok.encode(text, special=True) or [self._tok.eos_token_id or 0], ("\nuser:",)
        # A raw completion: with the tokenizer's BOS, as the model was trained (Gemma, Llama).
        return self._tok.encode(req.plain_prompt(), special=True) or [self._tok.eos_token_id or 0], ()

    def describe(self) -> ModelDetails:
        return ModelDetails(context_tokens=self.context_tokens, kv_cache_bytes=self._batch.kv_cache_bytes)

    def batch(self) -> TransformersBatch:
        return self._batch

    def generate(self, req: LLMRequest, out: TextOutput) -> LLMOutcome:
        """One request alone, on the batch (direct calls; the lane's runner uses `batch()`)."""
        return generate_alone(self._batch, req, out)

    def close(self) -> None:
        # Every reference to the weights and the KV cache goes (the batch holds the model too):
        # the model cache collects them next and hands the card's memory back to the budget.
        self._batch.close()
        del self._batch, self._model
