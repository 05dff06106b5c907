"""The pure scheduler, driven by a fake clock: ordering, aging, bounds, cancellation, deadlines."""

from __future__ import annotations

import itertools

import pytest

from ris.lanes import Lane
from ris.scheduler import (
    CancelOutcome,
    LanePolicy,
    ModelWait,
    Ordering,
    PriorityClass,
    QueueFull,
    Scheduler,
    TaskSpec,
    TaskState,
    percentile,
)
from ris.scheduler.run_fit import RunFit

from .fakes import FakeClock


def make(max_queue: int = 8, aging_s: float = 10.0, slots: int = 0) -> tuple[Scheduler, FakeClock]:
    clock = FakeClock()
    ids = (f"t{i}" for i in itertools.count())
    policy = LanePolicy(max_queue=max_queue, aging_s=aging_s)
    sched = Scheduler({lane: policy for lane in Lane}, clock, new_id=lambda: next(ids))
    for lane in Lane:
        sched.set_slots(lane, slots)
    return sched, clock


def spec(priority: int = 0, deadline: float | None = None, lane: Lane = Lane.LLM) -> TaskSpec:
    return TaskSpec(lane=lane, priority=priority, deadline=deadline)


def drain(sched: Scheduler, lane: Lane = Lane.LLM) -> list[str]:
    """Run every queued task of a lane one at a time; return the order they started in."""
    order: list[str] = []
    sched.set_slots(lane, 1)
    while True:
        started = sched.dispatch()
        if not started:
            return order
        (task,) = started
        order.append(task.id)
        sched.finish(task.id, TaskState.SUCCEEDED)


def test_fifo_within_one_priority() -> None:
    sched, clock = make()
    for _ in range(4):
        sched.submit(spec())
        clock.advance(0.1)
    assert drain(sched) == ["t0", "t1", "t2", "t3"]


def test_higher_priority_runs_first() -> None:
    sched, clock = make()
    sched.submit(spec(priority=0))
    clock.advance(1)
    sched.submit(spec(priority=2))
    clock.advance(1)
    sched.submit(spec(priority=1))
    assert drain(sched) == ["t1", "t2", "t0"]


def test_aging_bounds_how_long_a_task_can_be_overtaken() -> None:
    sched, clock = make(max_queue=100, aging_s=10.0)
    sched.submit(spec(priority=0))  # t0 at 1000
    clock.advance(5)
    sched.submit(spec(priority=1))  # t1: boosted 10 s, submitted 5 s later -> ahead of t0
    clock.advance(6)
    sched.submit(spec(priority=1))  # t2: submitted 11 s after t0 -> t0 has aged past it
    assert drain(sched) == ["t1", "t0", "t2"]


def test_a_stream_of_high_priority_work_cannot_starve_low_priority() -> None:
    sched, clock = make(max_queue=1000, aging_s=1.0)
    sched.submit(spec(priority=0))  # t0
    for _ in range(50):
        clock.advance(0.5)
        sched.submit(spec(priority=5))
    order = drain(sched)
    # Boost is 5 s, arrivals every 0.5 s: only the first 10 arrivals may pass the old task.
    assert order.index("t0") <= 10


def test_realtime_class_ahead_of_batch_in_a_shared_queue() -> None:
    clock = FakeClock()
    sched = Scheduler(
        {Lane.IMAGE: LanePolicy(class_boost_s=60.0)}, clock, new_id=iter(["batch", "rt"]).__next__
    )
    sched.submit(TaskSpec(lane=Lane.IMAGE, priority_class=PriorityClass.BATCH))
    clock.advance(1)
    sched.submit(TaskSpec(lane=Lane.IMAGE, priority_class=PriorityClass.REALTIME))
    assert drain(sched, Lane.IMAGE) == ["rt", "batch"]


def test_full_queue_refuses_with_retry_after_and_keeps_what_it_accepted() -> None:
    sched, _ = make(max_queue=2)
    sched.submit(spec())
    sched.submit(spec())
    with pytest.raises(QueueFull) as exc:
        sched.submit(spec())
    assert exc.value.retry_after_s >= 1.0
    assert exc.value.depth == 2
    assert sched.stats(Lane.LLM).queued == 2
    assert drain(sched) == ["t0", "t1"]


def test_retry_after_counts_the_load_a_running_task_still_waits_for() -> None:
    sched, _ = make(max_queue=1, slots=1)
    sched.submit(TaskSpec(lane=Lane.LLM, load_s=30.0))  # a model switch ahead of it
    assert [t.id for t in sched.dispatch()] == ["t0"]
    sched.submit(spec())
    with pytest.raises(QueueFull) as exc:
        sched.submit(spec())
    assert exc.value.retry_after_s >= 30.0
    sched.progress("t0", 1)  # loaded and producing: the load is behind it
    with pytest.raises(QueueFull) as exc:
        sched.submit(spec())
    assert exc.value.retry_after_s < 30.0


def test_refusals_are_counted_per_lane() -> None:
    sched, _ = make(max_queue=1)
    sched.submit(spec())
    for _ in range(3):
        with pytest.raises(QueueFull):
            sched.submit(spec())
    with pytest.raises(QueueFull):
        sched.require_room(Lane.LLM, 2)  # a batch refused whole counts once
    assert sched.stats(Lane.LLM).rejected == 4
    assert sched.stats(Lane.TTS).rejected == 0


