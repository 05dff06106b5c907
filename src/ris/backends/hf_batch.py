"""Continuous batching for Hugging Face models, on transformers' own engine.

transformers' `ContinuousBatchingManager` (paged attention, the engine `transformers serve`
runs) decodes every running request together, one step at a time, on a thread of its own;
requests join and leave between its steps. This module is the lane's side of it: a request is
added with its own token limit, end-of-sequence rule and sampling (hf_sampling.py: its own
temperature, top_p and seed, whoever else is decoding), its tokens come back as the engine
streams them, and the rest is done here per sequence: text decoding, stop strings, the first
token ending prefill (the image lane's cue to resume), cancellation.

Memory is the engine's paged KV cache, sized here, never by the engine's default (a share of
the device's free memory, which would take a card the image lane shares): `kv_cache_tokens`
tokens in all (default: `parallel` sequences of up to 4,096 tokens), in pages of 256.
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ris.backends import BackendError
from ris.backends._textgen import StopScanner
from ris.lanes.llm import LLMBatch, LLMOutcome, LLMRequest, TextOutput, fit_context, stepped
from ris.memory.footprint import HF_PAGE_TOKENS, hf_kv_bytes_per_token, hf_kv_cache_tokens

# How long a step waits for the engine's next tokens before handing control back to the
# worker (which reads its messages, cancellations included, between steps).
STEP_WAIT_S = 0.05
# Tokens one engine step may carry (prompt chunks and every decoding sequence's token): small
# on a CPU, where a big prompt chunk stalls the streams decoding beside it for its whole time
# (as the llama.cpp batch's 32-token chunks), larger on a GPU, which computes them at once.
STEP_TOKENS_CPU = 128
STEP_TOKENS_GPU = 2048
PAGE_TOKENS = HF_PAGE_TOKENS  # the engine's default page (block) size
ENGINE_START_S = 120.0  # for the engine's thread to allocate its cache


@dataclass
class _Sequence:
    key: str
    req: LLMRequest
    out: TextOutput
    scanner: StopScanner
    prompt_tokens: int
    seen: int = 0  # tokens of the engine's output handled so far
    generated: list[int] = field(default_factory=list)  # tokens of the answer (no end token)
    emitted: int = 0  # characters of the decoded answer streamed
    finish: str | None = None


class TransformersBatch(LLMBatch):
    def __init__(
        self,
        model: Any,  # a transformers causal LM (ContinuousMixin)
        tokenize: Callable[[LLMRequest], tuple[list[int], tuple[str, ...]]],
        decode: Callable[[list[int]], str],
        eos_token_ids: Sequence[int],
        parallel: int,
        n_ctx: int,
        kv_cache_tokens: int | None = None,
        cuda_graphs: bool | None = None,
        compile_level: int = 0,
    ) -> None:
        from transformers import ContinuousBatchingConfig, GenerationConfig

        self._model = model
        self._tokenize = tokenize
        self._decode = decode
        # Every id that ends an answer: a model's generation config often lists several
        # (Qwen2.5-Instruct <|im_end|> and <|endoftext|>, Llama 3.1 three), its tokenizer one.
        self._eos = frozenset(eos_token_ids)
        self.parallel = parallel
        on_gpu = model.device.type == "cuda"
        self.kv_cache_tokens = hf_kv_cache_tokens(parallel, n_ctx, kv_cache_tokens)
        # Each sequence's context is its share of the cache (whole pages), as llama.cpp's slots
        # are: `parallel` sequences at their longest always fit, so the engine never has to
        # evict one to make room (an evicted request restarts from scratch, and the engine then
        # holds new ones back until some request ends by itself, which a cancelled or stopped
        # one does not).
        share = max(PAGE_TOKENS, self.kv_cache_tokens // parallel // PAGE_TOKENS * PAGE_TOKENS)
        self.n_ctx = min(n_ctx, share)
        step_tokens = STEP_TOKENS_GPU if on_gpu else STEP_TOKENS_CPU
        self._cb_config = ContinuousBatchingConfig(
            num_blocks=self.kv_cache_tokens // PAGE_TOKENS,
            max_batch_tokens=max(step_tokens, parallel),
            max_requests_per_batch=parallel,
            seed=0,
            # None: the engine decides (graphs only where attention needs no mask). The model
            # options `cuda_graphs` and `compile_level` override it, to be measured on a GPU:
            # the engine's per-step Python cost dominated a 1.5B model's decode on an H200.
            use_cuda_graph=cuda_graphs,
            default_compile_level=compile_level,
        )
        # Greedy for the engine: the sampling happens in the per-request processors.
        self._gen_config = GenerationConfig(  # type: ignore[no-untyped-call]
            do_sample=False,
            max_new_tokens=self.n_ctx,
            eos_token_id=sorted(self._eos) or -1,
        )
        self.kv_cache_bytes = self.kv_cache_tokens * _kv_bytes_per_token(model)
        self._engine = self._start_engine()
        self._seqs: dict[str, _Sequence] = {}  # by the engine's request id
        self._early: dict[str, LLMOutcome] = {}  # added already cancelled: reported next step
        self._ids = itertools.count()

    def _start_engine(self) -> Any:
        from ris.backends.hf_sampling import per_request_sampling

        engine = self._model.init_continuous_batching(
            generation_config=self._gen_config, continuous_batching_config=self._cb_config
        )
        engine.logit_processor = per_request_sampling()
        engine.start()
        # The engine allocates its KV cache on its own thread: wait for it, so a cache that does
        # not fit fails the model's load rather than every request after it.
        deadline = time.monotonic() + ENGINE_START_S
        while engine.batch_processor is None and time.monotonic() < deadline:
            error = engine.background_thread_status.fatal_error
            if error is not None or not engine.is_running():
                engine.destroy()
                raise BackendError(
                    "model_load_failed",
                    f"transformers' engine could not start with a KV cache of {self.kv_cache_tokens} "
                    f"tokens: {error or 'its thread ended'} (lower the model's kv_cache_tokens or parallel)",
                )
            time.sleep(0.01)
        return engine

    # ----- LLMBatch ------------------------------------------------------------------------

    def free(self) -> int:
        return self.parallel - len(self._seqs) - len(self._early)

    @property
    def active(self) -> int:
        return len(self._seqs) + len(self._early)

    @property
    def prefilling(self) -> bool:
        return any(s.seen == 0 for s in self._seqs.values())

    def add(self, key: str, req: LLMRequest, out: TextOutput) -> None:
        if req.constraint is not None or req.tools:
            # No grammar here: a JSON schema or tool call would be hoped for, not enforced.
            # The API refuses these for this backend first (its registration: no `constrains`).
            raise BackendError(
                "unsupported_for_model",
                "the transformers backend cannot constrain decoding: structured output and tools "
                "need a llama_cpp model",
            )
        if out.cancelled():
            # Ended before it started: never handed to the engine, whose queues could take a
            # cancel before the request it cancels and forget it.
            self._early[key] = LLMOutcome("cancelled", 0, 0)
            return
        error = self._engine_error()
        if error is not None and not self._seqs:
            # The engine's thread died (the sequences it held failed with its error): a new one.
            print(f"transformers engine stopped ({error}); starting a new one", file=sys.stderr)
            self._engine.destroy()
            self._engine = self._start_engine()
        req, ids, template_stops = fit_context(req, self._tokenize, self.n_ctx)
        if len(ids) >= self.n_ctx:
            raise BackendError(
                "context_length_exceeded",
                f"the prompt is {len(ids)} tokens; this model's context is {self.n_ctx}",
            )
        seed = req.seed if req.seed is not None else int.from_bytes(os.urandom(4), "little")
        # The engine's id is ours alone: a key may come back (a direct call's) while a cancel
        # of its previous use is still queued in the engine.
        rid = f"{key}#{next(self._ids)}"
        added = self._engine.add_request(
            ids,
            request_id=rid,
            max_new_tokens=max(1, min(req.max_tokens, self.n_ctx - len(ids))),
            streaming=True,
            eos_token_id=-1 if req.ignore_eos or not self._eos else sorted(self._eos),
            temperature=float(req.temperature),
            top_p=float(req.top_p),
            seed=int(seed) & 0xFFFFFFFF,
        )
        if added is None:
            raise BackendError("backend_error", "the transformers engine is not accepting requests")
        self._seqs[rid] = _Sequence(key, req, out, StopScanner(req.stop + template_stops, out.emit), len(ids))

    def step(self) -> list[tuple[str, LLMOutcome | BackendError]]:
        return stepped(self._step)

    def _step(self, ended: list[tuple[str, LLMOutcome | BackendError]]) -> None:
        ended.extend(self._early.items())
        self._early.clear()
        for rid, seq in list(self._seqs.items()):
            if seq.out.cancelled():
                seq.finish = "cancelled"
                ended.append(self._end(rid))
        if not self._seqs:
            return
        for output in self._outputs():
            rid = output.request_id
            found = self._seqs.get(rid)
            if found is None:
                if not output.is_finished():
                    self._engine.cancel_request(rid)  # ended here: again, should the first be lost
                continue
            seq = found
            if output.error is not None:
                self._seqs.pop(rid)
                ended.append((seq.key, BackendError("backend_error", f"transformers: {output.error}")))
                continue
            self._feed(seq, output.generated_tokens)
            if seq.finish is None and output.is_finished():
                seq.finish = "length"
            if seq.finish is not None:
                ended.append(self._end(rid))
        error = self._engine_error()
        if error is not None:
            # The engine's thread died: every sequence it held fails (reported, never dropped);
            # the next request starts a new engine.
            failure = BackendError("backend_error", f"the transformers engine stopped ({error})")
            ended.extend((seq.key, failure) for seq in self._seqs.values())
            self._seqs.clear()

    def abort(self) -> list[str]:
        keys = list(self._early)
        self._early.clear()
        for rid, seq in list(self._seqs.items()):
            self._engine.cancel_request(rid)
            keys.append(seq.key)
        self._seqs.clear()
        return keys

    def close(self) -> None:
        if not hasattr(self, "_engine"):
            return  # closed already
        self.abort()
        self._engine.stop(block=True, timeout=10, hard_stop=True)
        self._engine.destroy()
        # The engine holds the KV cache (and on a GPU its CUDA graphs' memory pools); the
        # model holds the weights: neither may outlive the backend's unload.
        del self._engine, self._model

    # ----- helpers ---------------------------------------------------------------------------

    def _outputs(self) -> list[Any]:
        """What the engine streamed since the last step: waits up to STEP_WAIT_S for the first."""
        outputs = []
        out_queue: queue.Queue[Any] = self._engine.output_router.output_queue
        deadline = time.monotonic() + STEP_WAIT_S
        while True:
            try:
                outputs.append(out_queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
            try:
                while True:
                    outputs.append(out_queue.get_nowait())
            except queue.Empty:
                break
        return outputs

    def _feed(self, seq: _Sequence, tokens: list[int]) -> None:
        """The sequence's new tokens, through the end-token rule, the decoder and the stops."""
        fresh = tokens[seq.seen :]
        seq.seen = len(tokens)
        if fresh:
            seq.out.prefill_done()
        for tok in fresh:
            if tok in self._eos and not seq.req.ignore_eos:
                seq.finish = "stop"
                return
            seq.generated.append(tok)
        # Decode the whole answer: exact for every tokenizer (BPE merges, partial UTF-8); a
        # trailing U+FFFD means a character is still incomplete, so wait.
        text = self._decode(seq.generated)
        if not text.endswith("\ufffd"):
            seq.scanner.feed(text[seq.emitted :])
            seq.emitted = len(text)
        if seq.scanner.stopped:
            seq.finish = "stop"

    def _end(self, rid: str) -> tuple[str, LLMOutcome]:
        seq = self._seqs.pop(rid)
        assert seq.finish is not None
        if seq.finish == "cancelled" or seq.scanner.stopped:
            self._engine.cancel_request(rid)  # the engine stops computing it at its next step
        if seq.finish != "cancelled":
            # What a trailing incomplete character held back: the text before it goes out, the
            # character's bytes do not (the answer ended in its middle).
            text = self._decode(seq.generated).rstrip("\ufffd")
            if len(text) > seq.emitted:
                seq.scanner.feed(text[seq.emitted :])
                seq.emitted = len(text)
            seq.scanner.flush()
        return seq.key, LLMOutcome(seq.finish, seq.prompt_tokens, len(seq.generated))

    def _engine_error(self) -> str | None:
        """Why the engine's thread is no longer running (None: it runs)."""
        error = self._engine.background_thread_status.fatal_error
        if error is not None:
            return f"{type(error).__name__}: {error}"
        return None if self._engine.is_running() else "its thread ended"


def _kv_bytes_per_token(model: Any) -> int:
    """One token's KV cache on the loaded `model`, by the footprint's arithmetic (the fit
    checks count the same before the load)."""
    dtype = str(model.dtype).removeprefix("torch.")
    per_token = hf_kv_bytes_per_token(model.config.to_dict(), dtype)
    if per_token is None:
        raise BackendError("bad_model", "the model's config gives no layer and head counts for its KV cache")
    return per_token
