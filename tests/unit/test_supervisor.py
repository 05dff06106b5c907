"""Supervision rules as pure decisions, with a fake clock: when a worker is dead, hung, too
slow to load, or due for a restart."""

from __future__ import annotations

from ris.runtime.supervisor import (
    RESTART_BACKOFF_MAX_S,
    STABLE_AFTER_S,
    Fail,
    Limits,
    Restart,
    Supervisor,
    Watch,
    WorkerState,
    backoff,
)

from .fakes import FakeClock

LIMITS = Limits(heartbeat_timeout_s=10, busy_timeout_s=30, load_timeout_s=60)


def started() -> tuple[FakeClock, Supervisor, Watch]:
    clock = FakeClock()
    sup = Supervisor(clock)
    w = sup.watch("llm", LIMITS)
    sup.started(w)
    return clock, sup, w


def test_a_dead_process_is_a_crash_whether_loading_or_ready() -> None:
    clock, sup, w = started()
    assert sup.decide(w, alive=False) == Fail("worker_crashed", "the llm worker process died")
    sup.ready(w)
    assert isinstance(sup.decide(w, alive=False), Fail)
    assert sup.decide(w, alive=True) is None


def test_loading_may_take_the_load_timeout_and_no_longer() -> None:
    clock, sup, w = started()
    clock.advance(59)
    assert sup.decide(w, alive=True) is None  # silent while loading: fine
    clock.advance(2)
    verdict = sup.decide(w, alive=True)
    assert isinstance(verdict, Fail) and "did not load in time" in verdict.message


def test_silence_beyond_the_heartbeat_timeout_is_a_hang() -> None:
    clock, sup, w = started()
    sup.ready(w)
    clock.advance(9)
    sup.heard(w)
    clock.advance(9)
    assert sup.decide(w, alive=True) is None
    clock.advance(2)
    assert sup.decide(w, alive=True) == Fail("worker_timeout", "the llm worker stopped answering for 10 s")


def test_busy_without_progress_is_a_hang_but_progress_reported_by_heartbeats_is_not() -> None:
    clock, sup, w = started()
    sup.ready(w)
    sup.task_started(w)
    for events in range(1, 10):  # 90 s of heartbeats that carry a growing count
        clock.advance(10)
        sup.heard(w, progress_events=events)
        assert sup.decide(w, alive=True) is None
    for _ in range(4):  # the count stops moving
        clock.advance(10)
        sup.heard(w, progress_events=9)
    verdict = sup.decide(w, alive=True)
    assert isinstance(verdict, Fail) and "no progress for 30 s" in verdict.message
    sup.task_ended(w)
    assert sup.decide(w, alive=True) is None  # idle: no progress to expect


def test_restarts_back_off_and_the_backoff_is_capped() -> None:
    clock, sup, w = started()
    sup.killed(w)
    assert sup.decide(w, alive=False) is None
    clock.advance(backoff(0))
    assert sup.decide(w, alive=False) == Restart()
    sup.restarting(w)
    assert w.state is WorkerState.STARTING and w.restarts == 1
    delays = [backoff(n) for n in range(10)]
    assert delays == sorted(delays) and delays[0] == 0.5 and delays[-1] == RESTART_BACKOFF_MAX_S


def test_the_backoff_counts_failures_in_a_row_not_over_the_servers_life() -> None:
    """Crashes in a row back off; a worker that then served STABLE_AFTER_S is restarted
    quickly at its next failure (the restarts shown stay a life-long count)."""
    clock, sup, w = started()
    for n in range(4):  # four crashes in a row, each restarted after its back-off
        sup.killed(w)
        clock.advance(backoff(n))
        assert sup.decide(w, alive=False) == Restart()
        sup.restarting(w)
    sup.ready(w)
    sup.killed(w)  # a fifth, at once: still in a row
    clock.advance(backoff(3))
    assert sup.decide(w, alive=False) is None  # it waits backoff(4)
    clock.advance(backoff(4) - backoff(3))
    assert sup.decide(w, alive=False) == Restart()
    sup.restarting(w)
    sup.ready(w)
    clock.advance(STABLE_AFTER_S)
    sup.heard(w)  # a heartbeat after a minute of serving: recovered
    sup.killed(w)
    clock.advance(backoff(0))
    assert sup.decide(w, alive=False) == Restart()
    assert w.restarts == 5


def test_a_failed_load_is_retried_after_the_backoff() -> None:
    clock, sup, w = started()
    sup.load_failed(w)
    assert w.state is WorkerState.FAILED
    assert sup.decide(w, alive=False) is None
    clock.advance(backoff(0))
    assert sup.decide(w, alive=False) == Restart()


