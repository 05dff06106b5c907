"""BENCHMARK-ONLY backend: answers every request at once with no text.

It measures what the service itself costs (HTTP, validation, scheduling, the pipe to the worker
and back) with no model in the way. Never a default; configure it by name to use it.
"""

from __future__ import annotations

from collections.abc import Callable

from ris.backends import BackendContext
from ris.backends.base import Cancelled, LLMBackend
from ris.config import ModelSpec
from ris.messages import LLMOutcome, LLMRequest


class NoopLLM(LLMBackend):
    def __init__(self, spec: ModelSpec, ctx: BackendContext) -> None:
        del spec, ctx

    def generate(
        self,
        req: LLMRequest,
        emit: Callable[[str], None],
        cancelled: Cancelled,
        prefill_done: Callable[[], None] = lambda: None,
    ) -> LLMOutcome:
        prefill_done()
        return LLMOutcome(finish_reason="stop", prompt_tokens=0, completion_tokens=0)
