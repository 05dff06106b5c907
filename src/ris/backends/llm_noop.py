"""BENCHMARK-ONLY backend: answers every request at once with no text.

It measures what the service itself costs (HTTP, validation, scheduling, the pipe to the worker
and back) with no model in the way. Never a default; configure it by name to use it.
"""

from __future__ import annotations

from ris.lanes.llm import LLMBackend, LLMOutcome, LLMRequest, TextOutput


class NoopLLM(LLMBackend):
    def generate(self, req: LLMRequest, out: TextOutput) -> LLMOutcome:
        out.prefill_done()
        return LLMOutcome(finish_reason="stop", prompt_tokens=0, completion_tokens=0)
