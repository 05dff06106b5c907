"""The engine's view of models that load and unload while a worker serves: what /api/models
and /api/stats read, the counters /metrics exposes, the keep_alive a task carries to its
worker, and the load time its ETA includes. Fake workers and a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from ris import messages as m
from ris.lanes import Lane
from ris.lanes.llm import LANE as LLM
from ris.lanes.llm import LLMOutcome, LLMRequest
from ris.memory.residency import expiry

from .fakes import run, started_engine


def _info(name: str, load_s: float) -> m.ModelInfo:
    return m.ModelInfo(name, "llama_cpp", footprint_bytes=100, load_s=load_s)


@run
async def test_loads_and_unloads_are_tracked_counted_and_listed(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready(models=(_info("m", 1.5),))
        assert set(eng.model_infos("llm")) == {"m"}
        llm.deliver(m.ModelUnloaded("m", "evicted"))
        llm.deliver(m.ModelLoaded(_info("other", 2.5)))
        assert set(eng.model_infos("llm")) == {"other"}
        log = eng.model_log()
        assert log.last_load_s == {("llm", "m"): 1.5, ("llm", "other"): 2.5}
        # the preload at start is no event of its own; the load on use and the eviction are
        assert [(e.model, e.event) for e in log.recent] == [("m", "evicted"), ("other", "loaded")]
        assert log.lane_counts("llm") == {"loads": 1, "evictions": 1, "expiries": 0}
        snap = eng.snapshot()
        assert snap.models.unloads == {("llm", "m", "evicted"): 1}
        assert snap.lane("llm").workers[0].models == ("other",)


@run
async def test_a_task_whose_model_is_not_loaded_has_its_load_in_its_eta(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready(models=(_info("m", 4.0),))
        warm = eng.submit(LLM, "m", LLMRequest(prompt="a"))
        llm.deliver(m.TaskDone(warm.task_id, LLMOutcome("stop", 1, 0)))
        loaded_eta = eng.lookup(eng.submit(LLM, "m", LLMRequest(prompt="b")).task_id).eta_s  # type: ignore[union-attr]
        llm.deliver(m.ModelUnloaded("m", "expired"))
        cold = eng.submit(LLM, "m", LLMRequest(prompt="c"), keep_alive_s=0)
        cold_eta = eng.lookup(cold.task_id).eta_s  # type: ignore[union-attr]
        assert loaded_eta is not None and cold_eta is not None
        # queued behind b, and the 4 s its model's last load took (the scheduler's arithmetic is
        # test_scheduler's)
        assert cold_eta >= 4.0 > loaded_eta
        runs = [r for r in llm.inbox if isinstance(r, m.RunTask)]
        assert runs[0].keep_alive_s is None  # the lane's keep_alive
        assert all(r.streamed for r in runs)  # unless the caller says it reads only the result
        llm.deliver(m.TaskDone(runs[-1].task_id, LLMOutcome("stop", 1, 0)))
        last = [r for r in llm.inbox if isinstance(r, m.RunTask)][-1]
        assert last.task_id == cold.task_id and last.keep_alive_s == 0


@run
async def test_a_caller_that_reads_only_the_result_says_so_to_the_worker(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready(models=(_info("m", 1.0),))
        handle = eng.submit(LLM, "m", LLMRequest(prompt="a"), streamed=False)
        (run_task,) = [r for r in llm.inbox if isinstance(r, m.RunTask)]
        assert run_task.task_id == handle.task_id and not run_task.streamed


@run
async def test_a_task_held_for_a_switch_says_so_and_counts_the_drain_then_the_load(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready(slots=3, models=(_info("a", 1.0),))
        llm.deliver(m.ModelUnloaded("a", "evicted"))
        llm.deliver(m.ModelLoaded(_info("b", 6.0)))  # b's load is known to take 6 s
        llm.deliver(m.ModelUnloaded("b", "evicted"))
        llm.deliver(m.ModelLoaded(_info("a", 1.0)))
        first = eng.submit(LLM, "a", LLMRequest(prompt="long"))
        switch = eng.submit(LLM, "b", LLMRequest(prompt="x"))
        later = eng.submit(LLM, "a", LLMRequest(prompt="y"))
        assert [r.task_id for r in llm.runs] == [first.task_id, switch.task_id, later.task_id]

        def view(handle: object) -> object:
            found = eng.lookup(handle.task_id)  # type: ignore[attr-defined]
            assert found is not None
            return found

        # Until the worker says otherwise, all three simply run.
        assert [view(h).waiting_for for h in (first, switch, later)] == [None, None, None]  # type: ignore[attr-defined]
        # The worker holds the switch until a drains, and `later` (model a) behind it, in order.
        llm.deliver(m.ModelsHeld("b", (switch.task_id, later.task_id), blocked_by=("a",)))
        held = view(switch)
        assert (held.state, held.waiting_for) == ("running", "model_load")  # type: ignore[attr-defined]
        assert view(later).waiting_for == "model_load"  # type: ignore[attr-defined]
        assert view(first).waiting_for is None  # type: ignore[attr-defined]
        clock.advance(3.0)
        first_left = view(first).eta_s  # type: ignore[attr-defined]
        # first's remaining time, then b's 6 s load, then its run; `later`, held itself, is not
        # what it waits for: counted, it would add its own time
        est = eng._scheduler._book("llm").runs.estimate(1.0)  # noqa: SLF001 - the lane's run estimate
        assert view(switch).eta_s == pytest.approx(first_left + 6.0 + est)  # type: ignore[attr-defined]
        llm.deliver(m.TaskDone(first.task_id, LLMOutcome("stop", 1, 0)))  # drained
        est = eng._scheduler._book("llm").runs.estimate(1.0)  # noqa: SLF001 - first's 3 s moved it
        assert view(switch).eta_s == pytest.approx(6.0 + est)  # type: ignore[attr-defined]
        assert view(later).waiting_for_model == "b"  # type: ignore[attr-defined]  # a's own is loaded
        llm.deliver(m.ModelLoading("b"))  # the worker begins the load
        clock.advance(2.0)
        assert view(switch).waiting_for == "model_load"  # type: ignore[attr-defined]
        assert view(switch).eta_s == pytest.approx(4.0 + est)  # type: ignore[attr-defined]
        # `later`, still held behind it, counts down the same load
        assert (view(later).waiting_for_model, view(later).eta_s) == ("b", pytest.approx(4.0 + est))  # type: ignore[attr-defined]
        clock.advance(30.0)  # a slow load: its run still ahead, never 0
        assert view(switch).eta_s == pytest.approx(est) and est > 0  # type: ignore[attr-defined]
        llm.deliver(m.ModelLoaded(_info("b", 36.0)))
        llm.deliver(m.ModelsHeld("", (), ()))  # the switch admitted; `later` too (b and a fit)
        assert view(switch).waiting_for is None and view(later).waiting_for is None  # type: ignore[attr-defined]
        # Their own runs begin now: 41 s of waiting are not run time (the ETA would be 0).
        assert view(switch).eta_s == pytest.approx(est) and view(later).eta_s == pytest.approx(est)  # type: ignore[attr-defined]
        clock.advance(0.25 * est)
        assert view(switch).eta_s == pytest.approx(0.75 * est)  # type: ignore[attr-defined]


@run
async def test_a_task_whose_own_model_loaded_runs_from_the_load_on(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready(slots=1, models=(_info("a", 1.0),))
        llm.deliver(m.ModelUnloaded("a", "evicted"))  # a's last load took 1 s
        task = eng.submit(LLM, "a", LLMRequest(prompt="x"))
        est = eng._scheduler._book("llm").runs.estimate(1.0)  # noqa: SLF001 - the lane's run estimate
        llm.deliver(m.ModelLoading("a"))
        clock.advance(20.0)  # a load far slower than the last
        llm.deliver(m.ModelLoaded(_info("a", 20.0)))
        view = eng.lookup(task.task_id)
        assert view is not None and view.waiting_for is None
        assert view.eta_s == pytest.approx(est)  # its whole run ahead, the 20 s behind it
        clock.advance(0.5 * est)
        assert eng.lookup(task.task_id).eta_s == pytest.approx(0.5 * est)  # type: ignore[union-attr]


@run
async def test_a_failed_load_or_a_restarted_worker_leaves_no_task_waiting(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready(slots=2, models=(_info("a", 1.0),))
        one = eng.submit(LLM, "b", LLMRequest(prompt="x"))
        two = eng.submit(LLM, "b", LLMRequest(prompt="y"))
        llm.deliver(m.ModelLoading("b"))
        assert eng.lookup(one.task_id).waiting_for == "model_load"  # type: ignore[union-attr]
        llm.deliver(m.TaskError(one.task_id, "model_load_failed", "no such file"))
        assert eng.lookup(two.task_id).waiting_for is None  # type: ignore[union-attr]
        three = eng.submit(LLM, "b", LLMRequest(prompt="z"))
        # The worker loads b again, for `three`, which is cancelled meanwhile: the failed load
        # ends it as cancelled, and nothing is loading any more.
        llm.deliver(m.ModelLoading("b"))
        llm.deliver(m.TaskCancelled(three.task_id))
        assert eng.lookup(two.task_id).waiting_for is None  # type: ignore[union-attr]
        llm.deliver(m.ModelsHeld("b", (two.task_id,), blocked_by=("a",)))
        assert eng.lookup(two.task_id).waiting_for == "model_load"  # type: ignore[union-attr]
        llm.ready(slots=2, models=(_info("a", 1.0),))  # a fresh worker: it holds nothing
        assert eng.lookup(two.task_id).waiting_for is None  # type: ignore[union-attr]


@run
async def test_a_worker_that_says_it_exits_gets_no_more_work_until_a_fresh_one(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready(slots=1, models=(_info("a", 1.0),))
        first = eng.submit(LLM, "a", LLMRequest(prompt="x"))
        second = eng.submit(LLM, "a", LLMRequest(prompt="y"))  # queued behind it
        assert [r.task_id for r in llm.runs] == [first.task_id]
        # A broken batch: the worker says it goes, then fails its task, then exits.
        llm.deliver(m.WorkerExiting("backend_error"))
        llm.deliver(m.TaskError(first.task_id, "backend_error", "RuntimeError: broken"))
        # The freed slot is not filled on a worker about to go: the next task waits.
        assert [r.task_id for r in llm.runs] == [first.task_id]
        assert eng.lookup(second.task_id).state == "queued"  # type: ignore[union-attr]
        llm.ready(slots=1, models=(_info("a", 1.0),))  # its successor
        assert [r.task_id for r in llm.runs] == [first.task_id, second.task_id]


@run
async def test_a_load_on_first_use_has_the_load_timeout_not_the_busy_one(tmp_path: Path) -> None:
    """The fake config: busy_timeout_s 20, load_timeout_s 60. A load after the start sends
    heartbeats and no progress; at 30 s it was killed as hung, and the next request's load too."""
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready(models=(_info("m", 1.0),))
        llm.deliver(m.ModelUnloaded("m", "expired"))
        task = eng.submit(LLM, "m", LLMRequest(prompt="x"))
        llm.deliver(m.ModelLoading("m"))
        for _ in range(10):  # 40 s of a slow load
            clock.advance(4.0)
            llm.deliver(m.Heartbeat(progress_events=0))
            eng.check()
        assert llm.kills == 0 and eng.lookup(task.task_id).state == "running"  # type: ignore[union-attr]
        llm.deliver(m.ModelLoaded(_info("m", 40.0)))
        llm.deliver(m.TaskDone(task.task_id, LLMOutcome("stop", 1, 0)))
        assert (await task.done).state == "succeeded"
        slow = eng.submit(LLM, "m", LLMRequest(prompt="y"))
        llm.deliver(m.ModelUnloaded("m", "expired"))
        llm.deliver(m.ModelLoading("m"))
        for _ in range(16):  # past the 60 s a load may take
            clock.advance(4.0)
            llm.deliver(m.Heartbeat(progress_events=0))
            eng.check()
        failed = await slow.done
        assert (failed.state, failed.error_code) == ("failed", "worker_timeout") and llm.kills == 1
        assert failed.error_message is not None and "load_timeout_s" in failed.error_message


