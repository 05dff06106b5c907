"""What the lanes have done since the server started, for /metrics and `ris status`: counters
and histograms per lane and model, fed by the engine where it already sees a task's outputs and
its end, and read through the engine's snapshot as a frozen `MetricsView`.

Pure and bounded: time comes from an injected clock (only the recent-window rates need it);
memory is a fixed set of buckets per series, at most `max_series` (lane, model) pairs (models
come from the config, so a real server stays far below it; past it, work is counted under the
model "other" rather than growing), and one bin per second of the rate window.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ris.lanes.base import Counted

# Upper bounds in seconds, chosen for what each measures on CPU and GPU alike: a task's whole
# life runs from milliseconds (a short speech) to minutes (a CPU image); a first output from
# tens of milliseconds to the queue's worst; the gap between two outputs from a millisecond.
# (Up to an hour: an image on a CPU may take that long, its lane's timeout is 3600 s.)
TASK_BUCKETS_S = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0
)  # fmt: skip
# A first output waits behind the queue: up to the 300 s a request may wait by default (past
# 60 s every slow one was in +Inf and histogram_quantile said 60 s).
FIRST_OUTPUT_BUCKETS_S = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0
)  # fmt: skip
# (To 60 s: an image's step on a CPU, with its pauses for the LLM, often passes 5 s.) Close
# steps from 10 to 300 ms, where inter-token gaps lie on CPUs and GPUs alike: a goal such as
# "p99 within 1.10x" needs steps finer than 2x to be read from /metrics (with 0.05, 0.1, 0.25
# an SRE's p99 read 510 ms where clients measured 766).
OUTPUT_GAP_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1,
    0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip

RATE_WINDOW_S = 60.0  # the window of the work-per-second rates
MAX_SERIES = 256
OTHER_MODEL = "other"
# Failure codes are the server's and the lane kinds' own (ris.failures), a few dozen; a
# plugin's backend could invent more: past this many (lane, code) pairs they count as "other".
MAX_FAILURE_SERIES = 128
OTHER_CODE = "other"

Series = tuple[str, str]  # (lane, model)


@dataclass(frozen=True)
class HistogramView:
    """A histogram as Prometheus exposes it: cumulative counts per upper bound (the last one
    +Inf, so `counts[-1] == count`), and the sum of the observations."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return self.counts[-1]


class Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; +Inf last
        self._sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le = "<=").
        self._counts[bisect_left(self.bounds, value)] += 1
        self._sum += value

    def view(self) -> HistogramView:
        cumulative: list[int] = []
        total = 0
        for n in self._counts:
            total += n
            cumulative.append(total)
        return HistogramView(self.bounds, tuple(cumulative), self._sum)


@dataclass(frozen=True)
class CounterView:
    """One counted kind of work (`Counted.name`), per (lane, model)."""

    name: str
    help: str
    values: Mapping[Series, float]


@dataclass(frozen=True)
class MetricsView:
    """Everything counted since the server started, and the recent rates."""

    # Finished tasks per (lane, model, outcome): succeeded, failed or cancelled.
    tasks: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    # Failed tasks per (lane, error code): what an alert on failures wants to tell apart (a
    # worker crash, a deadline, GPU memory).
    failures: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # Submission to end of succeeded tasks; submission to start of every task that started
    # (observed as it starts: an image's wait showed only when it ended, up to an hour late).
    latency: Mapping[Series, HistogramView] = field(default_factory=dict)
    queue_wait: Mapping[Series, HistogramView] = field(default_factory=dict)
    # Submission to a task's first streamed output (LLM: its first token; TTS: its first
    # audio chunk), and the time between one output and the next (and between two of an
    # image's steps).
    first_output: Mapping[Series, HistogramView] = field(default_factory=dict)
    output_gap: Mapping[Series, HistogramView] = field(default_factory=dict)
    # Work done by succeeded tasks (tokens, audio seconds, image steps), by name.
    counted: Mapping[str, CounterView] = field(default_factory=dict)
    # Per lane, per counted name (and "tasks": finished tasks of every outcome): the amount
    # over the last `window_s`, divided by it.
    rates: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    window_s: float = RATE_WINDOW_S


