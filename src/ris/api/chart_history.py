"""The console's charts, kept on the server: the last 15 minutes of each series, sampled every
few seconds, so a page drawn now starts with what happened before it was opened (the tab's own
history is lost on every load).

Pure: values come in, bounded deques keep them, the clock is injected. What a series holds is
decided by its feeder (console_state.keep_chart_history, from the engine's snapshot); the step
rate of image work is worked out here because it needs the previous sample.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

SPAN_S = 15 * 60.0
EVERY_S = 5.0

Values = Sequence[float | None]


class ChartHistory:
    """Named series of (time, values) points over the last `span_s`, one point per `every_s`
    at most: 180 points a series with the defaults, whatever the uptime."""

    def __init__(
        self,
        clock: Callable[[], float],
        span_s: float = SPAN_S,
        every_s: float = EVERY_S,
        ticker: Callable[[], float] | None = None,
    ) -> None:
        """`clock` stamps the points (wall time, as the page's); `ticker` says when a sample is
        due (a monotonic clock: a wall clock set back by NTP or by hand stopped the sampling
        for as long); the clock itself when not given."""
        if span_s <= 0 or every_s <= 0:
            raise ValueError("span_s and every_s must be positive")
        self.span_s = span_s
        self.every_s = every_s
        self._clock = clock
        self._ticker = ticker or clock
        self._next_tick: float | None = None  # when the next sample is owed, on the ticker
        # One more than the span holds, so the oldest point still reaches the chart's left edge.
        self._cap = math.ceil(span_s / every_s) + 1
        self._series: dict[str, deque[tuple[float, tuple[float | None, ...]]]] = {}

    def due(self) -> bool:
        """Whether a sample is owed: none yet, or its time has come. A hundredth of the interval
        early counts: an event loop wakes a timer up to its clock's resolution before the time
        asked, and a sample found "not due" by microseconds was skipped for a whole interval
        (a quarter of the points were missing)."""
        return self._next_tick is None or self._ticker() >= self._next_tick - self.every_s / 100

    def until_due(self) -> float:
        """Seconds until the next sample is owed (0: now): what the sampling loop sleeps."""
        return 0.0 if self._next_tick is None else max(0.0, self._next_tick - self._ticker())

    def record(self, values: Mapping[str, Values]) -> None:
        """One sample of every series, at the clock's time. A series not in `values` gets no
        point this time (a lane that appeared later starts where it appeared)."""
        now, tick = self._clock(), self._ticker()
        # On a fixed schedule (a late sample does not push the next ones later), restarted
        # from now after a stall of more than an interval rather than catching up in a burst.
        owed = self._next_tick
        restart = owed is None or tick - owed >= self.every_s
        self._next_tick = (tick if restart or owed is None else owed) + self.every_s
        for name, vs in values.items():
            points = self._series.get(name)
            if points is None:
                points = self._series[name] = deque(maxlen=self._cap)
            points.append((now, tuple(vs)))
        self._prune(now)

    def view(self) -> dict[str, Any]:
        """Every series' points within the span, oldest first: what /api/console/history sends."""
        now = self._clock()
        self._prune(now)
        return {
            "time": now,
            "span_s": self.span_s,
            "every_s": self.every_s,
            "series": {name: [[t, list(vs)] for t, vs in points] for name, points in self._series.items()},
        }

    def _prune(self, now: float) -> None:
        horizon = now - self.span_s
        for points in self._series.values():
            while points and points[0][0] < horizon:
                points.popleft()


class StepRate:
    """Image steps per second between two samples: how far each image task advanced since the
    previous one. A task first seen counts the steps it has done if it worked since then: still
    running, or ended after the previous sample (a short image started and finished between
    two samples, which a GPU's turbo model makes every few seconds). Fed each task's steps done
    and when it ended (None: running), on the same clock as `now`."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._at: float | None = None

    def update(
        self, now: float, done: Mapping[str, int], ended_at: Mapping[str, float | None]
    ) -> float | None:
        steps = 0
        for task, n in done.items():
            if task in self._seen:
                steps += max(0, n - self._seen[task])
            elif self._at is not None:
                end = ended_at.get(task)
                if end is None or end > self._at:
                    steps += n
        first, previous = self._at is None, self._at
        self._seen, self._at = dict(done), now
        if first or previous is None or now <= previous:
            return None  # nothing to compare with yet
        return steps / (now - previous)


class CoreLoad:
    """Busy percent per core between two readings of the machine's per-core CPU times (its
    own baseline: psutil's module-wide one is shared with the console's once-a-second tick).
    Fed (busy, total) seconds per core."""

    def __init__(self) -> None:
        self._previous: list[tuple[float, float]] | None = None

    def update(self, times: Sequence[tuple[float, float]]) -> list[float | None]:
        previous, self._previous = self._previous, list(times)
        if previous is None or len(previous) != len(times):
            return [None] * len(times)
        out: list[float | None] = []
        for (busy0, total0), (busy1, total1) in zip(previous, times, strict=True):
            span = total1 - total0
            out.append(round(100.0 * max(0.0, busy1 - busy0) / span, 1) if span > 0 else None)
        return out
