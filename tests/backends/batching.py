"""Running a batch of sequences on a real llama.cpp model to its end, for the tests that look
at what each sequence came out as."""

from __future__ import annotations

from ris.backends import BackendError
from ris.backends.llm_llama_cpp import LlamaCppLLM
from ris.lanes.llm import LLMOutcome, LLMRequest, TextCollector


def run_batch(
    llm: LlamaCppLLM, reqs: dict[str, LLMRequest], cancel_after: dict[str, int] | None = None
) -> dict[str, tuple[LLMOutcome, str]]:
    """Each request added to one batch under its key, stepped until all have ended: each key's
    outcome and text. `cancel_after` cancels a key's sequence after that many pieces of text."""
    batch = llm.batch()
    outs = {k: TextCollector(cancel_after=(cancel_after or {}).get(k)) for k in reqs}
    for key, req in reqs.items():
        batch.add(key, req, outs[key])
    ended: dict[str, LLMOutcome] = {}
    while len(ended) < len(reqs):
        for key, end in batch.step():
            if isinstance(end, BackendError):
                raise end  # a sequence failed on its own: the test fails with why
            ended[key] = end
    return {k: (ended[k], outs[k].text) for k in reqs}
