"""The mixed workload: what each lane's load looks like, as data both processes share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# A request that shows no progress for longer than this is a stall (the "freeze" of the seed).
STALL_S = 2.0

SHORT_SENTENCES = (
    "Turn left at the next corner.",
    "The meeting starts in ten minutes.",
    "Your timer is done.",
    "It will rain this afternoon, so take an umbrella.",
)
LONG_SENTENCES = (
    "The lighthouse keeper climbed the spiral stairs every evening, lit the great lamp, and "
    "watched the ships pass safely beyond the rocks until the sun came up again.",
    "Resource isolation gives every kind of work its own cores and its own queue, so that a "
    "long picture never makes a conversation wait, and speech never stutters.",
)


@dataclass(frozen=True)
class Workload:
    """One phase's load. Lanes not in `lanes` send nothing (the "alone" phases)."""

    duration_s: float = 30.0
    # After the window: how long outstanding chat and speech requests may still finish.
    drain_s: float = 60.0
    # LLM: closed-loop chat clients (several users at once: the lane batches them); every
    # `llm_plain_every`-th request of each is not streamed.
    llm_clients: int = 4
    llm_max_tokens: int = 64
    llm_prompt_words: int = 40
    llm_think_s: float = 0.3
    llm_plain_every: int = 4
    # TTS: an open loop (one request every interval, short and long sentences alternating)
    # plus a burst of concurrent short ones every `tts_burst_every_s`.
    tts_interval_s: float = 1.0
    tts_burst_size: int = 3
    tts_burst_every_s: float = 8.0
    # Images: submitted continuously, `image_outstanding` submitted and not finished at a time.
    image_outstanding: int = 2
    image_size: int = 256
    image_steps: int = 8
    poll_s: float = 0.25

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workload:
        return cls(**data)


def preset(kind: str, quick: bool) -> Workload:
    """`cpu`: the embedded models on a small CPU machine; `gpu`: 7B-shape LLM + SD 1.5 shape."""
    if kind == "gpu":
        w = Workload(
            duration_s=30.0,
            llm_max_tokens=64,
            llm_prompt_words=2000,
            llm_think_s=0.3,
            tts_interval_s=0.5,
            tts_burst_size=4,
            image_size=512,
            image_steps=20,
        )
    else:
        w = Workload()
    if quick:
        w = dataclasses.replace(
            w, duration_s=5.0, drain_s=30.0, image_size=min(w.image_size, 128), tts_burst_every_s=3.0
        )
    return w