def test_queue_bound_counts_only_waiting_tasks() -> None:
    sched, _ = make(max_queue=1, slots=1)
    sched.submit(spec())
    assert [t.id for t in sched.dispatch()] == ["t0"]
    sched.submit(spec())  # the running task does not hold a queue place
    with pytest.raises(QueueFull):
        sched.submit(spec())


def test_room_is_free_queue_places_plus_idle_slots_that_take_new_tasks_at_once() -> None:
    sched, _ = make(max_queue=2, slots=1)
    assert sched.room(Lane.LLM) == 3  # one starts at once, two wait
    sched.submit(spec())
    sched.dispatch()
    assert sched.room(Lane.LLM) == 2  # the worker is busy: queue places only
    sched.submit(spec())
    assert sched.room(Lane.LLM) == 1
    sched.submit(spec())
    assert sched.room(Lane.LLM) == 0
    assert make(max_queue=0, slots=1)[0].room(Lane.LLM) == 0  # a queue of 0 admits nothing
    fifo = Scheduler({Lane.LLM: LanePolicy(max_queue=2)}, FakeClock(), ordering=Ordering.FIFO)
    fifo.set_slots(Lane.LLM, 1)
    assert fifo.room(Lane.LLM) == 2  # FIFO may hold a task behind another lane: places only


def test_a_batch_that_does_not_fit_whole_is_refused_and_nothing_is_queued() -> None:
    sched, _ = make(max_queue=2, slots=1)
    sched.submit(spec())
    sched.dispatch()
    sched.submit(spec())  # one running, one waiting: room for one more
    with pytest.raises(QueueFull) as exc:
        sched.require_room(Lane.LLM, 4)
    assert exc.value.wanted == 4 and exc.value.retry_after_s >= 1.0
    assert "room for 1 more task, not the 4 asked for together" in str(exc.value)
    assert sched.stats(Lane.LLM).queued == 1
    sched.require_room(Lane.LLM, 1)  # what fits passes


def test_lanes_are_independent() -> None:
    sched, _ = make(max_queue=1)
    sched.submit(spec(lane=Lane.LLM))
    sched.submit(spec(lane=Lane.TTS))  # the full LLM queue does not refuse speech
    sched.set_slots(Lane.TTS, 1)
    assert [t.lane for t in sched.dispatch()] == [Lane.TTS]


def test_dispatch_respects_slots_and_worker_down() -> None:
    sched, _ = make()
    for _ in range(3):
        sched.submit(spec())
    assert sched.dispatch() == []  # worker not up yet
    sched.set_slots(Lane.LLM, 1)
    assert [t.id for t in sched.dispatch()] == ["t0"]
    assert sched.dispatch() == []  # its one slot is busy
    sched.finish("t0", TaskState.SUCCEEDED)
    assert [t.id for t in sched.dispatch()] == ["t1"]


def test_cancel_queued_task_never_runs() -> None:
    sched, _ = make()
    sched.submit(spec())
    sched.submit(spec())
    assert sched.cancel("t0") is CancelOutcome.CANCELLED
    task = sched.get("t0")
    assert task is not None and task.state is TaskState.CANCELLED
    assert drain(sched) == ["t1"]
    assert sched.stats(Lane.LLM).cancelled == 1


def test_cancel_running_task_is_requested_then_finished_by_the_worker() -> None:
    sched, _ = make(slots=1)
    sched.submit(spec())
    sched.dispatch()
    assert sched.cancel("t0") is CancelOutcome.REQUESTED
    task = sched.get("t0")
    assert task is not None and task.cancel_requested and task.state is TaskState.RUNNING
    ended = sched.finish("t0", TaskState.CANCELLED)
    assert ended is task and ended.state is TaskState.CANCELLED
    assert sched.cancel("t0") is CancelOutcome.FINISHED
    assert sched.cancel("nope") is CancelOutcome.UNKNOWN


def test_cancelled_task_frees_its_queue_place() -> None:
    sched, _ = make(max_queue=1)
    sched.submit(spec())
    sched.cancel("t0")
    sched.submit(spec())  # does not raise


def test_queued_task_past_deadline_fails_without_running() -> None:
    sched, clock = make()
    sched.submit(spec(deadline=clock.now + 5))
    sched.submit(spec())
    clock.advance(6)
    assert sched.expire() == []
    task = sched.get("t0")
    assert task is not None and task.state is TaskState.FAILED
    assert task.error_code == "deadline_exceeded"
    assert drain(sched) == ["t1"]


def test_running_task_past_deadline_is_interrupted_and_fails() -> None:
    sched, clock = make(slots=1)
    sched.submit(spec(deadline=clock.now + 5))
    sched.dispatch()
    clock.advance(6)
    (task,) = sched.expire()
    assert task.id == "t0" and task.cancel_requested
    assert sched.expire() == []  # asked once
    sched.finish("t0", TaskState.CANCELLED)  # the worker stopped it
    assert task.state is TaskState.FAILED and task.error_code == "deadline_exceeded"


def test_positions_move_as_tasks_start() -> None:
    sched, _ = make()
    for _ in range(3):
        sched.submit(spec())
    assert [sched.position(f"t{i}") for i in range(3)] == [0, 1, 2]
    sched.set_slots(Lane.LLM, 1)
    sched.dispatch()
    assert [sched.position(f"t{i}") for i in range(3)] == [None, 0, 1]


def test_stats_latency_percentiles_from_the_clock() -> None:
    sched, clock = make(slots=1)
    for dt in (1.0, 2.0, 3.0):
        task = sched.submit(spec())
        sched.dispatch()
        clock.advance(dt)
        sched.finish(task.id, TaskState.SUCCEEDED)
    s = sched.stats(Lane.LLM)
    assert (s.succeeded, s.latency_p50, s.latency_p99) == (3, 2.0, 3.0)


