"""Typed messages that cross the process boundary between the server and lane workers.

Everything here is a small frozen dataclass, pickled over a multiprocessing Pipe. Reprs leave
out prompts, texts and audio so logs never carry user content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# ----- requests a backend runs ---------------------------------------------------------------


@dataclass(frozen=True)
class LLMRequest:
    # Plain completion prompt; used when `messages` is None.
    prompt: str | None = field(default=None, repr=False)
    # Chat messages [{"role": ..., "content": ...}]; the model's chat template applies.
    messages: tuple[tuple[str, str], ...] | None = field(default=None, repr=False)
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Keep generating past end-of-sequence until max_tokens (benchmarks, long-run tests).
    ignore_eos: bool = False


@dataclass(frozen=True)
class TTSRequest:
    text: str = field(repr=False)
    # A language tag such as "en-US" or "zh-CN", or a backend's own voice name.
    voice: str | None = None
    speed: float = 1.0


@dataclass(frozen=True)
class ImageRequest:
    prompt: str = field(repr=False)
    negative_prompt: str | None = field(default=None, repr=False)
    width: int = 512
    height: int = 512
    # None: the model's default (few for turbo models).
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class ImageOutcome:
    width: int
    height: int
    steps: int
    seed: int
    # Where the worker wrote the PNG (inside the data folder).
    path: str
    # Seconds the worker spent paused for real-time lanes, and how often it paused.
    paused_s: float = 0.0
    pauses: int = 0


@dataclass(frozen=True)
class LLMOutcome:
    finish_reason: str  # "stop" (end of sequence or a stop string), "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class TTSOutcome:
    sample_rate: int
    samples: int
    voice: str

    @property
    def duration_s(self) -> float:
        return self.samples / self.sample_rate if self.sample_rate else 0.0


# ----- server -> worker ----------------------------------------------------------------------


@dataclass(frozen=True)
class RunTask:
    task_id: str
    model: str
    request: Any = field(repr=False)


@dataclass(frozen=True)
class CancelTask:
    task_id: str


@dataclass(frozen=True)
class Shutdown:
    pass


# ----- worker -> server ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    name: str
    backend: str
    # Voices a TTS model answers to (language tags and native names); empty for other kinds.
    voices: tuple[str, ...] = ()
    sample_rate: int | None = None


@dataclass(frozen=True)
class WorkerReady:
    pid: int
    models: tuple[ModelInfo, ...]
    # What the worker itself sees after binding (for /api/stats and the isolation test).
    cpu_affinity: tuple[int, ...] | None
    cuda_visible_devices: str | None
    threads: int


@dataclass(frozen=True)
class WorkerFailed:
    """The worker could not start (model load error); it exits after sending this."""

    code: str
    message: str


@dataclass(frozen=True)
class Heartbeat:
    # Monotonic count of progress events so far: the supervisor tells "busy" from "stuck".
    progress_events: int


@dataclass(frozen=True)
class TextDelta:
    task_id: str
    text: str = field(repr=False)


@dataclass(frozen=True)
class AudioChunk:
    task_id: str
    # 16-bit little-endian mono PCM.
    pcm: bytes = field(repr=False)
    sample_rate: int = 0


@dataclass(frozen=True)
class Progress:
    task_id: str
    done: int
    total: int | None = None


@dataclass(frozen=True)
class TaskDone:
    task_id: str
    outcome: Any  # LLMOutcome | TTSOutcome


@dataclass(frozen=True)
class TaskError:
    task_id: str
    code: str
    message: str


@dataclass(frozen=True)
class TaskCancelled:
    task_id: str
