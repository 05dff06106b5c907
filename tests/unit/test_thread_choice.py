"""The LLM batch's thread count per step: the lane's or one, whichever is faster now."""

from __future__ import annotations

from ris.backends.thread_choice import FIRST_PROBE, MAX_INTERVAL, PROBE_STEPS, ThreadChoice


def run(choice: ThreadChoice, steps: int, seconds: dict[int, float], tokens: int = 1) -> list[int]:
    """`steps` steps whose duration on each thread count is given; the counts used."""
    used = []
    for _ in range(steps):
        n = choice.next()
        choice.record(n, tokens, seconds[n])
        used.append(n)
    return used


def test_one_thread_lane_never_probes() -> None:
    choice = ThreadChoice(1)
    assert set(run(choice, 100, {1: 0.01})) == {1}


def test_the_lanes_threads_are_kept_while_they_are_faster() -> None:
    choice = ThreadChoice(2)
    used = run(choice, 2000, {2: 0.008, 1: 0.010})
    assert choice.current == 2 and choice.switches == 0
    # Probes of one thread: a couple of steps, ever rarer.
    assert used[:FIRST_PROBE] == [2] * FIRST_PROBE
    assert used[FIRST_PROBE : FIRST_PROBE + PROBE_STEPS] == [1] * PROBE_STEPS
    assert used.count(1) <= 6 * PROBE_STEPS


def test_a_busy_machine_falls_back_to_one_thread_and_comes_back_once_it_is_quiet() -> None:
    choice = ThreadChoice(2)
    used = run(choice, FIRST_PROBE + PROBE_STEPS, {2: 0.7, 1: 0.05})
    assert choice.current == 1 and choice.switches == 1
    assert used.count(2) == FIRST_PROBE  # the slow count ran only until the first probe
    run(choice, 3 * MAX_INTERVAL, {2: 0.7, 1: 0.05})
    assert choice.current == 1
    run(choice, 2 * MAX_INTERVAL + 2 * PROBE_STEPS, {2: 0.008, 1: 0.010})
    assert choice.current == 2


def test_steps_of_other_sizes_are_not_compared() -> None:
    choice = ThreadChoice(2)
    run(choice, FIRST_PROBE, {2: 0.01, 1: 0.01}, tokens=1)
    # The probe's steps carry a prompt chunk: nothing on two threads to compare them with.
    run(choice, PROBE_STEPS, {2: 0.5, 1: 0.05}, tokens=33)
    assert choice.current == 2