def test_progress_and_eta() -> None:
    sched, clock = make(slots=1)
    sched.submit(spec())
    sched.dispatch()
    clock.advance(2)
    sched.progress("t0", 2, 10)
    assert sched.eta("t0") == pytest.approx(8.0)
    # Past its last step it still runs (an image's decode): a step's time left, not 0.
    clock.advance(8)
    sched.progress("t0", 10, 10)
    assert sched.eta("t0") == pytest.approx(1.0)


def test_a_running_images_eta_counts_down_and_learns_what_follows_its_last_step() -> None:
    """Polled between steps, the ETA rose every second no step came (elapsed / done * left);
    past the last step it was one step's time while a large image's decode took twice that,
    and the bar sat at 99% for half the image's time."""
    sched, clock = make(slots=1)
    big = TaskSpec(lane=Lane.IMAGE, work=8.0)  # 2 steps of 4 units (1024 x 1024)
    sched.submit(big)
    sched.dispatch()
    clock.advance(2.5)
    sched.progress("t0", 1, 2)
    etas: list[float] = []
    shown: list[float] = []
    for _ in range(4):  # between steps: counts down
        etas.append(sched.eta("t0") or 0.0)
        shown.append(sched.fraction_done("t0") or 0.0)
        clock.advance(0.5)
    assert etas == sorted(etas, reverse=True) and etas[0] == pytest.approx(2.5)
    clock.advance(0.5)
    sched.progress("t0", 2, 2)
    clock.advance(5.5)  # the decode: no learned tail yet, a step's time, then a little left
    assert sched.eta("t0") == pytest.approx(0.375)  # 5% of the run foreseen
    shown.append(sched.fraction_done("t0") or 0.0)
    assert shown == sorted(shown) and 0.4 < shown[0] and shown[-1] <= 0.99
    sched.finish("t0", TaskState.SUCCEEDED)
    # The next image of that size knows the decode that follows its last step.
    sched.submit(big)
    sched.dispatch()
    clock.advance(2.5)
    sched.progress("t1", 1, 2)
    assert sched.eta("t1") == pytest.approx(2.5 + 5.5)
    clock.advance(2.5)
    sched.progress("t1", 2, 2)
    clock.advance(2.0)
    assert sched.eta("t1") == pytest.approx(3.5)
    assert sched.fraction_done("t1") == pytest.approx(7.0 / 10.5)


def test_a_first_observation_is_the_prior_at_its_own_size() -> None:
    """The tail after an image's last step was seeded as if seen at 1 unit whatever its size
    (and counted twice): a 1024 px decode of 8 s, then a 512 px one of 2 s, made no line."""
    fit = RunFit(8.0, initial_work=4.0)
    fit.add(2.0, 1.0)
    assert fit.estimate(4.0) > fit.estimate(1.0)
    sched, clock = make(slots=1)
    for name, work, tail in (("t0", 8.0, 8.0), ("t1", 2.0, 2.0)):  # 2 steps: 4 units, then 1
        sched.submit(TaskSpec(lane=Lane.IMAGE, work=work))
        sched.dispatch()
        clock.advance(1.0)
        sched.progress(name, 2, 2)
        clock.advance(tail)
        sched.finish(name, TaskState.SUCCEEDED)
    for name, work, decode in (("t2", 8.0, 8.0), ("t3", 2.0, 2.0)):  # each its own size's decode
        sched.submit(TaskSpec(lane=Lane.IMAGE, work=work))
        sched.dispatch()
        clock.advance(1.0)
        sched.progress(name, 2, 2)
        assert sched.eta(name) == pytest.approx(decode, abs=0.5)  # a small one was told 6.6 s
        clock.advance(decode)
        sched.finish(name, TaskState.SUCCEEDED)


def test_a_queued_tasks_eta_counts_what_the_running_task_has_left() -> None:
    """A long image running (10% done in 10 s: 90 s left) puts 90 s ahead of the task queued
    behind it, not the lane's mean run (1 s)."""
    sched, clock = make(slots=1)
    for _ in range(3):
        sched.submit(spec())
    sched.dispatch()
    clock.advance(10)
    sched.progress("t0", 10, 100)
    assert sched.eta("t0") == pytest.approx(90.0)
    assert sched.eta("t1") == pytest.approx(90.0 + 1.0)
    assert sched.eta("t2") == pytest.approx(90.0 + 1.0 + 1.0)  # one mean run more per task ahead


def test_run_times_are_learned_as_a_fixed_part_and_a_part_per_unit_of_work() -> None:
    """Per unit alone, a 2-step 64 px image (1/32 of a unit, nearly all fixed cost) taught 45 s
    per unit: a 40-step 512 px one behind it was told half an hour for 12 s."""
    fit = RunFit(1.0)
    assert fit.estimate(0.03) == fit.estimate(40) == 1.0  # the prior: one size, what it took
    for _ in range(5):
        fit.add(1.4, 1 / 32)
    assert fit.estimate(40) < 2.0  # small ones only: no line to extrapolate along
    for _ in range(20):  # both sizes, in turn: t = 1.39 s + 0.265 s per unit
        fit.add(1.39 + 0.265 / 32, 1 / 32)
        fit.add(1.39 + 0.265 * 40, 40)
    assert fit.estimate(40) == pytest.approx(12.0, rel=0.05)
    assert fit.estimate(1 / 32) == pytest.approx(1.4, rel=0.05)
    same = RunFit(1.0)
    same.add(2.0, 1.0)  # tasks alike (LLM, speech): the mean run, as it always was
    assert same.estimate(1.0) == same.mean_s == pytest.approx(0.8 * 1.0 + 0.2 * 2.0)


