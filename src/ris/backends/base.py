"""One small interface per kind of model. Backends run inside a lane's worker process."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from ris.messages import ImageRequest, LLMOutcome, LLMRequest, TTSOutcome, TTSRequest

# Returns True once the task should stop (cancelled by the client, or past its deadline).
Cancelled = Callable[[], bool]


class BackendError(Exception):
    """A backend refused or failed a request; `code` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LLMBackend(ABC):
    """Text generation. `emit` receives each piece of text as soon as it is decoded."""

    @abstractmethod
    def generate(self, req: LLMRequest, emit: Callable[[str], None], cancelled: Cancelled) -> LLMOutcome: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model's memory."""


class TTSBackend(ABC):
    """Speech synthesis to 16-bit mono PCM, emitted in chunks as it is produced."""

    sample_rate: int
    # Language tags and native names this model answers to; the first is its default.
    voices: tuple[str, ...]

    @abstractmethod
    def synthesize(
        self, req: TTSRequest, emit: Callable[[bytes], None], cancelled: Cancelled
    ) -> TTSOutcome: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model's memory."""


@dataclass(frozen=True)
class GeneratedImage:
    png: bytes = field(repr=False)
    width: int
    height: int
    steps: int
    seed: int


class ImageBackend(ABC):
    """Text-to-image. `on_step(done, total)` after each denoising step. The backend calls the
    worker's Yielder (given at construction) at its preemption points."""

    @abstractmethod
    def generate(self, req: ImageRequest, on_step: Callable[[int, int], None]) -> GeneratedImage: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model's memory."""