@run
async def test_a_finished_tasks_keep_alive_is_the_models_expiry_before_the_worker_says_it(
    tmp_path: Path,
) -> None:
    """/api/ps asked the moment a `keep_alive: 0` answer came said "kept for ever": the
    worker tells the expiry (m.ModelExpiry) only after the task's end."""
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready(models=(_info("m", 1.0),))
        first = eng.submit(LLM, "m", LLMRequest(prompt="a"), keep_alive_s=0)
        second = eng.submit(LLM, "m", LLMRequest(prompt="b"), keep_alive_s=30)
        llm.deliver(m.TaskDone(first.task_id, LLMOutcome("stop", 1, 0)))
        # b still runs on it: the lane's keep_alive, from now
        assert eng.model_expiries("llm")["m"] == expiry(0.0, eng.config.lane("llm").keep_alive_s)
        llm.deliver(m.TaskDone(second.task_id, LLMOutcome("stop", 1, 0)))
        assert eng.model_expiries("llm") == {"m": pytest.approx(30.0)}  # the last task's own
        clock.advance(10.0)
        assert eng.model_expiries("llm") == {"m": pytest.approx(20.0)}
        llm.deliver(m.ModelExpiry("m", 25.0))  # the worker's word wins
        assert eng.model_expiries("llm") == {"m": pytest.approx(25.0)}
        forever = eng.submit(LLM, "m", LLMRequest(prompt="c"), keep_alive_s=-1)
        llm.deliver(m.TaskDone(forever.task_id, LLMOutcome("stop", 1, 0)))
        assert eng.model_expiries("llm") == {"m": None}
        gone = eng.submit(LLM, "m", LLMRequest(prompt="d"), keep_alive_s=0)
        llm.deliver(m.TaskDone(gone.task_id, LLMOutcome("stop", 1, 0)))
        assert eng.model_expiries("llm") == {"m": 0.0}
        # A keep_alive asked for while a task runs (an Ollama client pinning the model) is the
        # one its end takes, as the worker's; a task started after it takes it away.
        chat = eng.submit(LLM, "m", LLMRequest(prompt="e"), keep_alive_s=60)
        eng.keep_model("llm", "m", -1)
        llm.deliver(m.TaskDone(chat.task_id, LLMOutcome("stop", 1, 0)))
        assert eng.model_expiries("llm") == {"m": None}
        first = eng.submit(LLM, "m", LLMRequest(prompt="f"), keep_alive_s=60)
        eng.keep_model("llm", "m", -1)
        llm.deliver(m.TaskDone(first.task_id, LLMOutcome("stop", 1, 0)))
        later = eng.submit(LLM, "m", LLMRequest(prompt="g"), keep_alive_s=60)
        eng.keep_model("llm", "m", -1)
        after = eng.submit(LLM, "m", LLMRequest(prompt="h"), keep_alive_s=45)  # queued: slot 1
        llm.deliver(m.TaskDone(later.task_id, LLMOutcome("stop", 1, 0)))
        llm.deliver(m.TaskDone(after.task_id, LLMOutcome("stop", 1, 0)))
        assert eng.model_expiries("llm") == {"m": pytest.approx(45.0)}


@run
async def test_the_latest_requests_keep_alive_is_the_models_expiry_whichever_ends_last(
    tmp_path: Path,
) -> None:
    """As the worker's (residency.started) and Ollama's: a "-1" request and a "3s" one that
    came after it and ended first: the model goes 3 s after the long one's end."""
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready(slots=2, models=(_info("m", 1.0),))
        long = eng.submit(LLM, "m", LLMRequest(prompt="a"), keep_alive_s=-1)
        short = eng.submit(LLM, "m", LLMRequest(prompt="b"), keep_alive_s=3)
        llm.deliver(m.TaskDone(short.task_id, LLMOutcome("stop", 1, 0)))
        llm.deliver(m.TaskDone(long.task_id, LLMOutcome("stop", 1, 0)))
        assert eng.model_expiries("llm") == {"m": pytest.approx(3.0)}