def test_a_tasks_eta_is_at_its_size_and_the_queue_ahead_at_theirs() -> None:
    sched, clock = make(slots=1)
    sched.learned_run_times(Lane.LLM, [(1.0 + 0.5 * w, w) for w in (1, 9) * 20])  # 1 s + 0.5 s a unit
    fixed, per_unit = 1.0, 0.5
    for work in (1.0, 10.0, 2.0):
        sched.submit(TaskSpec(lane=Lane.LLM, work=work))
    assert sched.eta("t0") == pytest.approx(fixed + per_unit * 1.0, rel=0.02)
    assert sched.eta("t1") == pytest.approx(2 * fixed + per_unit * 11.0, rel=0.02)
    assert sched.eta("t2") == pytest.approx(3 * fixed + per_unit * 13.0, rel=0.02)
    sched.dispatch()
    assert sched.eta("t0") == pytest.approx(1.5, rel=0.02)  # running, no progress yet: its own size
    assert sched.retry_after(Lane.LLM) == pytest.approx(1.5, rel=0.02)  # when t0 ends, by its size
    clock.advance(3.0)
    sched.finish("t0", TaskState.SUCCEEDED)  # learned as it finishes, at its work


def test_eta_includes_the_load_of_a_model_not_loaded_until_its_first_output() -> None:
    sched, clock = make(slots=1)
    sched.submit(spec())  # t0 runs, 1 s estimated
    sched.submit(TaskSpec(lane=Lane.LLM, load_s=3.0))  # t1: its model loads first
    sched.dispatch()
    assert sched.eta("t1") == pytest.approx(1.0 * 2 + 3.0)  # behind t0, then the load and its run
    clock.advance(1.0)  # t0 takes the 1 s estimated: the estimate stays
    sched.finish("t0", TaskState.SUCCEEDED)
    sched.dispatch()
    clock.advance(0.5)
    assert sched.eta("t1") == pytest.approx(1.0 + 3.0 - 0.5)  # loading: the load is still ahead
    sched.progress("t1", 1)
    assert sched.eta("t1") == pytest.approx(1.0 - 0.5)  # a first output: loaded, the run remains


def test_eta_of_a_task_held_for_a_model_switch_counts_the_drain_then_the_load() -> None:
    # Two slots: t0 runs model a; t1 (model b, 3 s to load) is dispatched beside it, but the
    # worker holds it until a's batch drains. Without the engine's word its ETA falls to 0 as
    # t0 runs on; with it: t0's remaining time, then the load, then its own run.
    sched, clock = make(slots=2)
    sched.submit(spec())
    sched.submit(TaskSpec(lane=Lane.LLM, load_s=3.0))
    sched.dispatch()
    clock.advance(5.0)  # t0 runs long past the 1 s estimate, t1 still held
    sched.progress("t0", 5, 10)  # half done in 5 s: 5 s more
    assert sched.eta("t1") == pytest.approx(0.0)  # what a held task said before
    assert sched.eta("t1", ModelWait(behind=("t0", "t1"), load_s=3.0)) == pytest.approx(5.0 + 3.0 + 1.0)
    clock.advance(5.0)
    sched.finish("t0", TaskState.SUCCEEDED)  # drained: the load begins
    drained = clock()
    clock.advance(1.0)
    run = sched.eta("t1", ModelWait(loading_since=drained))  # no load: its run (t0's 10 s moved it)
    assert run is not None and run > 0
    # Still held, nothing left to drain, the load not begun yet (the worker has not said so).
    assert sched.eta("t1", ModelWait(load_s=3.0)) == pytest.approx(3.0 + run)
    loading = ModelWait(load_s=3.0, loading_since=drained)
    assert sched.eta("t1", loading) == pytest.approx(2.0 + run)  # 2 s of the load left, then the run
    clock.advance(10.0)  # a load slower than the last one: its run at least, never 0
    assert sched.eta("t1", loading) == pytest.approx(run)


def test_a_task_whose_model_arrived_runs_from_then_for_its_eta_and_the_lane_estimate() -> None:
    # t0 (1 s estimated, 3 s load ahead) is held 10 s by its worker for a switch; once its
    # model is there, the wait is neither elapsed run time nor a load still ahead.
    sched, clock = make(slots=1)
    sched.submit(TaskSpec(lane=Lane.LLM, load_s=3.0))
    sched.dispatch()
    clock.advance(10.0)
    assert sched.eta("t0") == pytest.approx(0.0)  # the wait read as run time: "any moment now"
    assert sched.retry_after(Lane.LLM) == pytest.approx(1.0 + 3.0)  # its slot frees after the load
    arrived = clock()
    sched.model_ready("t0")
    assert sched.eta("t0") == pytest.approx(1.0)  # its whole run is ahead, the load behind
    assert sched.retry_after(Lane.LLM) == pytest.approx(1.0)
    clock.advance(0.5)
    assert sched.eta("t0") == pytest.approx(0.5)
    sched.progress("t0", 1, 4)  # a quarter in 0.5 s of its own run (not 10.5 s)
    assert sched.eta("t0") == pytest.approx(1.5)
    clock.advance(1.5)
    sched.finish("t0", TaskState.SUCCEEDED)
    assert sched.stats(Lane.LLM).run_time_mean == pytest.approx(0.8 * 1.0 + 0.2 * 2.0)  # 2 s, not 12
    sched.model_ready("t0")  # finished: nothing changes
    task = sched.get("t0")
    assert task is not None and task.run_since == arrived


