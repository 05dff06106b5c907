"""The image lane's yielding policy with a fake clock: pauses, scopes and the starvation guard."""

from __future__ import annotations

import pytest

from ris.preemption.policy import Activity, PreemptedCancel, PreemptionPolicy, Yielder


class World:
    """A fake clock whose sleep advances time and can change the board at set times."""

    def __init__(self) -> None:
        self.now = 0.0
        self.states = [Activity.IDLE]
        self.events: list[tuple[float, Activity]] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        self.now += dt
        while self.events and self.events[0][0] <= self.now:
            self.states[0] = self.events.pop(0)[1]

    def read(self) -> list[int]:
        return [int(s) for s in self.states]


def yielder(world: World, **policy: object) -> Yielder:
    return Yielder(PreemptionPolicy(poll_s=0.01, **policy), world.read, world.clock, world.sleep)  # type: ignore[arg-type]


def test_pauses_while_prefill_and_resumes_when_it_ends() -> None:
    w = World()
    y = yielder(w, mode="step", min_share=0.0)
    w.states[0] = Activity.PREFILL
    w.events = [(0.5, Activity.DECODE)]
    y.checkpoint("step")
    assert w.now == pytest.approx(0.5, abs=0.011)
    assert y.stats.pauses == 1 and y.stats.paused_s == pytest.approx(0.5, abs=0.011)


def test_prefill_scope_lets_decode_share() -> None:
    w = World()
    y = yielder(w, mode="block", scope="prefill")
    w.states[0] = Activity.DECODE
    y.checkpoint("block")
    assert w.now == 0.0 and y.stats.pauses == 0


@pytest.mark.parametrize(
    ("mode", "scope", "state", "ends_at"),
    [
        ("block", "request", Activity.DECODE, 0.3),  # the request scope pauses through decode
        ("step", "prefill", Activity.BUSY, 0.2),  # a busy TTS lane is always protected
    ],
)
def test_protected_phases_pause_until_they_end(
    mode: str, scope: str, state: Activity, ends_at: float
) -> None:
    w = World()
    y = yielder(w, mode=mode, scope=scope, min_share=0.0)
    w.states[0] = state
    w.events = [(ends_at, Activity.IDLE)]
    y.checkpoint(mode)  # type: ignore[arg-type]
    assert w.now == pytest.approx(ends_at, abs=0.011)


def test_step_policy_ignores_block_points_and_none_ignores_all() -> None:
    w = World()
    w.states[0] = Activity.PREFILL
    yielder(w, mode="step").checkpoint("block")
    yielder(w, mode="none").checkpoint("step")
    assert w.now == 0.0


def test_cancel_while_paused_raises() -> None:
    w = World()
    y = yielder(w, mode="step", min_share=0.0)
    w.states[0] = Activity.PREFILL
    with pytest.raises(PreemptedCancel):
        y.checkpoint("step", lambda: w.now >= 0.1)
    assert w.now == pytest.approx(0.1, abs=0.011)


def test_starvation_guard_keeps_a_minimum_share_under_constant_load() -> None:
    w = World()
    y = yielder(w, mode="step", min_share=0.25, window_s=5.0)
    w.states[0] = Activity.PREFILL  # never drops
    steps, step_s = 0, 0.05
    while w.now < 60.0:
        y.checkpoint("step")
        w.now += step_s  # one denoising step of work
        steps += 1
    share = steps * step_s / w.now
    assert 0.2 < share < 0.35, share
    assert y.stats.guard_overrides > 0


def test_idle_time_before_a_task_is_not_counted_as_running() -> None:
    """An earlier task, ten minutes idle, then a task under constant contention: with begin()
    at its start it gets its share from the first window, not after ~23 s of being held (the
    idle time counted as running, or the earlier task's history kept undecayed over it)."""
    for begun, first_run_by in ((True, 6.0), (False, None)):
        w = World()
        y = yielder(w, mode="step", min_share=0.1, window_s=30.0)
        # An earlier task: 60 s mostly uncontended (a history of running), then a short pause.
        w.states[0] = Activity.PREFILL
        y.checkpoint("step")
        w.now += 60.0
        y.checkpoint("step")
        w.states[0] = Activity.IDLE
        w.now += 600.0  # the worker idled (or loaded its model)
        start = w.now
        if begun:
            y.begin()
        w.states[0] = Activity.PREFILL  # never drops
        y.checkpoint("step")
        held = w.now - start
        if first_run_by is not None:
            assert held < first_run_by, held
        else:
            assert held > 20.0, held  # what the guard did without it


def test_without_contention_the_guard_costs_nothing() -> None:
    w = World()
    y = yielder(w, mode="block", min_share=0.5)
    for _ in range(1000):
        y.checkpoint("block")
    assert w.now == 0.0 and y.stats.pauses == 0


def test_a_long_pause_is_progress_to_the_supervisor_not_a_hang() -> None:
    """An image paused 700 s behind a busy lane (min_share 0) was failed as worker_timeout at
    busy_timeout_s (600 s) and its worker replaced: waiting for another lane is going as planned."""
    from ris.runtime.supervisor import Fail, Limits, Supervisor

    w = World()
    y = yielder(w, mode="step", min_share=0.0)
    sup = Supervisor(clock=w.clock)
    watch = sup.watch("image", Limits(heartbeat_timeout_s=10, busy_timeout_s=600, load_timeout_s=60))
    sup.ready(watch)
    sup.task_started(watch)
    events = [0]

    def tick() -> None:  # the worker's: counted, and heartbeats carry the count
        events[0] += 1
        sup.heard(watch, progress_events=events[0])

    y.waiting = tick
    w.states[0] = Activity.BUSY
    w.events = [(700.0, Activity.IDLE)]
    y.checkpoint("step")
    assert w.now >= 700.0
    assert not isinstance(sup.decide(watch, alive=True), Fail)
