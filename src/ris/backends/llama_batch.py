"""Continuous batching on llama.cpp: several generations advanced by one `llama_decode` per step.

The way llama-server does it, on llama.cpp's batch API through llama-cpp-python's bindings:
one context with `parallel` sequences (slots), each with its own part of the KV cache
(n_ctx per slot) and its own sampler chain (temperature, top_p, seed). A step puts every
decoding sequence's last token in one batch, then fills what is left of the batch budget with
prompt tokens of sequences still in prefill, at most `prefill_chunk` per sequence per step, so
a long prompt is processed in chunks between the running streams' tokens rather than
stalling them. A sequence joins between steps and leaves (finished, stopped or cancelled)
without disturbing the others. A constrained sequence (a JSON schema, a tool call) carries
its own grammar (_grammar.py) beside its sampler chain and batches like any other; when its
grammar refuses the freely sampled token, the resample (the grammar filtering the whole
vocabulary: up to a second for a big enum) runs on the batch's grammar thread over a copy of
the logits while the sequence sits out the coming steps, so a costly schema slows its own
answer, not everyone's.

Prefix cache: a slot remembers the tokens its KV holds. A new request takes the free slot
whose cache it continues (the next turn of that slot's conversation), else the least recently
used free slot, and copies the longest prefix it shares with any slot (the chat template, a
system prompt) from there, so turn k of each of several interleaved conversations, and every
request over a common system prompt, costs its new tokens only.
"""

from __future__ import annotations

import ctypes
import random
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from ris.backends import BackendError
from ris.backends._grammar import Grammar
from ris.backends._textgen import StopScanner
from ris.backends.thread_choice import ThreadChoice
from ris.lanes.llm import LLMBatch, LLMOutcome, LLMRequest, TextOutput, fit_context, stepped
from ris.memory.footprint import GGML_TYPE_NAMES, kv_bytes_per_token
from ris.messages import EngineFigures

# Prompt tokens a step may carry while streams decode (shared by the prompts waiting): the
# streams wait that long for their next token. On one CPU core SmolLM2-135M prefills ~145
# tokens/s whether in chunks of 32 or 512 (measured, docs/PERFORMANCE_OPTIMIZATION.md), so 32
# costs no prefill speed and keeps the stall near 0.2 s (256: 1.8 s). A GPU prefills far faster
# per step and gains from big chunks: 512, llama.cpp's default micro-batch.
PREFILL_CHUNK_CPU = 32
PREFILL_CHUNK_GPU = 512
# When no sequence is decoding, nobody waits on a stall: prompts (a burst of new requests)
# are prefilled up to this many tokens per step, all of them together, as llama-server does.
IDLE_PREFILL = 512
# A shared prefix shorter than this is recomputed rather than copied from another slot.
MIN_BORROW = 16
# With nothing to decode but a grammar resample running, how long a step waits for it before
# handing control back to the worker (which reads its messages between steps).
RESAMPLE_WAIT_S = 0.05


@dataclass
class _Sequence:
    key: str
    req: LLMRequest
    out: TextOutput
    scanner: StopScanner
    sampler: Any  # llama_sampler_p
    prompt: list[int]
    max_tokens: int
    pending: list[int]  # prompt tokens not yet decoded
    grammar: Grammar | None = None  # the request's constraint, if any
    produced: int = 0
    next_token: int | None = None  # sampled, not yet in the KV cache
    index: int = -1  # its logits' row in this step's batch, -1: none
    finish: str | None = None
    resampling: Future[int] | None = None  # its grammar's resample, on the grammar thread