def test_finished_tasks_are_forgotten_beyond_the_limit() -> None:
    clock = FakeClock()
    sched = Scheduler({Lane.LLM: LanePolicy(keep_finished=2)}, clock)
    sched.set_slots(Lane.LLM, 1)
    ids = []
    for _ in range(3):
        t = sched.submit(spec())
        sched.dispatch()
        sched.finish(t.id, TaskState.SUCCEEDED)
        ids.append(t.id)
    assert sched.get(ids[0]) is None and sched.get(ids[2]) is not None


def test_finished_tasks_not_yet_reported_are_kept_over_the_limit() -> None:
    """A deadline over a long queue ends more tasks in one pass than keep_finished: none may go
    before the caller has read it (its client would never be answered)."""
    clock = FakeClock()
    read: set[str] = set()
    sched = Scheduler(
        {Lane.LLM: LanePolicy(keep_finished=2, max_queue=10)}, clock, unreported=lambda t: t not in read
    )
    ids = [sched.submit(spec(deadline=clock.now + 1)).id for _ in range(5)]
    clock.advance(2)
    sched.expire()
    assert all(sched.get(t) is not None for t in ids)  # all five, over the limit of two
    read.update(ids)
    sched.submit(spec())
    sched.cancel(sched.submit(spec()).id)  # the next close trims to the limit: the last two
    assert [sched.get(t) is None for t in ids] == [True] * 4 + [False]


def test_positions_follow_every_change_of_the_queue() -> None:
    """Places are kept between changes (a listing asks each task's), and every way in or out of
    the queue moves them."""
    sched, clock = make()
    for priority in (0, 0, 0, 5):
        sched.submit(spec(priority=priority))
    assert [sched.position(f"t{i}") for i in range(4)] == [1, 2, 3, 0]
    sched.cancel("t1")
    assert [sched.position(f"t{i}") for i in range(4)] == [1, None, 2, 0]
    sched.set_slots(Lane.LLM, 1)
    sched.dispatch()  # t3 starts
    assert [sched.position(f"t{i}") for i in range(4)] == [0, None, 1, None]
    sched.submit(spec(priority=9))  # t4 goes first
    assert [sched.position(f"t{i}") for i in (0, 2, 4)] == [1, 2, 0]


def test_a_callers_own_retries_of_a_refusal_are_not_counted_again() -> None:
    """The speaking pipeline waits for room a second at a time: one sentence waiting 30 s was
    30 refusals in ris_tasks_rejected_total, though no client had a 429."""
    sched, _ = make(max_queue=1)
    sched.submit(spec())
    for retry in (False, True, True, True):
        with pytest.raises(QueueFull):
            sched.submit(spec(), retry=retry)
    assert sched.stats(Lane.LLM).rejected == 1


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3, 1, 2], 50) == 2
    assert percentile(range(101), 99) == 99


# ----- the FIFO ordering (the benchmark's "traditional" baseline) -----------------------------


def make_fifo() -> tuple[Scheduler, FakeClock]:
    clock = FakeClock()
    ids = (f"t{i}" for i in itertools.count())
    sched = Scheduler(
        {lane: LanePolicy() for lane in Lane}, clock, new_id=lambda: next(ids), ordering=Ordering.FIFO
    )
    return sched, clock


def test_fifo_ignores_priority_and_class() -> None:
    sched, clock = make_fifo()
    low = sched.submit(TaskSpec(Lane.LLM, priority=0))
    clock.advance(1)
    high = sched.submit(TaskSpec(Lane.LLM, priority=9, priority_class=PriorityClass.REALTIME))
    sched.set_slots(Lane.LLM, 1)
    assert [t.id for t in sched.dispatch()] == [low.id]
    sched.finish(low.id, TaskState.SUCCEEDED)
    assert [t.id for t in sched.dispatch()] == [high.id]


def test_fifo_head_of_line_blocks_other_lanes() -> None:
    sched, clock = make_fifo()
    for lane in Lane:
        sched.set_slots(lane, 1)
    img1 = sched.submit(TaskSpec(Lane.IMAGE))
    assert [t.id for t in sched.dispatch()] == [img1.id]
    img2 = sched.submit(TaskSpec(Lane.IMAGE))
    chat = sched.submit(TaskSpec(Lane.LLM))
    # The LLM worker is free, but the image task submitted before the chat has not started.
    assert sched.dispatch() == []
    sched.finish(img1.id, TaskState.SUCCEEDED)
    assert [t.id for t in sched.dispatch()] == [img2.id, chat.id]


def test_lanes_ordering_does_not_block_across_lanes() -> None:
    sched, _ = make(slots=1)
    img1 = sched.submit(TaskSpec(Lane.IMAGE))
    sched.dispatch()
    sched.submit(TaskSpec(Lane.IMAGE))
    chat = sched.submit(TaskSpec(Lane.LLM))
    assert [t.id for t in sched.dispatch()] == [chat.id]
    assert img1.state is TaskState.RUNNING


def fair(share: float, slots: int) -> Scheduler:
    ids = (f"t{i}" for i in itertools.count())
    policy = LanePolicy(client_share=share)
    sched = Scheduler({Lane.LLM: policy}, FakeClock(), new_id=lambda: next(ids))
    sched.set_slots(Lane.LLM, slots)
    return sched


