"""The body the web console polls (ris.api.console_state), from an engine on fake workers and
a fake clock: lane states through a crash, 429s, queue order, outcomes, and the windows in
which the image lane yielded to the LLM."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

from ris import messages as m
from ris.api.chart_history import StepRate
from ris.api.console_state import SAMPLE_WINDOW, chart_values, console_state
from ris.lanes import Lane
from ris.lanes.image import LANE as IMAGE
from ris.lanes.image import ImageRequest
from ris.lanes.llm import LANE as LLM
from ris.lanes.llm import LLMOutcome, LLMRequest, TextDelta
from ris.preemption.policy import Activity
from ris.runtime.engine import Engine
from ris.runtime.snapshot import TaskWindow
from ris.runtime.tenancy import ANONYMOUS
from ris.scheduler import QueueFull

from .fakes import IMAGE_ON, FakeClock, FakeWorkers, config, engine, run, started_engine

# Images sharing the LLM's core, pausing for its prefill ("auto" would be "none" on CPU at nice 19).
IMAGE_YIELDING = {**IMAGE_ON, "preemption": {"policy": "block"}}


@run
async def test_lane_states_follow_the_worker_through_a_crash(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        assert console_state(eng, ANONYMOUS)["lanes"]["llm"]["state"] == "starting"
        llm.ready()
        lane = console_state(eng, ANONYMOUS)["lanes"]["llm"]
        assert (lane["state"], lane["cores"], lane["uptime_s"]) == ("idle", [0], 0.0)
        eng.submit(LLM, "m", LLMRequest(prompt="a"))
        assert console_state(eng, ANONYMOUS)["lanes"]["llm"]["state"] == "busy"  # no activity board here
        llm.die()
        eng.check()
        assert console_state(eng, ANONYMOUS)["lanes"]["llm"]["state"] == "restarting"  # dead, restarting
        clock.advance(1.0)
        eng.check()
        lane = console_state(eng, ANONYMOUS)["lanes"]["llm"]
        assert (lane["state"], lane["worker"]["restarts"]) == ("restarting", 1)  # loading again
        llm.ready()
        assert console_state(eng, ANONYMOUS)["lanes"]["llm"]["state"] == "idle"
        assert console_state(eng, ANONYMOUS)["lanes"]["image"]["state"] == "disabled"


@run
async def test_tasks_are_listed_in_queue_order_with_outcomes_and_429s_counted(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready()
        running = eng.submit(LLM, "m", LLMRequest(prompt="a"))
        first = eng.submit(LLM, "m", LLMRequest(prompt="b"), priority=5)
        second = eng.submit(LLM, "m", LLMRequest(prompt="c"))
        with pytest.raises(QueueFull):
            eng.submit(LLM, "m", LLMRequest(prompt="d"))
        state = console_state(eng, ANONYMOUS)
        assert state["lanes"]["llm"]["rejected"] == 1
        tasks = state["tasks"]
        assert [(t["task_id"], t["queue_position"]) for t in tasks["queued"]] == [
            (first.task_id, 0),
            (second.task_id, 1),
        ]
        assert [t["task_id"] for t in tasks["running"]] == [running.task_id]
        assert tasks["queued_total"] == {"llm": 2, "tts": 0, "image": 0}
        with mock.patch("ris.api.console_state.WINDOW", TaskWindow(live_per_lane=1)):
            tasks = console_state(eng, ANONYMOUS)["tasks"]
        assert [t["task_id"] for t in tasks["queued"]] == [first.task_id]  # one listed ...
        assert tasks["queued_total"]["llm"] == 2  # ... of two: the page says one more waits
        llm.deliver(m.TaskError(running.task_id, "model_error", "it broke"))
        recent = console_state(eng, ANONYMOUS)["tasks"]["recent"]
        assert [(t["task_id"], t["state"], t["error"]["code"]) for t in recent] == [
            (running.task_id, "failed", "model_error")
        ]


def windows(eng: Engine, t0: float) -> list[tuple[str, float, float]]:
    """The yield windows, in seconds after t0, to the millisecond."""
    return [
        (w["lane"], round(w["start"] - t0, 3), round(w["end"] - t0, 3))
        for w in console_state(eng, ANONYMOUS)["yields"]
    ]


@run
async def test_the_image_lane_yields_during_llm_prefill_while_an_image_runs(tmp_path: Path) -> None:
    async with started_engine(tmp_path, image=IMAGE_YIELDING) as (eng, workers, clock):
        llm, img = workers[Lane.LLM], workers[Lane.IMAGE]
        llm.ready()
        img.ready()
        assert console_state(eng, ANONYMOUS)["lanes"]["image"]["yield_policy"] == "block"
        t0 = eng.wall_clock()
        alone = eng.submit(LLM, "m", LLMRequest(prompt="before any image"))
        clock.advance(0.2)
        llm.deliver(m.TaskOutput(alone.task_id, TextDelta("x")))
        llm.deliver(m.TaskDone(alone.task_id, LLMOutcome("stop", 1, 1)))
        eng.submit(IMAGE, "i", ImageRequest(prompt="p"))
        clock.advance(1.0)
        chat = eng.submit(LLM, "m", LLMRequest(prompt="while the image runs"))
        clock.advance(0.5)
        assert windows(eng, t0) == [("image", 1.2, 1.7)]  # prefill still going: up to now
        llm.deliver(m.TaskOutput(chat.task_id, TextDelta("y")))  # the first token: prefill ends
        clock.advance(2.0)
        llm.deliver(m.TaskDone(chat.task_id, LLMOutcome("stop", 1, 5)))
        assert windows(eng, t0) == [("image", 1.2, 1.7)]  # the first token ended it, not the task


def test_the_yield_policy_shown_is_the_one_in_force(tmp_path: Path) -> None:
    state = console_state(
        engine(config(tmp_path, image=IMAGE_YIELDING), FakeClock(), FakeWorkers()), ANONYMOUS
    )
    assert state["lanes"]["llm"]["yield_policy"] is None  # a real-time lane yields to nothing
    assert state["lanes"]["image"]["yield_policy"] == "block"
    state = console_state(engine(config(tmp_path, image=IMAGE_ON), FakeClock(), FakeWorkers()), ANONYMOUS)
    assert state["lanes"]["image"]["yield_policy"] == "none"  # auto: CPU at nice 19
    assert state["yields"] == []


@run
async def test_a_lane_with_replicas_serves_while_any_of_them_is_ready(tmp_path: Path) -> None:
    async with started_engine(tmp_path, tts={"replicas": 2}) as (eng, workers, clock):
        a, b = workers.replicas(Lane.TTS)
        b.ready()  # the second replica loads first
        lane = console_state(eng, ANONYMOUS)["lanes"]["tts"]
        assert (lane["state"], lane["uptime_s"]) == ("idle", 0.0)
        assert [w["state"] for w in lane["workers"]] == ["starting", "ready"]
        # The card's worker is the one serving (its CPU, memory, errors), not replica 0.
        assert lane["worker"] == lane["workers"][1]
        clock.advance(2.0)
        a.ready()
        a.die()
        eng.check()
        lane = console_state(eng, ANONYMOUS)["lanes"]["tts"]
        # One replica restarting, the other serving: the lane serves, up since b started.
        assert (lane["state"], lane["uptime_s"]) == ("idle", 2.0)


class BoardWorkers(FakeWorkers):
    """Fake workers whose pool keeps an activity board, as local processes and Ray do."""

    def __init__(self) -> None:
        super().__init__()
        self.board: dict[str, Activity] = {}

    def activity(self, lane: str) -> Activity | None:
        return self.board.get(lane, Activity.IDLE)


@run
async def test_the_lane_states_show_what_the_pool_reads_on_the_activity_board(tmp_path: Path) -> None:
    clock, workers = FakeClock(), BoardWorkers()
    eng = engine(config(tmp_path, image=IMAGE_YIELDING), clock, workers)
    await eng.start()
    try:
        workers[Lane.LLM].ready()
        workers[Lane.IMAGE].ready()
        eng.submit(IMAGE, "i", ImageRequest(prompt="p"))
        workers.board[Lane.LLM] = Activity.PREFILL
        lanes = console_state(eng, ANONYMOUS)["lanes"]
        assert (lanes["llm"]["state"], lanes["image"]["state"]) == ("prefill", "yielding")
        workers.board[Lane.LLM] = Activity.IDLE
        lanes = console_state(eng, ANONYMOUS)["lanes"]
        assert (lanes["llm"]["state"], lanes["image"]["state"]) == ("idle", "busy")
    finally:
        await eng.stop()


@run
async def test_a_chart_sample_has_every_lanes_series_and_the_image_step_rate(tmp_path: Path) -> None:
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, clock):
        workers[Lane.LLM].ready()
        workers[Lane.IMAGE].ready()
        steps = StepRate()
        first = chart_values(eng.snapshot(SAMPLE_WINDOW), eng.config, steps, [12.5, None])
        assert set(first) == {
            f"{lane}.{chart}" for lane in ("llm", "tts", "image") for chart in ("latency", "throughput")
        } | {"cpu"}
        assert first["image.throughput"] == [None]  # no earlier sample to compare with
        assert first["cpu"] == [12.5, None] and first["llm.latency"] == [None, None]
        task = eng.submit(IMAGE, "i", ImageRequest(prompt="p"))
        workers[Lane.IMAGE].deliver(m.TaskProgress(task.task_id, 3, 10))
        clock.advance(5.0)
        assert chart_values(eng.snapshot(SAMPLE_WINDOW), eng.config, steps, [])["image.throughput"] == [3 / 5]
        workers[Lane.IMAGE].deliver(m.TaskProgress(task.task_id, 8, 10))
        clock.advance(2.0)
        assert chart_values(eng.snapshot(SAMPLE_WINDOW), eng.config, steps, [])["image.throughput"] == [5 / 2]


@run
async def test_a_users_console_shows_everyones_image_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page computed steps/s from the task lists, which hold a user's own tasks only: a
    lane busy with an admin's images read 0 steps/s to every user."""
    from ris.api import console_state as module
    from ris.runtime.tenancy import Principal

    now = [0.0]
    monkeypatch.setattr(module, "LIVE_STEPS", module.live_steps(window_s=1.0, clock=lambda: now[0]))
    bob = Principal(owner="bob", admin=False)
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, clock):
        img = workers[Lane.IMAGE]
        img.ready()
        task = eng.submit(IMAGE, "i", ImageRequest(prompt="the admin's"), owner="admin")
        img.deliver(m.TaskProgress(task.task_id, 1, 10))
        console_state(eng, bob)  # the first look: nothing to compare with yet
        clock.advance(2.0)
        now[0] = 2.0
        img.deliver(m.TaskProgress(task.task_id, 5, 10))
        state = console_state(eng, bob)
        assert state["tasks"]["running"] == []  # bob's lists: his own, none
        assert state["lanes"]["image"]["steps_per_s"] == pytest.approx(2.0)  # 4 steps in 2 s