@dataclass
class _Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this slot holds, in order
    scope: str | None = None  # whose prompt left that KV (LLMRequest.cache_scope)
    seq: _Sequence | None = None
    last_used: int = 0


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class LlamaBatch(LLMBatch):
    def __init__(
        self,
        llm: Any,  # llama_cpp.Llama: the model, its tokenizer and its context parameters
        parallel: int,
        n_ctx: int,
        tokenize: Callable[[LLMRequest], tuple[list[int], tuple[str, ...]]],
        prefill_chunk: int = PREFILL_CHUNK_CPU,
        flash_attn: bool | None = None,
    ) -> None:
        """`tokenize(req)`: the request's prompt tokens and its chat template's stop strings;
        `flash_attn`: None lets llama.cpp decide (on where the backend supports it), as
        llama-server's default `-fa auto` does."""
        self._llm = llm
        self._model = llm._model  # noqa: SLF001 - the loaded model, shared with `llm`
        self._vocab = self._model.vocab
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_ctx = n_ctx
        self.prefill_chunk = prefill_chunk
        self._tokenize = tokenize
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_seq_max = parallel
        params.n_ctx = n_ctx * parallel
        # A KV stream per slot: each sequence's attention is computed alone, so its text
        # depends far less on the others in the batch (one shared buffer changed a seed's text
        # under load; a reused prefix still can, rarely: docs/PERFORMANCE_OPTIMIZATION.md), and
        # one long chat cannot take another's context.
        params.kv_unified = False
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
            if flash_attn is None
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        # What the slots' KV cache takes, every slot's n_ctx cells allocated at start.
        self.kv_cache_bytes = kv_cache_bytes(llm, n_ctx * parallel, params.type_k, params.type_v)
        # Room for every slot's decode token and a prompt chunk in one step, and for whole
        # prompts when nobody is decoding (IDLE_PREFILL).
        self.n_batch = max(IDLE_PREFILL, parallel + prefill_chunk)
        params.n_batch = params.n_ubatch = self.n_batch
        ctx = llama_cpp.llama_init_from_model(self._model.model, params)
        if not ctx:
            raise BackendError(
                "model_load_failed", f"llama.cpp could not make a context for {parallel} slots"
            )
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        # Each step on the lane's threads or on one, whichever decodes faster now (thread_choice).
        self.threads = ThreadChoice(int(params.n_threads))
        self._on_threads = int(params.n_threads)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._grammar_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar")
        self._slots = [_Slot(i) for i in range(parallel)]
        self._buf = ctypes.create_string_buffer(256)
        self._uses = 0
        self._turn = 0  # which prefilling slot gets the step's prompt budget first
        self.last_reused = 0  # prompt tokens the last added request found in a slot's cache
        self.last_step_tokens = 0  # tokens the last step decoded, all sequences together
        # Counters for figures() (plain ints: the heartbeat thread reads them mid-step).
        self._steps = self._batched = self._prompt = self._reused = self._generated = 0
        self._step_prompt = 0  # prompt tokens in the batch being filled

    # ----- LLMBatch ------------------------------------------------------------------------

    def free(self) -> int:
        return sum(1 for s in self._slots if s.seq is None)

    @property
    def active(self) -> int:
        return len(self._slots) - self.free()

    @property
    def prefilling(self) -> bool:
        return any(s.seq is not None and s.seq.pending for s in self._slots)

    def add(self, key: str, req: LLMRequest, out: TextOutput) -> None:
        req, prompt, stops = fit_context(req, self._tokenize, self.n_ctx)
        if len(prompt) >= self.n_ctx:
            raise BackendError(
                "context_length_exceeded",
                f"the prompt is {len(prompt)} tokens; this model's context is {self.n_ctx}",
            )
        # Built before the slot is touched: a schema that cannot be compiled refuses the request.
        grammar = None if req.constraint is None else Grammar(self._vocab, self._n_vocab, req.constraint)
        scope = req.cache_scope
        slot = self._slot_for(prompt, scope)
        if slot.scope != scope:  # another owner's prompt: none of it serves this one
            slot.cached, slot.scope = [], scope
        self._borrow_prefix(slot, prompt)
        # Keep the shared prefix's KV; at least one prompt token is decoded, for its logits.
        keep = min(_common_prefix(slot.cached, prompt), len(prompt) - 1)
        if not llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, keep, -1):
            keep = 0  # a memory that cannot drop part of a sequence: drop all of it
            llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
        slot.cached = prompt[:keep]
        self.last_reused = keep
        self._reused += keep
        self._uses += 1
        slot.last_used = self._uses
        slot.seq = _Sequence(
            key=key,
            req=req,
            out=out,
            scanner=StopScanner(req.stop + stops, out.emit),
            sampler=self._sampler(req, prompt),
            prompt=prompt,
            max_tokens=min(req.max_tokens, self.n_ctx - len(prompt)),
            pending=prompt[keep:],
            grammar=grammar,
        )

    def step(self) -> list[tuple[str, LLMOutcome | BackendError]]:
        """One decode of every running sequence; returns the sequences that ended, and those
        that failed alone (a grammar with no way on) with their error."""
        return stepped(self._step)

    def _step(self, ended: list[tuple[str, LLMOutcome | BackendError]]) -> None:
        ended.extend(self._drop_cancelled())
        self._take_resampled(ended)
        work = self._fill_batch()
        self.last_step_tokens = self._batch.n_tokens
        if work:
            threads = self.threads.next()
            if threads != self._on_threads:
                llama_cpp.llama_set_n_threads(self._ctx, threads, threads)
                self._on_threads = threads
            started = time.perf_counter()
            rc = llama_cpp.llama_decode(self._ctx, self._batch)
            self.threads.record(threads, self._batch.n_tokens, time.perf_counter() - started)
            if rc != 0:
                raise BackendError("backend_error", f"llama_decode failed ({rc}) with {len(work)} sequences")
            self._steps += 1
            self._batched += self._batch.n_tokens
            self._prompt += self._step_prompt
            for slot in work:
                try:
                    self._advance(slot)
                except BackendError as e:
                    # One sequence's own sampling failed: it ends, the others decode on.
                    ended.append(self._fail(slot, e))
        else:
            resampling = [s.seq.resampling for s in self._slots if s.seq is not None and s.seq.resampling]
            if resampling:  # nothing to decode until a resample is done: wait for it, not spin
                wait(resampling, timeout=RESAMPLE_WAIT_S, return_when=FIRST_COMPLETED)
        for slot in self._slots:
            seq = slot.seq
            if seq is not None and seq.finish is not None:
                ended.append(self._end(slot))

    def abort(self) -> list[str]:
        """Forget every sequence (after a failed step); their KV is dropped."""
        keys = []
        for slot in self._slots:
            if slot.seq is not None:
                keys.append(slot.seq.key)
                self._free(slot.seq)
                slot.seq = None
            slot.cached = []
            llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
        return keys

    def figures(self) -> EngineFigures:
        slots = self._slots
        return EngineFigures(
            decode_steps=self._steps,
            batched_tokens=self._batched,
            prompt_tokens=self._prompt,
            reused_prompt_tokens=self._reused,
            generated_tokens=self._generated,
            sequences=sum(1 for s in slots if s.seq is not None),
            kv_cache_tokens=sum(len(s.cached) for s in slots),
            kv_cache_capacity_tokens=self.n_ctx * len(slots),
        )

    def set_threads(self, threads: int) -> None:
        """The lane's thread count from now on (cores lent to it, or given back). The next step
        runs on it, or on one thread while that proves faster (thread_choice, measured anew for
        the new count); llama.cpp reads the count before each decode."""
        if threads != self.threads.threads:
            self.threads = ThreadChoice(threads)

    def close(self) -> None:
        self.abort()
        self._grammar_thread.shutdown(wait=True)
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)

    def _slot_for(self, prompt: list[int], scope: str | None) -> _Slot:
        """The free slot of the same scope whose cache this prompt continues (sharing at least
        half of what the slot holds: the next turn of its conversation), the longest such
        prefix first; else the least recently used free slot. Picking by longest prefix alone
        would hand a new conversation the slot of another that merely starts with the same
        chat-template tokens, and throw that conversation's cache away (as llama-server's
        similarity threshold avoids)."""
        free = [s for s in self._slots if s.seq is None]
        shared = {id(s): _common_prefix(s.cached, prompt) if s.scope == scope else 0 for s in free}
        continued = [s for s in free if s.cached and shared[id(s)] * 2 >= len(s.cached)]
        if continued:
            return max(continued, key=lambda s: shared[id(s)])
        return min(free, key=lambda s: s.last_used)

    def _borrow_prefix(self, slot: _Slot, prompt: list[int]) -> None:
        """When another slot of the same scope, busy or not, shares a longer prefix with the
        prompt (the chat template and system prompt every request starts with), copy its KV
        into `slot` rather than compute it again. llama.cpp copies between per-slot KV streams
        whole; the tail past the prefix is dropped by the caller. Never from another scope: a
        prompt that came back sooner for matching another owner's would tell what they sent
        (measured: a guessed diagnosis in another user's prompt answered in 90 ms, wrong
        guesses in 760-4,300 ms)."""
        have = _common_prefix(slot.cached, prompt)
        donor = max(
            (s for s in self._slots if s is not slot and s.scope == slot.scope),
            key=lambda s: _common_prefix(s.cached, prompt),
            default=None,
        )
        if donor is None or _common_prefix(donor.cached, prompt) <= max(have, MIN_BORROW):
            return
        llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
        llama_cpp.llama_memory_seq_cp(self._mem, donor.seq_id, slot.seq_id, -1, -1)
        slot.cached = list(donor.cached)

    # ----- one step --------------------------------------------------------------------------

    def _drop_cancelled(self) -> list[tuple[str, LLMOutcome]]:
        ended = []
        for slot in self._slots:
            if slot.seq is not None and slot.seq.out.cancelled():
                slot.seq.finish = "cancelled"
                ended.append(self._end(slot))
        return ended

    def _fill_batch(self) -> list[_Slot]:
        """Decoding sequences first (one token each), then prompt chunks in the room left."""
        b = self._batch
        n = 0

        def put(slot: _Slot, token: int, logits: bool) -> None:
            nonlocal n
            b.token[n] = token
            b.pos[n] = len(slot.cached)
            b.n_seq_id[n] = 1
            b.seq_id[n][0] = slot.seq_id
            b.logits[n] = logits
            slot.cached.append(token)
            n += 1

        work: list[_Slot] = []
        for slot in self._slots:
            seq = slot.seq
            if seq is not None and not seq.pending and seq.next_token is not None:
                seq.index = n
                put(slot, seq.next_token, True)
                seq.next_token = None
                work.append(slot)
        decoding = n
        # Streams decoding: at most `prefill_chunk` prompt tokens in all per step, shared in
        # turn by the prompts waiting, so a burst of new requests stalls the streams no longer
        # than one. Nobody decoding: whole prompts, as many as fit. A sequence waiting for its
        # grammar's resample is decoding: its token must not wait behind a 512-token prefill.
        streaming = bool(work) or any(s.seq is not None and s.seq.resampling is not None for s in self._slots)
        budget = self.prefill_chunk if streaming else self.n_batch - n
        self._turn = (self._turn + 1) % len(self._slots)
        for slot in self._slots[self._turn :] + self._slots[: self._turn]:
            seq = slot.seq
            if seq is None or not seq.pending or budget <= 0:
                continue
            # The last prompt token goes alone, like every generated token: llama.cpp's logits
            # for a token depend on how many of its sequence's tokens share its decode, so
            # this keeps a seed's text the same whether the prompt was cached or not (as far
            # as the cached KV's own bits allow: docs/PERFORMANCE_OPTIMIZATION.md).
            ahead = len(seq.pending) - 1
            take = min(ahead or 1, budget)
            budget -= take
            chunk, seq.pending = seq.pending[:take], seq.pending[take:]
            for i, token in enumerate(chunk):
                put(slot, token, not seq.pending and i == take - 1)
            seq.index = n - 1 if not seq.pending else -1
            work.append(slot)
        b.n_tokens = n
        self._step_prompt = n - decoding
        return work

    def _advance(self, slot: _Slot) -> None:
        seq = slot.seq
        assert seq is not None
        if seq.index < 0:
            return  # a prompt chunk with more to come: nothing to sample yet
        if seq.produced == 0:
            seq.out.prefill_done()
        token: int = llama_cpp.llama_sampler_sample(seq.sampler, self._ctx, seq.index)
        if seq.grammar is not None and not seq.grammar.check(token):
            # The grammar refused the free sample: resample on the grammar thread, over a copy of
            # this row (the next decode overwrites the logits); the sequence rejoins once done.
            row = llama_cpp.llama_get_logits_ith(self._ctx, seq.index)
            logits = np.ctypeslib.as_array(row, shape=(self._n_vocab,)).copy()
            seq.index = -1
            seq.resampling = self._grammar_thread.submit(seq.grammar.resample, seq.sampler, logits)
            return
        seq.index = -1
        self._keep(slot, token)

    def _take_resampled(self, ended: list[tuple[str, LLMOutcome | BackendError]]) -> None:
        """Sequences whose resample is done keep its token (or fail with its error)."""
        for slot in self._slots:
            seq = slot.seq
            if seq is None or seq.resampling is None or not seq.resampling.done():
                continue
            future, seq.resampling = seq.resampling, None
            try:
                token = future.result()
                if seq.req.penalized:
                    # The penalties count what the sequence keeps: the chain took in the refused
                    # draw (llama_sampler_sample accepts what it draws), and now this one too.
                    llama_cpp.llama_sampler_accept(seq.sampler, token)
                self._keep(slot, token)
            except BackendError as e:
                ended.append(self._fail(slot, e))

    def _keep(self, slot: _Slot, token: int) -> None:
        """The sequence keeps `token`: its grammar advances, its text grows, it ends or goes on."""
        seq = slot.seq
        assert seq is not None
        if seq.grammar is not None:
            seq.grammar.keep(token, self._piece)
        is_eog = llama_cpp.llama_vocab_is_eog(self._vocab, token)
        # A grammar's end is the answer's end, ignore_eos or not: past it no token is allowed.
        if is_eog and (not seq.req.ignore_eos or seq.grammar is not None):
            seq.finish = "stop"
            return
        seq.produced += 1
        self._generated += 1
        if not is_eog:
            seq.scanner.feed_bytes(self._piece(token))
        if seq.scanner.stopped:
            seq.finish = "stop"
        elif seq.produced >= seq.max_tokens or len(slot.cached) >= self.n_ctx:
            seq.finish = "length"
        else:
            seq.next_token = token

    def _fail(self, slot: _Slot, error: BackendError) -> tuple[str, BackendError]:
        seq = slot.seq
        assert seq is not None
        self._free(seq)
        slot.seq = None
        return seq.key, error

    def _end(self, slot: _Slot) -> tuple[str, LLMOutcome]:
        seq = slot.seq
        assert seq is not None and seq.finish is not None
        if seq.finish != "cancelled":
            seq.scanner.flush()
        self._free(seq)
        slot.seq = None
        return seq.key, LLMOutcome(seq.finish, len(seq.prompt), seq.produced)

    # ----- helpers ---------------------------------------------------------------------------

    def _free(self, seq: _Sequence) -> None:
        """Free the sequence's sampler and grammar; while its resample still runs (a client
        cancelled meanwhile), after it, on the grammar thread: nobody waits for it here."""
        if seq.resampling is not None and not seq.resampling.cancel() and not seq.resampling.done():
            self._grammar_thread.submit(_release, seq)  # one thread, in order: after the resample
        else:
            _release(seq)  # no resample, or one that had not started (cancelled: never runs)

    def _sampler(self, req: LLMRequest, prompt: list[int]) -> Any:
        params = llama_cpp.llama_sampler_chain_default_params()
        chain = llama_cpp.llama_sampler_chain_init(params)
        if req.penalized:  # first, as llama.cpp's own chain has them: greedy answers too
            r = req
            penalties = llama_cpp.llama_sampler_init_penalties(
                self._n_vocab, r.repeat_last_n, r.repeat_penalty, r.frequency_penalty, r.presence_penalty
            )
            # The prompt's last tokens count, as llama-server feeds them: an answer that
            # repeats the question is penalized as one that repeats itself. (With a grammar, a
            # draw it refused counts too: llama_sampler_sample takes in what it draws.)
            for token in prompt[-r.repeat_last_n :] if r.repeat_last_n > 0 else ():
                llama_cpp.llama_sampler_accept(penalties, token)
            llama_cpp.llama_sampler_chain_add(chain, penalties)
        if req.temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        seed = req.seed if req.seed is not None else random.getrandbits(32)
        if seed & 0xFFFFFFFF == llama_cpp.LLAMA_DEFAULT_SEED:
            seed = 0  # llama.cpp reads 0xFFFFFFFF as "pick a random seed": keep it reproducible
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(40))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(req.top_p, 1))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(req.temperature))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _piece(self, token: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, False)
        return self._buf.raw[: max(n, 0)]