def running_by_client(sched: Scheduler) -> dict[str | None, int]:
    counts: dict[str | None, int] = {}
    for t in sched.tasks():
        if t.state is TaskState.RUNNING:
            counts[t.spec.client] = counts.get(t.spec.client, 0) + 1
    return counts


def test_one_client_holds_at_most_its_share_of_slots_while_another_waits() -> None:
    sched = fair(0.5, 4)
    heavy = [sched.submit(TaskSpec(lane=Lane.LLM, client="heavy")) for _ in range(20)]
    sched.dispatch()
    assert running_by_client(sched) == {"heavy": 4}  # alone, it takes every free slot
    light = [sched.submit(TaskSpec(lane=Lane.LLM, client="light")) for _ in range(4)]
    sched.finish(heavy[0].id, TaskState.SUCCEEDED)
    assert [t.id for t in sched.dispatch()] == [light[0].id]  # past the heavy client's queue
    for t in heavy[1:4]:  # as slots free, the heavy client refills only to its share (2 of 4)
        sched.finish(t.id, TaskState.SUCCEEDED)
        sched.dispatch()
    assert running_by_client(sched) == {"heavy": 2, "light": 2}
    # Each client's tasks start in its own order.
    started = [t.id for t in heavy if t.started_at is not None]
    assert started == [t.id for t in heavy[: len(started)]]
    assert [t.started_at is not None for t in light] == [True, True, False, False]


def test_the_last_starter_holding_nothing_goes_before_a_client_at_its_share() -> None:
    """2 slots, a share of 1 each: B's task ended, A's runs; A queued, then B. The turn-taking
    extra slot counted B as full, and A took both slots while B held none."""
    sched = fair(0.5, 2)
    a1 = sched.submit(TaskSpec(lane=Lane.LLM, client="a"))
    b1 = sched.submit(TaskSpec(lane=Lane.LLM, client="b"))
    assert {t.id for t in sched.dispatch()} == {a1.id, b1.id}
    sched.finish(b1.id, TaskState.SUCCEEDED)  # b started last
    a2 = sched.submit(TaskSpec(lane=Lane.LLM, client="a"))
    b2 = sched.submit(TaskSpec(lane=Lane.LLM, client="b"))
    assert [t.id for t in sched.dispatch()] == [b2.id]
    assert running_by_client(sched) == {"a": 1, "b": 1} and a2.state is TaskState.QUEUED


def test_the_queue_knows_which_clients_wait_through_every_way_out() -> None:
    # What lets the fair pick skip its pass over the queue when only full clients wait.
    clock = FakeClock()
    ids = (f"t{i}" for i in itertools.count())
    sched = Scheduler({Lane.LLM: LanePolicy(client_share=0.5)}, clock, new_id=lambda: next(ids))
    sched.set_slots(Lane.LLM, 2)
    a = [sched.submit(TaskSpec(lane=Lane.LLM, client="a", deadline=5.0)) for _ in range(4)]
    b = sched.submit(TaskSpec(lane=Lane.LLM, client="b"))
    none = sched.submit(TaskSpec(lane=Lane.LLM))
    queue = sched._book(Lane.LLM).queue  # noqa: SLF001 - the queue's own bookkeeping
    assert queue.clients() == {"a", "b", None} and queue.client_count() == 3
    sched.dispatch()  # a0 pops; a1 is past a's share (a0 + last starter): b is taken out of order
    assert [t.state for t in (a[0], b)] == [TaskState.RUNNING, TaskState.RUNNING]
    assert queue.clients() == {"a", None} and queue.client_count() == 2
    sched.cancel(none.id)
    assert queue.clients() == {"a"} and queue.client_count() == 1
    clock.advance(10.0)
    sched.expire()  # a's queued tasks are past their deadline
    assert all(t.state.finished for t in a[1:])
    assert queue.clients() == set() and len(queue) == 0 and queue.client_count() == 0


def test_one_client_alone_fills_every_slot_with_plain_tasks_then_yields_to_a_newcomer() -> None:
    # The fair pick's fast path (only the head's client waits, a plain head) and its way back
    # to the full pass once another client queues.
    sched = fair(0.5, 4)
    heavy = [sched.submit(TaskSpec(lane=Lane.LLM, client="heavy")) for _ in range(6)]
    sched.dispatch()
    assert running_by_client(sched) == {"heavy": 4}  # nobody else waits: no slot left idle
    light = sched.submit(TaskSpec(lane=Lane.LLM, client="light"))
    sched.finish(heavy[0].id, TaskState.SUCCEEDED)
    assert [t.id for t in sched.dispatch()] == [light.id]  # past heavy's queued tasks
    sched.finish(heavy[1].id, TaskState.SUCCEEDED)
    assert [t.id for t in sched.dispatch()] == [heavy[4].id]  # heavy's next, in its order


def test_costly_tasks_of_one_client_leave_slots_free_for_the_next_client() -> None:
    sched = fair(0.5, 8)
    costly = [sched.submit(TaskSpec(lane=Lane.LLM, client="heavy", costly=True)) for _ in range(20)]
    sched.dispatch()
    assert running_by_client(sched) == {"heavy": 4}  # alone, yet only its share: 4 slots stay free
    plain_same = sched.submit(TaskSpec(lane=Lane.LLM, client="heavy"))
    assert [t.id for t in sched.dispatch()] == [plain_same.id]  # its plain tasks take a free slot
    other = sched.submit(TaskSpec(lane=Lane.LLM, client="light"))
    assert [t.id for t in sched.dispatch()] == [other.id]  # at once, not behind a costly task
    sched.finish(costly[0].id, TaskState.SUCCEEDED)
    assert [t.id for t in sched.dispatch()] == [costly[4].id]  # refilled to its share, in order
    assert running_by_client(sched) == {"heavy": 5, "light": 1}


