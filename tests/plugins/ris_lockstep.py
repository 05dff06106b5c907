"""Recipe: a new LLM backend that batches. One backend file, one registration that declares
what it can do (docs/DEVELOPER_GUIDE.md).

A test-only backend whose sequences decode in lockstep: at each step every running sequence
gets one token, the number of sequences in that step, so an answer shows which requests shared
its batch. config.json loads it with `"plugins": ["ris_lockstep"]` and names it as a model's
backend: `"models": {"lock": {"backend": "lockstep"}}`; the lane's `parallel` sizes its batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ris.backends import BackendContext, BackendError
from ris.config.schema import ModelSpec
from ris.lanes import llm
from ris.lanes.llm import LLMBackend, LLMBatch, LLMOutcome, LLMRequest, TextOutput

# What one decode step pretends to take: requests sent together meet in the same steps.
STEP_S = 0.05


@dataclass
class _Sequence:
    out: TextOutput
    max_tokens: int
    prompt_tokens: int
    produced: int = 0


class LockstepBatch(LLMBatch):
    """The batch interface the LLM lane's runner drives (as llama.cpp's LlamaBatch)."""

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._seqs: dict[str, _Sequence] = {}

    def free(self) -> int:
        return self._slots - len(self._seqs)

    @property
    def active(self) -> int:
        return len(self._seqs)

    @property
    def prefilling(self) -> bool:
        return any(seq.produced == 0 for seq in self._seqs.values())

    def add(self, key: str, req: LLMRequest, out: TextOutput) -> None:
        if req.constraint is not None:  # not declared `constrains`: the API refuses these first
            raise BackendError("unsupported_for_model", "the lockstep backend cannot decode under a grammar")
        self._seqs[key] = _Sequence(out, req.max_tokens, len(req.plain_prompt().split()))

    def step(self) -> list[tuple[str, LLMOutcome | BackendError]]:
        time.sleep(STEP_S)
        size = len(self._seqs)
        ended: list[tuple[str, LLMOutcome | BackendError]] = []
        for key, seq in list(self._seqs.items()):
            if seq.out.cancelled():
                finish = "cancelled"
            else:
                seq.out.emit(f"{size} ")
                seq.produced += 1
                if seq.produced < seq.max_tokens:
                    continue
                finish = "length"
            del self._seqs[key]
            ended.append((key, LLMOutcome(finish, seq.prompt_tokens, seq.produced)))
        return ended

    def abort(self) -> list[str]:
        keys = list(self._seqs)
        self._seqs.clear()
        return keys


class LockstepLLM(LLMBackend):
    def __init__(self, spec: ModelSpec, ctx: BackendContext) -> None:
        super().__init__(spec, ctx)
        self._batch = LockstepBatch(ctx.parallel)

    def batch(self) -> LockstepBatch:
        return self._batch

    def generate(self, req: LLMRequest, out: TextOutput) -> LLMOutcome:
        """One request alone: a batch of one (the lane's runner uses `batch()` instead)."""
        alone = LockstepBatch(1)
        alone.add("alone", req, out)
        while True:
            for _key, ended in alone.step():
                if isinstance(ended, BackendError):
                    raise ended
                return ended


# The one registration: the LLM lane now accepts "backend": "lockstep", and says (GET
# /api/models) that its models serve `parallel` requests at once.
llm.LANE.register_backend("lockstep", f"{__name__}:LockstepLLM", batches=True)