def _release(seq: _Sequence) -> None:
    llama_cpp.llama_sampler_free(seq.sampler)
    if seq.grammar is not None:
        seq.grammar.free()


def kv_cache_bytes(llm: Any, cells: int, type_k: int, type_v: int) -> int | None:
    """The KV cache of `cells` tokens on the loaded model, by the footprint's arithmetic (key
    and value lengths: GGUF `<arch>.attention.key_length`, else n_embd / n_head). None for a
    cache type it does not know."""
    k_type, v_type = GGML_TYPE_NAMES.get(type_k), GGML_TYPE_NAMES.get(type_v)
    if k_type is None or v_type is None:
        return None
    model = llm._model.model  # noqa: SLF001 - the loaded llama_model
    n_head = llama_cpp.llama_model_n_head(model)
    head_dim = llama_cpp.llama_model_n_embd(model) // max(n_head, 1)
    arch = llm.metadata.get("general.architecture", "")
    k_len = int(llm.metadata.get(f"{arch}.attention.key_length", head_dim))
    v_len = int(llm.metadata.get(f"{arch}.attention.value_length", head_dim))
    per_token = kv_bytes_per_token(
        llama_cpp.llama_model_n_layer(model),
        llama_cpp.llama_model_n_head_kv(model),
        k_len,
        v_len,
        k_type,
        v_type,
    )
    return int(cells * per_token)
