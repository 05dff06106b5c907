"""One greedy stream through an LLM backend, timed token by token: the gaps between tokens.

Shared by the benchmarks that time a decode step in-process (no server): llm_lending_openmp.py,
core_neighbour.py. Run as scripts, they import it from this folder.
"""

from __future__ import annotations

import time
from typing import Any

PROMPT = "Write a short story about a lighthouse keeper."


def decode_gaps(backend: Any, tag: int, tokens: int) -> list[float]:
    """Seconds between consecutive tokens of one greedy stream of `tokens` tokens (`tag` makes
    each prompt distinct, so no stream reuses another's cache)."""
    from ris.lanes.llm import LLMRequest, TextCollector

    class Timed(TextCollector):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def emit(self, text: str) -> None:
            self.times.append(time.perf_counter())
            super().emit(text)

    out = Timed()
    req = LLMRequest(prompt=f"[{tag}] {PROMPT}", max_tokens=tokens, temperature=0, ignore_eos=True,
                     prompt_is_message=True)  # fmt: skip
    backend.generate(req, out)
    return [y - x for x, y in zip(out.times, out.times[1:], strict=False)]
