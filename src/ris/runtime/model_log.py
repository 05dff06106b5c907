"""Model loads and unloads as the workers report them, for /api/stats, /metrics, the console's
event list and GET /api/models (how long a model's last load took, even after it was evicted).
Pure and bounded: the wall clock is injected; a fixed number of recent events is kept."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

RECENT_EVENTS = 50


@dataclass(frozen=True)
class ModelEvent:
    time: float  # Unix seconds
    lane: str
    model: str
    event: str  # "loaded", "evicted" or "expired"
    load_s: float | None = None  # for "loaded"

    def as_json(self) -> dict[str, object]:
        return {
            "time": self.time,
            "lane": self.lane,
            "model": self.model,
            "event": self.event,
            "load_s": self.load_s,
        }


@dataclass(frozen=True)
class ModelLogView:
    loads: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # (lane, model, reason) -> unloads; reason "evicted" or "expired".
    unloads: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    last_load_s: Mapping[tuple[str, str], float] = field(default_factory=dict)
    recent: tuple[ModelEvent, ...] = ()

    def lane_counts(self, lane: str) -> dict[str, int]:
        return {
            "loads": sum(n for (ln, _), n in self.loads.items() if ln == lane),
            "evictions": sum(n for (ln, _, r), n in self.unloads.items() if ln == lane and r == "evicted"),
            "expiries": sum(n for (ln, _, r), n in self.unloads.items() if ln == lane and r == "expired"),
        }


class ModelLog:
    def __init__(self, wall_clock: Callable[[], float], keep: int = RECENT_EVENTS) -> None:
        self._wall = wall_clock
        self._loads: dict[tuple[str, str], int] = {}
        self._unloads: dict[tuple[str, str, str], int] = {}
        self._last_load_s: dict[tuple[str, str], float] = {}
        self._recent: deque[ModelEvent] = deque(maxlen=keep)

    def loaded(self, lane: str, model: str, load_s: float | None, *, at_start: bool = False) -> None:
        """A model was loaded; one preloaded at a worker's start is no event of its own."""
        if load_s is not None:
            self._last_load_s[(lane, model)] = load_s
        if not at_start:
            self._loads[(lane, model)] = self._loads.get((lane, model), 0) + 1
            self._recent.append(ModelEvent(self._wall(), lane, model, "loaded", load_s))

    def unloaded(self, lane: str, model: str, reason: str) -> None:
        key = (lane, model, reason)
        self._unloads[key] = self._unloads.get(key, 0) + 1
        self._recent.append(ModelEvent(self._wall(), lane, model, reason))

    def expected_load_s(self, lane: str, model: str) -> float:
        """A load of `model` takes what its last one took; never loaded yet, the lane's slowest
        known load (0 while none is known)."""
        if (lane, model) in self._last_load_s:
            return self._last_load_s[(lane, model)]
        return max((s for (ln, _), s in self._last_load_s.items() if ln == lane), default=0.0)

    def view(self) -> ModelLogView:
        return ModelLogView(
            dict(self._loads), dict(self._unloads), dict(self._last_load_s), tuple(self._recent)
        )


__all__ = ["ModelEvent", "ModelLog", "ModelLogView"]
