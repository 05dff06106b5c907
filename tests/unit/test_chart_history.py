"""The console's server-side chart history: bounded, pruned by age, sampled at its pace; the
image step rate and per-core load between samples."""

from __future__ import annotations

import pytest

from ris.api.chart_history import ChartHistory, CoreLoad, StepRate

from .fakes import FakeClock


def test_a_sample_is_due_at_first_then_every_interval() -> None:
    clock = FakeClock()
    h = ChartHistory(clock, span_s=60, every_s=5)
    assert h.due()
    h.record({"llm.latency": [0.1, 0.2]})
    assert not h.due()
    clock.advance(4.9)
    assert not h.due()
    clock.advance(0.1)
    assert h.due()


def test_samples_keep_their_pace_when_the_loop_wakes_a_hair_early_or_late() -> None:
    """The sampling loop slept every_s after each sample and skipped a whole interval when it
    woke microseconds before it was due: 27 points in 170 s where 35 were owed."""
    clock = FakeClock()
    h = ChartHistory(clock, span_s=60, every_s=5)
    h.record({"cpu": [1.0]})
    assert h.until_due() == pytest.approx(5.0, abs=1e-3)
    clock.advance(4.9995)  # the loop's timer fired half a millisecond early
    assert h.due()
    h.record({"cpu": [2.0]})
    assert h.until_due() == pytest.approx(5.0, abs=1e-3)  # the next at 10 s, not 10 s after this one
    clock.advance(5.3)  # a late wake: the one after it keeps the schedule
    h.record({"cpu": [3.0]})
    assert h.until_due() == pytest.approx(4.7, abs=1e-3)
    clock.advance(60.0)  # a stall: sampling restarts from now, no burst of catching up
    assert h.due() and h.until_due() == 0.0
    h.record({"cpu": [4.0]})
    assert not h.due() and h.until_due() == pytest.approx(5.0, abs=1e-3)


def test_points_older_than_the_span_are_dropped_and_the_count_is_bounded() -> None:
    clock = FakeClock()
    h = ChartHistory(clock, span_s=60, every_s=5)
    start = clock.now
    for i in range(1000):  # far more samples than the span holds, some closer than every_s
        h.record({"cpu": [float(i)], "llm.throughput": [1.0]})
        clock.advance(2.5)
    series = h.view()["series"]
    for points in series.values():
        assert len(points) <= 60 / 5 + 1
        assert all(t >= clock.now - 60 for t, _ in points)
    cpu = series["cpu"]
    assert cpu[-1] == [start + 999 * 2.5, [999.0]]  # the newest kept, oldest first
    assert [t for t, _ in cpu] == sorted(t for t, _ in cpu)


def test_the_view_prunes_by_the_clock_even_without_new_samples() -> None:
    clock = FakeClock()
    h = ChartHistory(clock, span_s=60, every_s=5)
    h.record({"tts.latency": [None, None]})
    clock.advance(30)
    h.record({"tts.latency": [0.5, 0.9], "image.throughput": [2.0]})
    view = h.view()
    assert view["time"] == clock.now and view["span_s"] == 60 and view["every_s"] == 5
    assert view["series"]["tts.latency"] == [[clock.now - 30, [None, None]], [clock.now, [0.5, 0.9]]]
    assert view["series"]["image.throughput"] == [[clock.now, [2.0]]]  # a series starts late
    clock.advance(45)
    assert h.view()["series"]["tts.latency"] == [[clock.now - 45, [0.5, 0.9]]]
    clock.advance(16)
    assert h.view()["series"] == {"tts.latency": [], "image.throughput": []}


def test_a_span_or_interval_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        ChartHistory(FakeClock(), span_s=0)
    with pytest.raises(ValueError, match="positive"):
        ChartHistory(FakeClock(), every_s=-1)


def test_step_rate_counts_what_each_image_task_advanced_since_the_last_sample() -> None:
    rate = StepRate()
    assert rate.update(100.0, {"a": 3}, {"a": None}) is None  # nothing to compare with yet
    # a advanced 7, b started since and did 2; c ended before the last sample, unseen: not
    # counted; d started and ended between the two samples: its 4 steps count.
    ended = {"a": None, "b": None, "c": 99.0, "d": 103.0}
    assert rate.update(105.0, {"a": 10, "b": 2, "c": 8, "d": 4}, ended) == pytest.approx(13 / 5)
    # a finished (its progress kept in the recent list); b went on 4 steps.
    assert rate.update(110.0, {"a": 10, "b": 6}, {"a": 107.0, "b": None}) == pytest.approx(4 / 5)
    assert rate.update(110.0, {"b": 6}, {"b": None}) is None  # no time passed: no rate


def test_core_load_is_the_busy_share_between_two_readings() -> None:
    load = CoreLoad()
    assert load.update([(10.0, 100.0), (50.0, 100.0)]) == [None, None]
    assert load.update([(15.0, 110.0), (50.0, 110.0)]) == [50.0, 0.0]
    assert load.update([(15.0, 110.0)]) == [None]  # cores changed: a new baseline


def test_a_wall_clock_set_back_does_not_stop_the_sampling() -> None:
    wall, tick = FakeClock(), FakeClock()
    history = ChartHistory(wall, every_s=5.0, ticker=tick)
    history.record({"cpu": [1.0]})
    wall.advance(-3600.0)  # NTP, or a person, sets the clock back an hour
    tick.advance(5.0)
    assert history.due()


def test_the_live_core_load_is_one_reading_for_every_tab() -> None:
    """psutil.cpu_percent(percpu=True) measured since its previous call in the process: a
    second console tab ticking 2 ms after the first read [0, 0] of two busy cores."""
    from ris.api.console_state import live_cores

    now = [0.0]
    cores = live_cores(window_s=0.5, clock=lambda: now[0])
    samples = iter([[(0.0, 0.0), (0.0, 0.0)], [(1.0, 1.0), (0.5, 1.0)]])
    assert cores.read(lambda: next(samples)) == [None, None]  # a first reading
    now[0] = 1.0
    first = cores.read(lambda: next(samples))
    now[0] = 1.002
    assert first == [100.0, 50.0] and cores.read(lambda: next(samples)) == first  # no new reading


def test_a_sample_that_fails_is_tried_again_an_interval_later_not_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sampling loop slept until the next sample was due, which only a recorded sample
    moves on: a snapshot that raised was tried again (and logged) 86,000 times in 0.5 s."""
    import asyncio
    import time

    from ris.api.console_state import keep_chart_history

    tried: list[float] = []

    class Broken:
        def snapshot(self, *args: object) -> object:
            tried.append(time.monotonic())
            raise RuntimeError("a bad sample")

    async def scenario() -> None:
        history = ChartHistory(time.time, every_s=0.1, ticker=time.monotonic)
        loop = asyncio.create_task(keep_chart_history(Broken(), history))  # type: ignore[arg-type]
        await asyncio.sleep(0.35)
        loop.cancel()

    asyncio.run(scenario())
    assert 2 <= len(tried) <= 5, len(tried)
    assert caplog.text.count("console chart sample failed") == len(tried)