def test_a_queue_full_of_costly_tasks_still_admits_a_task_a_free_slot_takes() -> None:
    ids = (f"t{i}" for i in itertools.count())
    sched = Scheduler(
        {Lane.LLM: LanePolicy(client_share=0.5, max_queue=4)}, FakeClock(), new_id=lambda: next(ids)
    )
    sched.set_slots(Lane.LLM, 4)
    for _ in range(6):  # 2 start (its share), 4 fill the queue; 2 slots stay free
        sched.submit(TaskSpec(lane=Lane.LLM, client="heavy", costly=True))
        sched.dispatch()
    with pytest.raises(QueueFull):
        sched.submit(TaskSpec(lane=Lane.LLM, client="heavy", costly=True))
    plain = sched.submit(TaskSpec(lane=Lane.LLM, client="light"))  # not refused: a slot is free
    assert [t.id for t in sched.dispatch()] == [plain.id]


def test_a_single_slot_alternates_between_clients_and_share_one_is_plain_priority_order() -> None:
    sched = fair(0.5, 1)
    a = [sched.submit(TaskSpec(lane=Lane.LLM, client="a")) for _ in range(3)]
    b = [sched.submit(TaskSpec(lane=Lane.LLM, client="b")) for _ in range(2)]
    order = []
    while started := sched.dispatch():
        order += [t.id for t in started]
        sched.finish(started[0].id, TaskState.SUCCEEDED)
    # "a" holds the slot when "b" is next: a (b waits) -> b -> a -> b -> a: never two in a row
    # for one client while the other waits.
    assert order == [a[0].id, b[0].id, a[1].id, b[1].id, a[2].id]
    plain = fair(1.0, 1)  # a share of the whole lane: priority order alone
    ids = [plain.submit(TaskSpec(lane=Lane.LLM, client=c)).id for c in "aab"]
    assert drain(plain) == ids


def test_percentiles_are_nearest_rank() -> None:
    from ris.scheduler import percentile

    assert [percentile(range(1, n + 1), 50) for n in (2, 4, 6, 8)] == [1, 2, 3, 4]  # the lower middle
    assert percentile(range(1, 1001), 50) == 500 and percentile(range(1, 1001), 99) == 990
    assert percentile([5.0], 0) == 5.0 and percentile([1, 2, 3], 100) == 3 and percentile([], 50) is None


def test_one_client_holds_at_most_its_share_of_the_queue() -> None:
    """One key queued 257 hour-long images and every other key met 429 queue_full for a day
    (the durable image queue outlives restarts too). With a share of 0.5, a client holds half
    the places; the others' tasks are admitted, and the client's own as its tasks leave."""
    s = Scheduler({Lane.IMAGE: LanePolicy(max_queue=8, client_queue_share=0.5)}, FakeClock())
    s.set_slots(Lane.IMAGE, 1)

    def image(client: str | None) -> TaskSpec:
        return TaskSpec(lane=Lane.IMAGE, client=client)

    first = s.submit(image("alice"))
    s.dispatch()  # running: no queue place of hers
    mine = [s.submit(image("alice")) for _ in range(4)]
    with pytest.raises(QueueFull, match="this client's share of the image queue is full \\(4 of its places"):
        s.submit(image("alice"))
    assert s.room(Lane.IMAGE, "alice") == 0 and s.room(Lane.IMAGE, "bob") == 4
    with pytest.raises(QueueFull):
        s.require_room(Lane.IMAGE, 2, "alice")  # a batch is held to the share too
    bobs = [s.submit(image("bob")) for _ in range(4)]  # the rest of the queue is the others'
    assert len(bobs) == 4
    with pytest.raises(QueueFull, match="the image queue is full"):
        s.submit(image("carol"))
    s.cancel(mine[0].id)
    s.submit(image("alice"))  # a place of hers freed
    s.submit(image(None), force=True)  # resumed after a restart: never refused
    assert s.get(first.id) is not None


def test_a_queued_tasks_place_and_eta_follow_the_turns_clients_take() -> None:
    """One slot, a's picture running, a's two queued, then b's: b runs next (the clients take
    turns), but the places read the priority order: b was told "third", and a's next, told
    "next", was pushed back a turn when the slot freed."""
    sched = fair(0.5, 1)
    a1 = sched.submit(TaskSpec(lane=Lane.LLM, client="a", work=2.0))
    sched.dispatch()
    a2, a3 = (sched.submit(TaskSpec(lane=Lane.LLM, client="a")) for _ in range(2))
    b1 = sched.submit(TaskSpec(lane=Lane.LLM, client="b"))
    assert [sched.position(t.id) for t in (b1, a2, a3)] == [0, 1, 2]
    etas = [sched.eta(t.id) or 0.0 for t in (b1, a2, a3)]
    assert etas == sorted(etas) and etas[0] > 0
    sched.finish(a1.id, TaskState.SUCCEEDED)
    assert [t.id for t in sched.dispatch()] == [b1.id]
    assert [sched.position(t.id) for t in (a2, a3)] == [0, 1]