class WorkMeter:
    """The accumulator. Every method is O(1) but `view()`; all run on the engine's thread."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        window_s: float = RATE_WINDOW_S,
        max_series: int = MAX_SERIES,
    ) -> None:
        self._clock = clock
        self._window_s = window_s
        self._max_series = max_series
        self._series: set[Series] = set()
        self._tasks: dict[tuple[str, str, str], int] = {}
        self._failures: dict[tuple[str, str], int] = {}
        self._latency: dict[Series, Histogram] = {}
        self._queue_wait: dict[Series, Histogram] = {}
        self._first_output: dict[Series, Histogram] = {}
        self._output_gap: dict[Series, Histogram] = {}
        self._counted: dict[str, tuple[str, dict[Series, float]]] = {}
        # One bin per whole second of the clock: (second, lane, name) -> amount, oldest first;
        # bins that fell out of the window are dropped whenever one is added or read.
        self._bins: deque[tuple[int, dict[tuple[str, str], float]]] = deque()

    # ----- what the engine reports ---------------------------------------------------------

    def declare(
        self, lane: str, models: Iterable[str], counters: Iterable[Counted], failures: Iterable[str]
    ) -> None:
        """A lane's series that start at 0, before any task: its models' counted work (each
        counter a Counted of value 0) and the failure codes alerts watch. A counter that
        appears only at its first increase hides that increase from Prometheus (`increase()`
        sees none), and one that a restart brings back only later hides the reset."""
        counters = tuple(counters)
        for model in models:
            series = self._key(lane, model)
            for c in counters:
                self._counted.setdefault(c.name, (c.help, {}))[1].setdefault(series, 0.0)
        for code in failures:
            if len(self._failures) < MAX_FAILURE_SERIES:
                self._failures.setdefault((lane, code), 0)

    def first_output(self, lane: str, model: str, seconds: float) -> None:
        self._histogram(self._first_output, FIRST_OUTPUT_BUCKETS_S, lane, model).observe(seconds)

    def output_gap(self, lane: str, model: str, seconds: float) -> None:
        self._histogram(self._output_gap, OUTPUT_GAP_BUCKETS_S, lane, model).observe(seconds)

    def started(self, lane: str, model: str, queue_wait_s: float) -> None:
        """A task left the queue for a worker after `queue_wait_s`."""
        self._histogram(self._queue_wait, TASK_BUCKETS_S, lane, model).observe(queue_wait_s)

    def finished(
        self,
        lane: str,
        model: str,
        outcome: str,
        *,
        latency_s: float | None,
        code: str | None = None,
        counted: Iterable[Counted] = (),
    ) -> None:
        """A task ended as `outcome` (a failed one with its error `code`). `latency_s` is
        observed for succeeded tasks only (a cancelled one's life is the client's choice)."""
        series = self._key(lane, model)
        key = (*series, outcome)
        self._tasks[key] = self._tasks.get(key, 0) + 1
        if outcome == "failed":
            failure = (lane, code or OTHER_CODE)
            if failure not in self._failures and len(self._failures) >= MAX_FAILURE_SERIES:
                failure = (lane, OTHER_CODE)
            self._failures[failure] = self._failures.get(failure, 0) + 1
        if latency_s is not None and outcome == "succeeded":
            self._series_histogram(self._latency, TASK_BUCKETS_S, series).observe(latency_s)
        window = self._bin()
        window[(lane, "tasks")] = window.get((lane, "tasks"), 0.0) + 1
        for c in counted:
            values = self._counted.setdefault(c.name, (c.help, {}))[1]
            values[series] = values.get(series, 0.0) + c.value
            if c.name != "tasks":  # the rate of finished tasks keeps its name (a plugin's would blur it)
                window[(lane, c.name)] = window.get((lane, c.name), 0.0) + c.value

    # ----- what the snapshot shows ---------------------------------------------------------

    def view(self) -> MetricsView:
        self._expire(self._clock())
        rates: dict[str, dict[str, float]] = {}
        for _, amounts in self._bins:
            for (lane, name), amount in amounts.items():
                per_lane = rates.setdefault(lane, {})
                per_lane[name] = per_lane.get(name, 0.0) + amount
        for per_lane in rates.values():
            for name in per_lane:
                per_lane[name] /= self._window_s
        return MetricsView(
            tasks=dict(self._tasks),
            failures=dict(self._failures),
            latency=_views(self._latency),
            queue_wait=_views(self._queue_wait),
            first_output=_views(self._first_output),
            output_gap=_views(self._output_gap),
            counted={
                name: CounterView(name, help_, dict(values))
                for name, (help_, values) in self._counted.items()
            },
            rates=rates,
            window_s=self._window_s,
        )

    # ----- internals -----------------------------------------------------------------------

    def _key(self, lane: str, model: str) -> Series:
        series = (lane, model)
        if series not in self._series:
            if len(self._series) >= self._max_series:
                series = (lane, OTHER_MODEL)
            self._series.add(series)  # "other" may pass the cap by one per lane: still bounded
        return series

    def _histogram(
        self, family: dict[Series, Histogram], bounds: tuple[float, ...], lane: str, model: str
    ) -> Histogram:
        return self._series_histogram(family, bounds, self._key(lane, model))

    @staticmethod
    def _series_histogram(
        family: dict[Series, Histogram], bounds: tuple[float, ...], series: Series
    ) -> Histogram:
        h = family.get(series)
        if h is None:
            h = family[series] = Histogram(bounds)
        return h

    def _bin(self) -> dict[tuple[str, str], float]:
        now = self._clock()
        self._expire(now)
        second = int(now)
        if not self._bins or self._bins[-1][0] != second:
            self._bins.append((second, {}))
        return self._bins[-1][1]

    def _expire(self, now: float) -> None:
        # A bin counts while it starts within the window: a rate covers the last window_s
        # seconds and at most the one before them (window_s + 1 bins at most).
        while self._bins and self._bins[0][0] < now - self._window_s:
            self._bins.popleft()


def _views(family: Mapping[Series, Histogram]) -> dict[Series, HistogramView]:
    return {series: h.view() for series, h in family.items()}


__all__ = ["CounterView", "Histogram", "HistogramView", "MetricsView", "WorkMeter"]