def test_a_worker_over_its_memory_ceiling_is_replaced_with_its_own_code() -> None:
    clock = FakeClock()
    sup = Supervisor(clock)
    w = sup.watch("tts", Limits(10, 30, 60, memory_bytes=100 * 2**20))
    sup.started(w)
    assert sup.decide(w, alive=True, memory_bytes=100 * 2**20) is None  # at the ceiling: fine
    over = sup.decide(w, alive=True, memory_bytes=101 * 2**20)
    assert isinstance(over, Fail) and over.code == "worker_out_of_memory"
    assert "101 MiB" in over.message and "100 MiB" in over.message
    # Over by less than half a MiB: "used 100 MiB, over its ceiling of 100 MiB" said nothing.
    just = sup.decide(w, alive=True, memory_bytes=100 * 2**20 + 2**18)
    assert isinstance(just, Fail) and "used 100.2 MiB, over its ceiling of 100 MiB" in just.message
    sup.ready(w)
    assert isinstance(sup.decide(w, alive=True, memory_bytes=2**40), Fail)
    assert sup.decide(w, alive=True, memory_bytes=None) is None  # unknown: no guess
    sup.killed(w)
    clock.advance(backoff(0))
    assert sup.decide(w, alive=False, memory_bytes=None) == Restart()


def test_no_ceiling_means_no_memory_decision() -> None:
    clock, sup, w = started()
    sup.ready(w)
    assert sup.decide(w, alive=True, memory_bytes=2**50) is None


def test_load_time_counts_from_placement_not_from_a_wait_for_room() -> None:
    """A cluster worker waiting for a node is not failed for loading slowly once it is placed."""
    clock = FakeClock()
    sup = Supervisor(clock)
    w = sup.watch("llm", Limits(heartbeat_timeout_s=5, busy_timeout_s=20, load_timeout_s=60))
    sup.started(w)
    for _ in range(10):  # ten minutes waiting for room
        clock.advance(60)
        sup.waiting(w)
        assert sup.decide(w, alive=True) is None
    clock.advance(59)  # placed, loading
    assert sup.decide(w, alive=True) is None
    clock.advance(2)
    assert isinstance(sup.decide(w, alive=True), Fail)


def test_a_model_loading_after_the_start_has_the_load_timeout_not_the_busy_one() -> None:
    """A model loaded on first use (or after a switch, or keep_alive) makes no progress while it
    loads: its limit is load_timeout_s (60 here), not busy_timeout_s (30), which killed such
    loads and the next request's retry of them alike."""
    clock, sup, w = started()
    sup.ready(w)
    sup.task_started(w)
    sup.loading(w)
    for _ in range(5):  # heartbeats go on, no progress
        clock.advance(11)
        sup.heard(w, 0)
    assert sup.decide(w, alive=True) is None  # 55 s: over the busy limit, within the load's
    sup.loaded(w)
    clock.advance(29)
    sup.heard(w, 0)
    assert sup.decide(w, alive=True) is None  # the busy limit counts from the load's end
    clock.advance(2)
    sup.heard(w, 0)
    verdict = sup.decide(w, alive=True)
    assert isinstance(verdict, Fail) and "no progress for 30 s" in verdict.message


def test_a_model_load_past_the_load_timeout_replaces_the_worker() -> None:
    clock, sup, w = started()
    sup.ready(w)
    sup.task_started(w)
    sup.loading(w)
    for _ in range(6):
        clock.advance(10.5)
        sup.heard(w, 0)
    verdict = sup.decide(w, alive=True)
    assert (
        isinstance(verdict, Fail) and verdict.code == "worker_timeout" and "load_timeout_s" in verdict.message
    )
    sup.killed(w)
    assert w.loading_since is None


def test_new_tasks_on_a_hung_worker_do_not_hide_the_hang() -> None:
    """An LLM worker with free slots hangs: each task dispatched to it restarted the
    no-progress clock, so it went unnoticed for slots x busy_timeout_s."""
    clock, sup, w = started()
    sup.ready(w)
    sup.task_started(w)
    clock.advance(25)
    sup.heard(w, progress_events=0)
    sup.task_started(w)  # another request, to the same hung worker
    clock.advance(10)
    sup.heard(w, progress_events=0)
    verdict = sup.decide(w, alive=True)
    assert isinstance(verdict, Fail) and verdict.code == "worker_timeout"
    # A task that ends is progress: the clock runs from there for the ones still running.
    clock, sup, w = started()
    sup.ready(w)
    sup.task_started(w)
    sup.task_started(w)
    clock.advance(25)
    sup.heard(w, progress_events=0)
    sup.task_ended(w)
    clock.advance(10)
    sup.heard(w, progress_events=0)
    assert sup.decide(w, alive=True) is None