@pytest.mark.parametrize("seed", range(40))
def test_the_places_told_are_the_order_tasks_start_in(seed: int) -> None:
    """Random clients, costly tasks, priorities and slots: every queued task's place is where
    it starts, when running tasks end oldest first."""
    import random

    rng = random.Random(seed)
    slots = rng.randint(1, 4)
    sched = fair(rng.choice([0.25, 0.5, 0.75]), slots)
    clock = sched._clock  # noqa: SLF001 - the FakeClock fair() made
    running: list[str] = []
    for _ in range(rng.randint(0, slots)):
        running += [t.id for t in sched.dispatch()]
        sched.submit(TaskSpec(lane=Lane.LLM, client=rng.choice("abc"), costly=rng.random() < 0.3))
        running += [t.id for t in sched.dispatch()]
    for _ in range(rng.randint(2, 12)):
        clock.advance(rng.random())  # type: ignore[attr-defined]
        client = rng.choice(["a", "b", "c", None])
        spec = TaskSpec(
            lane=Lane.LLM, client=client, costly=rng.random() < 0.3, priority=rng.choice([0, 0, 1])
        )
        sched.submit(spec)
    running += [t.id for t in sched.dispatch()]
    waiting = [t for t in sched.tasks() if t.state is TaskState.QUEUED]
    told = sorted(waiting, key=lambda t: sched.position(t.id))  # type: ignore[arg-type,return-value]
    assert sorted(sched.position(t.id) for t in waiting) == list(range(len(waiting)))  # type: ignore[type-var]
    started: list[str] = []
    while len(started) < len(waiting):
        sched.finish(running.pop(0), TaskState.SUCCEEDED)
        now = [t.id for t in sched.dispatch()]
        running += now
        started += now
    assert started == [t.id for t in told]


@pytest.mark.parametrize("ordering", [Ordering.LANES, Ordering.FIFO])
def test_a_held_lane_starts_nothing_and_keeps_its_queue_until_let_go(ordering: Ordering) -> None:
    """Scheduler.hold: a durable lane whose results have no room on disk waits, queued."""
    ids = (f"t{i}" for i in itertools.count())
    sched = Scheduler(
        {lane: LanePolicy() for lane in Lane}, FakeClock(), new_id=lambda: next(ids), ordering=ordering
    )
    for lane in Lane:
        sched.set_slots(lane, 1)
    sched.hold(Lane.IMAGE, "disk_space")
    sched.submit(spec(lane=Lane.IMAGE))
    assert sched.dispatch() == []
    assert (sched.held(Lane.IMAGE), sched.stats(Lane.IMAGE).held, sched.stats(Lane.IMAGE).queued) == (
        "disk_space",
        "disk_space",
        1,
    )
    sched.submit(spec(lane=Lane.LLM))  # other lanes go on, FIFO's too: a held head blocks none
    assert [t.id for t in sched.dispatch()] == ["t1"]
    sched.hold(Lane.IMAGE, None)
    assert [t.id for t in sched.dispatch()] == ["t0"]
    assert sched.stats(Lane.IMAGE).held is None


def test_a_held_lane_admits_no_more_than_its_queue_holds() -> None:
    """Its free slots admitted every submission past max_queue: 50 of 50 queued, each a
    record on the nearly full disk the hold was for."""
    sched, _ = make(max_queue=2, slots=1)
    sched.hold(Lane.IMAGE, "disk_space")
    sched.submit(spec(lane=Lane.IMAGE))
    sched.submit(spec(lane=Lane.IMAGE))
    with pytest.raises(QueueFull) as exc:
        sched.submit(spec(lane=Lane.IMAGE))
    assert exc.value.retry_after_s == pytest.approx(5.0)
    assert sched.room(Lane.IMAGE) == 0
    with pytest.raises(QueueFull) as exc:
        sched.require_room(Lane.IMAGE, 4)  # more than its 2 places and 1 slot: yet not a 400
    assert exc.value.most is None  # waiting for room is what helps: a 429, not a 400


def test_retry_after_is_when_the_soonest_running_task_ends_by_its_progress() -> None:
    """A 60-step picture 2 steps in said "retry after 1 s" (the lane's mean run, the first
    guess on a new data folder) with about 28 s left: clients retried into 429s every second."""
    sched, clock = make(max_queue=1, slots=1)
    sched.submit(spec(lane=Lane.IMAGE))
    sched.dispatch()
    sched.submit(spec(lane=Lane.IMAGE))
    clock.advance(2.0)
    sched.progress("t0", 2, 60)  # a second a step: 58 s left
    with pytest.raises(QueueFull) as exc:
        sched.submit(spec(lane=Lane.IMAGE))
    assert exc.value.retry_after_s == pytest.approx(58.0)


def test_a_batch_larger_than_the_lane_ever_admits_says_so_not_to_retry() -> None:
    """n=3 images on a lane of 1 queue place and 1 slot was a 429 with Retry-After: the SDK
    waited and retried a request no wait could admit."""
    sched, _ = make(max_queue=1, slots=1)
    sched.require_room(Lane.IMAGE, 2)  # idle: a place and a slot
    with pytest.raises(QueueFull) as exc:
        sched.require_room(Lane.IMAGE, 3)
    assert exc.value.most == 2
    sched.submit(spec(lane=Lane.IMAGE))
    sched.dispatch()
    with pytest.raises(QueueFull) as exc:
        sched.require_room(Lane.IMAGE, 2)  # busy now: a wait makes room
    assert exc.value.most is None
    sched.set_slots(Lane.IMAGE, 0)  # no worker up: its slots are not known, so no verdict
    with pytest.raises(QueueFull) as exc:
        sched.require_room(Lane.IMAGE, 3)
    assert exc.value.most is None
