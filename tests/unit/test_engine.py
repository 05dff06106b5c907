"""The whole engine with fake workers and a fake clock: admission, dispatch, results, crash,
hang, restart, deadlines and durable recovery, with no process, pipe or socket."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from ris import messages as m
from ris.api.errors import no_result, task_error
from ris.config import RetentionConfig
from ris.failures import failure_status
from ris.lanes import Lane
from ris.lanes.image import LANE as IMAGE
from ris.lanes.image import GeneratedImage, ImageOutcome, ImageRequest, ImageResult
from ris.lanes.llm import LANE as LLM
from ris.lanes.llm import LLMOutcome, LLMRequest, LLMResult, TextDelta
from ris.lanes.tts import LANE as TTS
from ris.lanes.tts import TTSOutcome, TTSRequest, TTSResult
from ris.lanes.tts_audio import AudioChunk, AudioWritten
from ris.runtime.engine import Engine, LaneUnavailable, NotRecorded
from ris.runtime.retention import Retention
from ris.runtime.store import StoredTask
from ris.runtime.supervisor import backoff
from ris.runtime.tenancy import ANONYMOUS
from ris.runtime.views import TaskHandle, TaskView
from ris.scheduler import CancelOutcome, QueueFull

from .fakes import (
    IMAGE_ON,
    TWO_CORES,
    FakeClock,
    FakeWorker,
    FakeWorkers,
    config,
    engine,
    run,
    settle,
    started_engine,
)

PNG = b"\x89PNG\r\n\x1a\nfake"


def one_task(eng: Engine, workers: FakeWorkers) -> tuple[FakeWorker, TaskHandle[LLMResult]]:
    """The LLM worker made ready and one task running on it."""
    llm = workers[Lane.LLM]
    llm.ready()
    return llm, eng.submit(LLM, "m", LLMRequest(prompt="a"))


def two_tasks(
    eng: Engine, workers: FakeWorkers
) -> tuple[FakeWorker, TaskHandle[LLMResult], TaskHandle[LLMResult]]:
    """The LLM worker made ready, one task running on it and one queued behind."""
    llm, running = one_task(eng, workers)
    return llm, running, eng.submit(LLM, "m", LLMRequest(prompt="b"))


def heartbeat_after(seconds: float, eng: Engine, clock: FakeClock, worker: FakeWorker, progress: int) -> None:
    """`seconds` pass, the worker says it is alive (with its progress count so far), and the
    engine makes its periodic check."""
    clock.advance(seconds)
    worker.deliver(m.Heartbeat(progress_events=progress))
    eng.check()


@run
async def test_tasks_wait_for_a_ready_worker_then_run_one_per_slot(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        a = eng.submit(LLM, "m", LLMRequest(prompt="a"))
        b = eng.submit(LLM, "m", LLMRequest(prompt="b"))
        llm = workers[Lane.LLM]
        assert llm.runs == []  # still loading
        llm.ready()
        assert [r.task_id for r in llm.runs] == [a.task_id]
        assert eng.lookup(b.task_id).queue_position == 0  # type: ignore[union-attr]
        llm.deliver(m.TaskDone(a.task_id, LLMOutcome("stop", 1, 0)))
        assert [r.task_id for r in llm.runs] == [a.task_id, b.task_id]


@run
async def test_a_worker_with_two_slots_runs_two_tasks_at_once(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        workers[Lane.LLM].ready(slots=2)
        ids = [eng.submit(LLM, "m", LLMRequest(prompt=str(i))).task_id for i in range(3)]
        assert [r.task_id for r in workers[Lane.LLM].runs] == ids[:2]
        assert eng.snapshot().lane(Lane.LLM).workers[0].running == 2


@run
async def test_outputs_stream_and_become_a_typed_result_with_timings(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        workers[Lane.LLM].ready()
        handle = eng.submit(LLM, "m", LLMRequest(prompt="hi"))
        clock.advance(0.2)
        for piece in ("Hel", "lo"):
            workers[Lane.LLM].deliver(m.TaskOutput(handle.task_id, TextDelta(piece)))
            clock.advance(0.1)
        workers[Lane.LLM].deliver(m.TaskDone(handle.task_id, LLMOutcome("stop", 2, 2)))
        streamed = [handle.events.get_nowait() for _ in range(3)]
        assert [e.text for e in streamed[:2]] == ["Hel", "lo"] and streamed[2] is None
        view = await handle.done
        assert view.state == "succeeded" and isinstance(view.result, LLMResult)
        r = view.result
        assert (r.text, r.finish_reason, r.completion_tokens) == ("Hello", "stop", 2)
        assert r.timings.queue_ms == pytest.approx(0) and r.timings.first_output_ms == pytest.approx(200)
        assert r.timings.total_ms == pytest.approx(400)


@run
async def test_admission_refuses_with_reasons(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        for i in range(2):  # max_queue 2, worker not ready: both wait
            eng.submit(LLM, "m", LLMRequest(prompt=str(i)))
        with pytest.raises(QueueFull) as full:
            eng.submit(LLM, "m", LLMRequest(prompt="3"))
        assert full.value.retry_after_s >= 1
        with pytest.raises(LaneUnavailable, match="image lane is disabled"):
            eng.submit(IMAGE, "x", ImageRequest(prompt="x"))
        with pytest.raises(TypeError, match="takes LLMRequest"):
            eng.submit(LLM, "m", ImageRequest(prompt="x"))  # type: ignore[misc]


@run
async def test_a_batch_is_queued_whole_or_not_at_all(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready()
        eng.submit(LLM, "m", LLMRequest(prompt="busy"))  # runs; max_queue 2 left
        with pytest.raises(QueueFull, match="not the 3 asked for together"):
            eng.submit_many(LLM, "m", [LLMRequest(prompt=str(i)) for i in range(3)])
        assert len(eng.tasks(Lane.LLM, viewer=ANONYMOUS)) == 1  # none of the three was admitted
        batch = eng.submit_many(LLM, "m", [LLMRequest(prompt=str(i)) for i in range(2)])
        assert [eng.lookup(h.task_id).state for h in batch] == ["queued", "queued"]  # type: ignore[union-attr]


@run
async def test_a_batch_member_that_cannot_be_admitted_takes_the_others_back(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        workers[Lane.LLM].ready()
        assert eng.durable is not None
        accepted = eng.durable.accepted
        calls = 0

        def disk_full_on_the_second(*args: Any, **kwargs: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            accepted(*args, **kwargs)

        eng.durable.accepted = disk_full_on_the_second  # type: ignore[method-assign]
        with pytest.raises(NotRecorded) as refused:  # 507 storage_full, not a 500
            eng.submit_many(LLM, "m", [LLMRequest(prompt=str(i)) for i in range(2)])
        assert refused.value.code == "storage_full" and "nothing was queued" in str(refused.value)
        first = workers[Lane.LLM].runs[0].task_id  # it had started at once: it is stopped again
        assert workers[Lane.LLM].cancels == [first]
        assert eng.snapshot().lane(Lane.LLM).stats.queued == 0
        # The one never recorded left no trace: its client never had its id.
        assert [t.id for t in eng.tasks(Lane.LLM, viewer=ANONYMOUS)] == [first]
        assert eng.snapshot().lane(Lane.LLM).stats.cancelled == 0  # the first's cancel is pending


@run
async def test_a_cancel_the_full_disk_holds_is_not_told_as_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flushed() counts a write held for want of room as done: a cancel answered "cancelled"
    on a full disk, and the task ran after a restart (an operator's run). Now 507: in effect,
    and not kept."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, _, _):
        picture = eng.submit(IMAGE, "i", ImageRequest(prompt="a"))
        assert eng.durable is not None
        monkeypatch.setattr(type(eng.durable.store), "held_writes", property(lambda _: 1))
        with pytest.raises(NotRecorded) as refused:
            await eng.cancel_recorded(picture.task_id)
        assert refused.value.code == "storage_full"
        assert "the cancel is in effect now, but a restart before there is room" in str(refused.value)
        assert eng.lookup(picture.task_id).state == "cancelled"  # type: ignore[union-attr]


@run
async def test_a_crash_fails_the_running_task_and_the_worker_restarts_after_a_backoff(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm, running, queued = two_tasks(eng, workers)
        llm.die()
        eng.check()
        view = await running.done
        assert (view.state, view.error_code) == ("failed", "worker_crashed")
        assert eng.ready() == {"llm": False, "tts": False}
        assert eng.lookup(queued.task_id).state == "queued"  # type: ignore[union-attr]  # waits, not lost
        clock.advance(backoff(0) - 0.01)
        eng.check()
        assert llm.starts == 1
        clock.advance(0.02)
        eng.check()
        assert llm.starts == 2 and eng.snapshot().lane(Lane.LLM).workers[0].restarts == 1
        llm.ready()
        assert llm.runs[-1].task_id == queued.task_id  # the queued task runs on the new worker


@run
async def test_a_task_queued_while_its_worker_restarts_says_so_and_counts_the_start(tmp_path: Path) -> None:
    """Queued behind a restarting worker, a task's ETA stood still for the whole start and
    waiting_for said nothing (the image lane's worker starts in 20-45 s)."""
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        first = eng.submit(LLM, "m", LLMRequest(prompt="a"))
        assert eng.lookup(first.task_id).waiting_for == "worker_start"  # type: ignore[union-attr]
        clock.advance(8.0)  # the first start takes 8 s
        llm.ready()
        assert eng.lookup(first.task_id).waiting_for is None  # type: ignore[union-attr]  # running
        queued = eng.submit(LLM, "m", LLMRequest(prompt="b"))
        settled = eng.lookup(queued.task_id)
        assert settled is not None and settled.waiting_for is None and settled.eta_s is not None
        llm.die()
        eng.check()  # the crash: a back-off, then a start expected to take 8 s
        view = eng.lookup(queued.task_id)
        assert view is not None and view.state == "queued" and view.waiting_for == "worker_start"
        assert view.eta_s is not None and view.eta_s >= 8.0 + backoff(0)
        clock.advance(backoff(0))
        eng.check()  # restarted
        clock.advance(5.0)
        later = eng.lookup(queued.task_id)
        assert later is not None and later.eta_s is not None
        assert later.eta_s == pytest.approx(view.eta_s - backoff(0) - 5.0, abs=0.01)  # counts down
        llm.ready()
        assert eng.lookup(queued.task_id).waiting_for is None  # type: ignore[union-attr]


@run
async def test_after_a_restart_a_waiting_tasks_eta_counts_down_the_start_the_last_one_took(
    tmp_path: Path,
) -> None:
    """After a server restart the resumed images' ETAs stood still for the whole first start
    (a minute for the image worker): this server had seen no start to go by."""
    async with started_engine(tmp_path) as (eng, workers, clock):
        clock.advance(8.0)
        workers[Lane.LLM].ready()
        assert eng.durable is not None
        eng.durable.store.flush()
    async with started_engine(tmp_path) as (eng, workers, clock):
        queued = eng.submit(LLM, "m", LLMRequest(prompt="a"))
        first = eng.lookup(queued.task_id)
        assert first is not None and first.waiting_for == "worker_start"
        assert first.eta_s is not None and first.eta_s >= 8.0
        clock.advance(5.0)
        later = eng.lookup(queued.task_id)
        assert later is not None and later.eta_s == pytest.approx(first.eta_s - 5.0, abs=0.01)


@run
async def test_a_worker_over_its_memory_ceiling_fails_its_task_and_is_replaced(tmp_path: Path) -> None:
    async with started_engine(tmp_path, llm={"memory_limit_mb": 100}) as (eng, workers, clock):
        llm, running, queued = two_tasks(eng, workers)
        assert llm.spec.binding.memory_limit_bytes == 100 * 2**20  # the OS backstop is told too
        llm.rss = 90 * 2**20
        eng.check()
        assert llm.kills == 0
        llm.rss = 150 * 2**20
        eng.check()
        view = await running.done
        assert (view.state, view.error_code) == ("failed", "worker_out_of_memory")
        assert llm.kills == 1 and eng.lookup(queued.task_id).state == "queued"  # type: ignore[union-attr]
        clock.advance(backoff(0))
        eng.check()
        llm.ready()
        assert llm.runs[-1].task_id == queued.task_id


@run
async def test_a_worker_killed_before_it_was_ready_is_a_failed_start_said_until_one_succeeds(
    tmp_path: Path,
) -> None:
    """Over its ceiling while it loads, restarted in a loop: /api/stats said "dead" with no
    error and a voice's request "still starting"."""
    async with started_engine(tmp_path, tts={"memory_limit_mb": 100}) as (eng, workers, clock):
        tts = workers[Lane.TTS]
        tts.rss = 150 * 2**20
        eng.check()
        assert tts.kills == 1
        (status,) = eng.snapshot().lane(Lane.TTS).workers
        assert status.error is not None and "over its ceiling of 100 MiB" in status.error, status
        assert eng.start_failure(Lane.TTS) == status.error
        clock.advance(backoff(0))
        eng.check()
        tts.rss = 50 * 2**20
        tts.ready()
        assert eng.start_failure(Lane.TTS) is None
        assert eng.snapshot().lane(Lane.TTS).workers[0].error is None


def test_the_default_memory_ceiling_is_the_lane_kinds_share_of_the_machine(tmp_path: Path) -> None:
    eng = engine(
        config(tmp_path, tts={"memory_limit_mb": None}, llm={"memory_limit_mb": 0}),
        FakeClock(),
        FakeWorkers(),
    )
    machine = TWO_CORES.memory_bytes
    assert eng.worker_spec("tts").binding.memory_limit_bytes == int(machine * 0.25)
    assert eng.worker_spec("llm").binding.memory_limit_bytes is None  # 0: no ceiling


@run
async def test_a_silent_worker_is_declared_hung_and_replaced(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm, handle = one_task(eng, workers)
        for _ in range(4):  # heartbeats keep it alive (timeout 5 s)
            heartbeat_after(2.0, eng, clock, llm, progress=0)
        assert llm.kills == 0
        clock.advance(5.5)
        eng.check()
        assert llm.kills == 1
        view = await handle.done
        assert view.error_code == "worker_timeout" and "stopped answering for 5 s" in (
            view.error_message or ""
        )


@run
async def test_a_busy_worker_without_progress_is_replaced_and_progress_keeps_it(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm, handle = one_task(eng, workers)
        for events in range(1, 6):  # 30 s of work, making progress (busy timeout 20 s)
            heartbeat_after(6.0, eng, clock, llm, progress=events)
        assert llm.kills == 0
        for _ in range(4):  # alive (heartbeats) but stuck: no progress for 24 s
            heartbeat_after(6.0, eng, clock, llm, progress=5)
        assert llm.kills == 1
        view = await handle.done
        assert view.error_code == "worker_timeout" and "no progress for 20 s" in (view.error_message or "")


@run
async def test_a_worker_its_cluster_has_not_placed_is_pending_and_refuses_work(tmp_path: Path) -> None:
    """A Ray actor no node has room for: said in the snapshot and /ready, and a request is
    refused (lane_pending) rather than queued behind a placement that may never come."""
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.waiting = "it asks for {CPU: 2}, free in the cluster now: {CPU: 1}"
        with pytest.raises(LaneUnavailable, match=r"llm lane cannot serve yet: it asks for \{CPU: 2\}") as e:
            eng.submit(LLM, "m", LLMRequest(prompt="a"))
        assert e.value.code == "lane_pending"
        (status,) = next(s for s in eng.snapshot().lanes if s.lane == Lane.LLM).workers
        assert status.state == "pending" and status.error == llm.waiting
        assert eng.pending() == {"llm": llm.waiting} and not eng.ready()["llm"]
        llm.waiting = None  # placed
        llm.ready()
        assert eng.pending() == {}
        assert next(s for s in eng.snapshot().lanes if s.lane == Lane.LLM).workers[0].state == "ready"
        eng.submit(LLM, "m", LLMRequest(prompt="a"))


@run
async def test_tasks_queued_before_a_lane_waits_for_its_cluster_fail_at_once(tmp_path: Path) -> None:
    """A Ray head lost with speech queued: the queued tasks fail lane_pending at the next check
    (a client would otherwise wait out its deadline behind an unbounded wait); a durable image
    task stays queued and runs when the lane returns."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, clock):
        tts, image = workers[Lane.TTS], workers[Lane.IMAGE]
        tts.ready()
        running = eng.submit(TTS, "e", TTSRequest(text="first"))
        queued = eng.submit(TTS, "e", TTSRequest(text="second"))
        picture = eng.submit(IMAGE, "i", ImageRequest(prompt="a"))
        eng.check()
        assert eng.lookup(queued.task_id).state == "queued"  # type: ignore[union-attr]
        tts.waiting = image.waiting = "the Ray head at 10.0.0.1:6379 stopped answering at 12:00:00"
        eng.check()
        failed = await queued.done
        assert (failed.state, failed.error_code) == ("failed", "lane_pending")
        assert failed.error_message is not None and "stopped answering" in failed.error_message
        refused = task_error("lane_pending", failed.error_message)
        assert (refused.status, refused.headers) == (503, {"Retry-After": "5"})  # as when refused
        assert eng.lookup(running.task_id).state == "running"  # type: ignore[union-attr]
        waiting = eng.lookup(picture.task_id)
        assert waiting is not None and waiting.state == "queued"
        # It says what it waits for, and no estimate (it said "eta 2 s" for as long as it waited).
        assert (waiting.waiting_for, waiting.eta_s) == ("lane_pending", None)


@run
async def test_the_watchdog_holds_a_worker_to_the_ceiling_its_machine_set(tmp_path: Path) -> None:
    """A Ray node sets a defaulted ceiling from its own memory and says it when ready."""
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.deliver(m.WorkerReady(4242, (), (0,), "", 1, 1, memory_limit_bytes=3 * 2**30))
        status = next(s for s in eng.snapshot().lanes if s.lane == Lane.LLM).workers[0]
        assert status.memory_limit_bytes == 3 * 2**30


@run
async def test_a_model_that_cannot_load_makes_the_lane_unavailable_until_it_can(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.deliver(m.WorkerFailed("model_not_found", "no such file"))
        with pytest.raises(LaneUnavailable, match="cannot start: no such file"):
            eng.submit(LLM, "m", LLMRequest(prompt="a"))
        clock.advance(backoff(0))
        eng.check()
        assert llm.starts == 2
        llm.ready()
        assert eng.ready()["llm"]
        eng.submit(LLM, "m", LLMRequest(prompt="a"))


@run
async def test_tasks_queued_while_the_worker_starts_fail_when_it_cannot(tmp_path: Path) -> None:
    """Accepted while the worker loaded, then the load failed (and would at every restart):
    they waited for their deadline, 300 s, for a worker that never came."""
    async with started_engine(tmp_path) as (eng, workers, clock):
        waiting = eng.submit(LLM, "m", LLMRequest(prompt="a"))
        workers[Lane.LLM].deliver(m.WorkerFailed("model_not_found", "no such file"))
        view = await waiting.done
        assert (view.state, view.error_code) == ("failed", "lane_unavailable")
        assert "cannot start: no such file" in (view.error_message or "")


@run
async def test_no_task_is_sent_to_a_worker_whose_pipe_closed_before_supervision_saw_it_dead(
    tmp_path: Path,
) -> None:
    """The supervision pass finds a dead worker up to 0.25 s after its death: a request in
    that window was sent into the dead pipe and failed with worker_crashed (not to be retried:
    "it may have killed it") though it never ran. Its pipe's end of file (WorkerGone, said by
    the worker's handle) stops the sending at once; the request waits for the restart."""
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready()
        llm.deliver(m.WorkerGone())
        waiting = eng.submit(LLM, "m", LLMRequest(prompt="a"))
        assert llm.runs == [] and eng.lookup(waiting.task_id).state == "queued"  # type: ignore[union-attr]
        llm.die()
        eng.check()
        assert eng.lookup(waiting.task_id).state == "queued"  # type: ignore[union-attr]  # not failed
        clock.advance(backoff(0))
        eng.check()
        llm.ready()
        assert [r.task_id for r in llm.runs] == [waiting.task_id]


@run
async def test_a_worker_that_dies_while_it_loads_makes_the_lane_unavailable_until_one_starts(
    tmp_path: Path,
) -> None:
    """An image model that crashed its builder: the worker died, restarted, died again, never
    "failed", and the lane answered 202 with an ETA for pictures no start would ever make."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, clock):
        llm, image = workers[Lane.LLM], workers[Lane.IMAGE]
        waiting = eng.submit(LLM, "m", LLMRequest(prompt="a"))
        kept = eng.submit(IMAGE, "i", ImageRequest(prompt="a"))
        llm.die()
        image.die()
        eng.check()
        with pytest.raises(LaneUnavailable, match="the llm worker cannot start: the llm worker process died"):
            eng.submit(LLM, "m", LLMRequest(prompt="b"))
        with pytest.raises(LaneUnavailable, match="the image worker cannot start: the image worker process"):
            eng.submit(IMAGE, "i", ImageRequest(prompt="b"))
        view = await waiting.done  # what waited for the LLM fails now, not at its deadline
        assert (view.state, view.error_code) == ("failed", "lane_unavailable")
        assert eng.lookup(kept.task_id).state == "queued"  # type: ignore[union-attr]  # durable: it waits
        clock.advance(backoff(0))
        eng.check()
        assert llm.starts == 2  # the restarts go on, and the first that loads serves
        llm.ready()
        eng.submit(LLM, "m", LLMRequest(prompt="c"))


@run
async def test_a_worker_that_dies_while_its_cluster_is_away_leaves_its_lane_pending(tmp_path: Path) -> None:
    """The Ray head lost: a worker that dies then (its actor went with the head) did not fail
    to start, and its lane is pending (503 lane_pending, Ray's word), not unavailable."""
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        lost = "the Ray head at 10.0.0.1:6379 stopped answering at 12:00:00"
        llm.waiting_for = lambda: lost  # type: ignore[method-assign]  # as a Ray worker's, dead or not
        llm.die()
        eng.check()
        with pytest.raises(LaneUnavailable) as e:
            eng.submit(LLM, "m", LLMRequest(prompt="a"))
        assert e.value.code == "lane_pending" and "stopped answering" in str(e.value)


@run
async def test_a_worker_that_dies_once_a_stop_signal_came_is_left_to_the_stop(tmp_path: Path) -> None:
    """SIGTERM to the process group (systemd's default KillMode): the image worker died of it
    before the server's stop began, its picture failed worker_crashed for good and the worker
    was restarted into the stop. After the signal, the stop sets the picture aside."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, clock):
        image = workers[Lane.IMAGE]
        image.ready()
        picture = eng.submit(IMAGE, "i", ImageRequest(prompt="a"))
        eng.check()
        assert eng.lookup(picture.task_id).state == "running"  # type: ignore[union-attr]
        eng.stop_signalled()
        image.die()
        clock.advance(60.0)
        eng.check()
        assert eng.lookup(picture.task_id).state == "running"  # type: ignore[union-attr]
        assert image.starts == 1


@run
async def test_one_failed_restart_after_a_crash_keeps_the_queue_for_the_next(tmp_path: Path) -> None:
    """A restart after a crash may fail once (the dead process's GPU memory not freed yet):
    the queue waits for the next restart; a second failure in a row fails it."""
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready()
        llm.die()
        eng.check()  # the crash
        clock.advance(backoff(0))
        eng.check()  # restarted
        assert llm.starts == 2
        waiting = eng.submit(LLM, "m", LLMRequest(prompt="a"))
        llm.deliver(m.WorkerFailed("gpu_out_of_memory", "the card is still full"))
        assert not waiting.done.done()
        clock.advance(60.0)
        eng.check()  # restarted again after the back-off
        llm.deliver(m.WorkerFailed("gpu_out_of_memory", "the card is still full"))
        view = await waiting.done
        assert (view.state, view.error_code) == ("failed", "lane_unavailable")


@run
async def test_cancel_a_queued_task_at_once_and_a_running_one_through_its_worker(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm, running, queued = two_tasks(eng, workers)
        assert eng.cancel(queued.task_id) is CancelOutcome.CANCELLED
        assert (await queued.done).state == "cancelled"
        assert eng.cancel(running.task_id) is CancelOutcome.REQUESTED
        assert llm.cancels == [running.task_id]
        llm.deliver(m.TaskCancelled(running.task_id))
        assert (await running.done).state == "cancelled"


def test_failures_a_retry_repeats_say_so_and_passing_ones_say_when() -> None:
    """OpenAI's client retries any 5xx unless told not to: a 504 deadline_exceeded was sent
    three times, each holding the LLM lane until the deadline again."""
    # A cancel too: OpenAI's SDK retried the 409 and ran a cancelled answer twice more.
    for code in (
        "deadline_exceeded",
        "worker_timeout",
        "worker_crashed",
        "worker_out_of_memory",
        "cancelled",
    ):
        refused = task_error(code, "x")
        assert refused.headers == {"x-should-retry": "false"}, code
    # A deadline that passed in the queue: a backlog, which a retry may find gone.
    assert task_error("deadline_exceeded", "x", ran=False).headers == {}
    # The result of an ended task that has none: no retry brings it (not_ready may come).
    view: TaskView[Any] = TaskView(
        "t", "image", "i", "cancelled", 0, 0.0, 0.0, 1.0, None, 0, None, None, None, None, None
    )
    assert no_result(view, "image").headers == {"x-should-retry": "false"}
    view = dataclasses.replace(view, state="failed")
    assert no_result(view, "image").headers == {"x-should-retry": "false"}
    assert no_result(dataclasses.replace(view, state="running"), "image").headers == {}
    assert task_error("lane_pending", "x").headers == {"Retry-After": "5"}
    assert task_error("server_shutdown", "x").headers == {"Retry-After": "5"}


@run
async def test_a_deadline_stops_a_running_task(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready()
        handle = eng.submit(LLM, "m", LLMRequest(prompt="a"), timeout_s=3)
        clock.advance(3.5)
        llm.deliver(m.Heartbeat(progress_events=1))
        eng.check()
        assert llm.cancels == [handle.task_id]
        llm.deliver(m.TaskCancelled(handle.task_id))
        view = await handle.done
        assert (view.state, view.error_code) == ("failed", "deadline_exceeded")


@run
async def test_ending_live_tasks_at_a_stop_answers_all_but_the_images_run_again_later(tmp_path: Path) -> None:
    """What the server does 1.5 s before uvicorn cancels the answers being written: their tasks
    fail with server_shutdown (the clients hear it), a resumable image stays for the next
    start, and nothing new is taken."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        llm, image = workers[Lane.LLM], workers[Lane.IMAGE]
        llm.ready()
        image.ready()
        running = eng.submit(LLM, "m", LLMRequest(prompt="a"))
        queued_picture = eng.submit(IMAGE, "i", ImageRequest(prompt="a"))
        waited_on = eng.submit(IMAGE, "i", ImageRequest(prompt="b"), resumable=False)
        eng.end_live_tasks()
        # Bounded: one left out waits for ever.
        text = await asyncio.wait_for(running.done, 5)
        picture = await asyncio.wait_for(waited_on.done, 5)
        assert (
            (text.state, text.error_code)
            == (picture.state, picture.error_code)
            == ("failed", "server_shutdown")
        )
        assert llm.cancels == [running.task_id]  # its worker stops computing it
        assert not queued_picture.done.done()
        with pytest.raises(LaneUnavailable) as e:
            eng.submit(LLM, "m", LLMRequest(prompt="late"))
        assert e.value.code == "server_shutdown"
        llm.deliver(m.TaskCancelled(running.task_id))  # its end, reported late, changes nothing
        assert eng.snapshot().lane(Lane.LLM).stats.failed == 1


@run
async def test_image_results_are_written_by_the_server_and_tasks_survive_a_restart(tmp_path: Path) -> None:
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, clock):
        img = workers[Lane.IMAGE]
        img.ready()
        done = eng.submit(IMAGE, "i", ImageRequest(prompt="a"))
        img.deliver(m.TaskProgress(done.task_id, 1, 2))
        assert eng.lookup(done.task_id).progress_done == 1  # type: ignore[union-attr]
        img.deliver(m.TaskDone(done.task_id, ImageOutcome(GeneratedImage(PNG, 64, 64, 2, 7))))
        result = (await done.done).result
        assert isinstance(result, ImageResult) and Path(result.path).read_bytes() == PNG
        assert eng.files.servable("images", result.path) == Path(result.path).resolve()
        interrupted = eng.submit(IMAGE, "i", ImageRequest(prompt="b"))
        clock.advance(1.0)
        waiting = eng.submit(IMAGE, "i", ImageRequest(prompt="c", seed=3))
        submitted = [eng.lookup(t.task_id).submitted_at for t in (interrupted, waiting)]  # type: ignore[union-attr]

    # A new engine on the same data folder: the finished one is known, the others resume.
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng2, workers2, _):
        assert eng2.lookup(done.task_id).result == result  # type: ignore[union-attr]
        states = [eng2.lookup(t.task_id).state for t in (interrupted, waiting)]  # type: ignore[union-attr]
        assert states == ["queued", "queued"]
        # Resumed, they keep the time the client submitted them.
        assert [eng2.lookup(t.task_id).submitted_at for t in (interrupted, waiting)] == submitted  # type: ignore[union-attr]
        workers2[Lane.IMAGE].ready()
        run_ = workers2[Lane.IMAGE].runs[0]
        assert run_.task_id == interrupted.task_id and run_.request == ImageRequest(prompt="b")


@run
async def test_an_image_that_failed_part_way_reads_how_far_it_got_after_a_restart(tmp_path: Path) -> None:
    """A picture that failed at step 3 of 8 read "step 0" once the server had restarted: the
    store kept its end but not its progress."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        img = workers[Lane.IMAGE]
        img.ready()
        failed = eng.submit(IMAGE, "i", ImageRequest(prompt="a", steps=8))
        img.deliver(m.TaskProgress(failed.task_id, 3, 8))
        img.deliver(m.TaskError(failed.task_id, "backend_error", "out of memory"))
        await failed.done
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng2, _, _):
        view = eng2.lookup(failed.task_id)
        assert view is not None and view.state == "failed"
        assert (view.progress_done, view.progress_total) == (3, 8)


@run
async def test_a_result_the_sweep_deleted_is_gone_from_lookups_at_once(tmp_path: Path) -> None:
    """The scheduler keeps recent finished tasks in memory; once retention deleted a record
    and its file, a lookup says not found, not succeeded with a result that 404s."""
    async with started_engine(tmp_path) as (eng, workers, clock):
        tts = workers[Lane.TTS]
        tts.ready()
        said = eng.submit(TTS, "e", TTSRequest(text="hello"))
        tts.deliver(m.TaskOutput(said.task_id, AudioChunk(b"\x01\x00" * 100)))
        tts.deliver(m.TaskDone(said.task_id, TTSOutcome(sample_rate=16000, samples=100, voice="en")))
        await said.done
        assert eng.lookup(said.task_id) is not None and eng.durable is not None
        eng.durable.store.flush()
        eng.retention = Retention(
            eng.durable.store,
            tmp_path / "data",
            ["audio"],
            RetentionConfig(max_age_h=1),
            wall=lambda: time.time() + 7200,
        )
        eng._next_sweep = 0.0
        eng.check()
        assert eng._sweep is not None
        assert (await eng._sweep).deleted == (said.task_id,)
        assert eng.lookup(said.task_id) is None


@run
async def test_the_task_list_keeps_what_the_store_kept_through_a_restart(tmp_path: Path) -> None:
    """GET /api/tasks listed this run's tasks only: a finished picture or speech from before a
    restart was found by its id and by /api/image/tasks, not in the list."""
    now = 1_700_000_000.0  # the fake engines' wall clock: the stored tasks came before the live one
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, _, _):
        assert eng.durable is not None
        for i, lane in enumerate((Lane.IMAGE, Lane.TTS)):
            row = StoredTask(
                f"{i:032x}", lane, "m", "succeeded", 0, {}, now - 9 + i, now - 9, now - 8, 1, None, None, None
            )
            eng.durable.store.keep(row).result()
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng2, workers, clock):
        workers[Lane.LLM].ready()
        await settle()
        live = eng2.submit(LLM, "m", LLMRequest(prompt="a"))
        clock.advance(1.0)
        image = eng2.submit(IMAGE, "i", ImageRequest("b", width=64, height=64))  # live and stored: once
        earlier = [f"{1:032x}", f"{0:032x}"]
        assert [v.id for v in eng2.tasks(viewer=ANONYMOUS)] == [image.task_id, live.task_id, *earlier]
        assert [v.id for v in eng2.tasks(Lane.IMAGE, viewer=ANONYMOUS)] == [image.task_id, f"{0:032x}"]
        assert [v.id for v in eng2.tasks(state="succeeded", viewer=ANONYMOUS)] == earlier
        assert [v.id for v in eng2.tasks(state="queued", viewer=ANONYMOUS)] == [image.task_id]  # the LLM runs
        newest = [image.task_id, live.task_id, earlier[0]]
        assert [v.id for v in eng2.tasks(limit=3, viewer=ANONYMOUS)] == newest


@run
async def test_a_restarted_server_estimates_runs_from_the_lanes_past_ones(tmp_path: Path) -> None:
    """Images that took 30 s each before a restart: the queue's ETAs start from about that,
    not from the 1 s initial guess (a resumed queue said one second a picture)."""
    now = time.time()
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, _, _):
        assert eng.durable is not None
        for i in range(5):
            started = now - 1000 + 60 * i
            row = StoredTask(
                f"{i:032x}",
                Lane.IMAGE,
                "m",
                "succeeded",
                0,
                {},
                started,
                started,
                started + 30,
                1,
                None,
                None,
                None,
            )
            eng.durable.store.keep(row).result()
        eng.durable.store.keep(
            StoredTask("f" * 32, Lane.TTS, "e", "succeeded", 0, {}, now, now, now + 2, 1, None, None, None)
        ).result()

    async with started_engine(tmp_path, image=IMAGE_ON) as (eng2, _, _):
        estimate = eng2.snapshot().lane(Lane.IMAGE).stats.run_time_mean
        assert estimate == pytest.approx(1.0 * 0.8**5 + 30 * (1 - 0.8**5))  # as if they had run here
        assert eng2.snapshot().lane(Lane.TTS).stats.run_time_mean == pytest.approx(0.8 + 0.2 * 2)


@run
async def test_speech_stays_reachable_after_a_restart_and_goes_with_its_record(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        tts = workers[Lane.TTS]
        tts.ready()
        said = eng.submit(TTS, "e", TTSRequest(text="hello"))
        tts.deliver(m.TaskOutput(said.task_id, AudioChunk(b"\x01\x00" * 100)))
        tts.deliver(m.TaskDone(said.task_id, TTSOutcome(sample_rate=16000, samples=100, voice="en")))
        result = (await said.done).result
        assert isinstance(result, TTSResult)

    async with started_engine(tmp_path) as (eng2, _, _):
        view = eng2.lookup(said.task_id)
        assert view is not None and view.state == "succeeded" and view.result == result
        assert eng2.cancel(said.task_id) is CancelOutcome.FINISHED  # known from the store alone
        assert eng2.files.servable("audio", result.audio_path) is not None
        # Past its age the record and the file go together.
        assert eng2.durable is not None
        later = Retention(
            eng2.durable.store,
            tmp_path / "data",
            ["audio"],
            RetentionConfig(max_age_h=1),
            wall=lambda: 1_700_000_000.0 + 7200 + 10,
        )
        assert later.sweep().expired == 1 and eng2.lookup(said.task_id) is None
        assert not Path(result.audio_path).exists()


@run
async def test_a_deleted_task_takes_its_file_and_record_with_it_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DELETE /api/tasks/{id}'s engine side: the file and the record go before it returns, the
    scheduler forgets the task, and a restart finds nothing; a live task is refused."""
    async with started_engine(tmp_path) as (eng, workers, clock):
        tts = workers[Lane.TTS]
        tts.ready()
        said = eng.submit(TTS, "e", TTSRequest(text="hello"))
        waiting = eng.submit(TTS, "e", TTSRequest(text="still queued"))
        tts.deliver(m.TaskOutput(said.task_id, AudioChunk(b"\x01\x00" * 100)))
        tts.deliver(m.TaskDone(said.task_id, TTSOutcome(sample_rate=16000, samples=100, voice="en")))
        result = (await said.done).result
        assert isinstance(result, TTSResult) and Path(result.audio_path).is_file()
        live = eng.lookup(waiting.task_id)
        assert live is not None and live.state in ("queued", "running")
        with pytest.raises(ValueError, match="only a finished task is deleted"):
            await eng.delete(live)
        view = eng.lookup(said.task_id)
        assert view is not None and view.succeeded
        wav = Path(result.audio_path)
        copies = [wav.with_suffix(".mp3"), wav.parent / "orphaned" / f"{said.task_id}.opus"]
        for copy in copies:  # a player's encoded copy; one a sweep had set aside
            copy.parent.mkdir(exist_ok=True)
            copy.write_bytes(b"encoded")
        neighbour = wav.with_name(f"{waiting.task_id}.wav")
        neighbour.write_bytes(b"another task's")
        # A full disk refuses the record's deletion: nothing goes (the files went first, and the
        # task read succeeded with its audio gone).
        assert eng.durable is not None
        store_delete = eng.durable.store.delete

        def full(ids: list[str], removal: object = None) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        eng.durable.store.delete = full  # type: ignore[method-assign]
        with pytest.raises(NotRecorded) as refused:
            await eng.delete(view)
        assert refused.value.code == "storage_full" and "files are as they were" in str(refused.value)
        assert wav.exists() and all(c.exists() for c in copies) and eng.lookup(said.task_id) is not None
        eng.durable.store.delete = store_delete  # type: ignore[method-assign]
        # Writes held for room (this task's end among them, maybe): refused too, nothing gone.
        monkeypatch.setattr(type(eng.durable.store), "held_writes", property(lambda _: 1))
        with pytest.raises(NotRecorded):
            await eng.delete(view)
        assert wav.exists() and eng.lookup(said.task_id) is not None
        monkeypatch.undo()
        await eng.delete(view)
        assert not wav.exists() and not any(c.exists() for c in copies)
        assert neighbour.exists()
        assert eng.lookup(said.task_id) is None
        assert said.task_id not in {v.id for v in eng.tasks(viewer=ANONYMOUS)}
        assert eng.durable is not None and eng.durable.store.get(said.task_id) is None

    async with started_engine(tmp_path) as (eng2, _, _):
        assert eng2.lookup(said.task_id) is None


@run
async def test_streamed_speech_not_kept_leaves_no_file_and_no_record_but_reads_to_its_end(
    tmp_path: Path,
) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        tts = workers[Lane.TTS]
        tts.ready()
        streamed = eng.submit(TTS, "e", TTSRequest(text="hello"), keep_files=False)
        kept = eng.submit(TTS, "e", TTSRequest(text="hello"))
        for handle, pcm in ((streamed, b"\x01\x00" * 100), (kept, b"\x02\x00" * 100)):
            tts.deliver(m.TaskOutput(handle.task_id, AudioChunk(pcm)))
            tts.deliver(m.TaskDone(handle.task_id, TTSOutcome(sample_rate=16000, samples=100, voice="en")))
        streamed_result = (await streamed.done).result
        kept_result = (await kept.done).result
        assert isinstance(streamed_result, TTSResult) and isinstance(kept_result, TTSResult)
        # Nothing written (a short speech stays in memory); the stream that had not read yet
        # still reads every byte.
        assert streamed_result.audio_path == "" and streamed_result.files() == ()
        assert not (tmp_path / "data" / "audio" / f"{streamed.task_id}.wav").exists()
        written = await streamed.events.get()
        assert isinstance(written, AudioWritten) and written.read() == b"\x01\x00" * 100
        assert Path(kept_result.audio_path).exists()
        assert eng.durable is not None
        eng.durable.store.flush()
        assert eng.durable.store.get(streamed.task_id) is None
        assert eng.durable.store.get(kept.task_id) is not None
        with pytest.raises(ValueError, match="durable"):
            eng.submit(IMAGE, "i", ImageRequest(prompt="a"), keep_files=False)


@run
async def test_a_result_that_cannot_be_written_fails_the_task_clearly(tmp_path: Path) -> None:
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, clock):
        workers[Lane.IMAGE].ready()
        handle = eng.submit(IMAGE, "i", ImageRequest(prompt="a"))
        (tmp_path / "data" / "images").write_text("a file where the folder should be")
        workers[Lane.IMAGE].deliver(
            m.TaskDone(handle.task_id, ImageOutcome(GeneratedImage(PNG, 64, 64, 2, 7)))
        )
        view = await handle.done
        assert (view.state, view.error_code) == ("failed", "result_not_stored")


@run
async def test_a_result_a_full_disk_cannot_take_is_storage_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk was result_not_stored, a 500, where a record it cannot take is storage_full,
    507; logged in one line (a traceback for each task set off alerts on "Traceback")."""

    def full(*args: object, **kwargs: object) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, clock):
        workers[Lane.IMAGE].ready()
        handle = eng.submit(IMAGE, "i", ImageRequest(prompt="a"))
        monkeypatch.setattr(eng.files, "write", full)
        workers[Lane.IMAGE].deliver(
            m.TaskDone(handle.task_id, ImageOutcome(GeneratedImage(PNG, 64, 64, 2, 7)))
        )
        view = await handle.done
        assert (view.state, view.error_code) == ("failed", "storage_full")
        assert failure_status("storage_full") == 507
    (said,) = [r for r in caplog.records if "no result" in r.getMessage()]
    assert said.exc_info is None and "No space left on device" in said.getMessage()


@run
async def test_a_result_the_lane_cannot_build_fails_its_task_and_frees_the_slot(tmp_path: Path) -> None:
    # A backend that reports an impossible sample rate: the WAV cannot be written.
    async with started_engine(tmp_path) as (eng, workers, clock):
        tts = workers[Lane.TTS]
        tts.ready()
        bad = eng.submit(TTS, "e", TTSRequest(text="a"))
        tts.deliver(m.TaskDone(bad.task_id, TTSOutcome(sample_rate=0, samples=0, voice="x")))
        view = await bad.done
        assert (view.state, view.error_code) == ("failed", "result_not_stored")
        nxt = eng.submit(TTS, "e", TTSRequest(text="b"))
        assert tts.runs[-1].task_id == nxt.task_id  # the lane goes on


@run
async def test_a_crashed_worker_reports_no_models_until_its_replacement_is_ready(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        tts = workers[Lane.TTS]
        tts.ready(models=(m.ModelInfo("e", "espeak", m.ModelDetails(("en-US",), 22050)),))
        assert set(eng.model_infos(Lane.TTS)) == {"e"}
        tts.die()
        eng.check()
        assert eng.model_infos(Lane.TTS) == {}


@run
async def test_a_lane_with_two_replicas_runs_on_both_and_a_crash_fails_only_its_task(tmp_path: Path) -> None:
    async with started_engine(tmp_path, tts={"replicas": 2}) as (eng, workers, clock):
        a, b = workers.replicas(Lane.TTS)
        a.ready()
        first = eng.submit(TTS, "e", TTSRequest(text="one"))
        second = eng.submit(TTS, "e", TTSRequest(text="two"))
        assert [r.task_id for r in a.runs] == [first.task_id] and b.runs == []  # b still loading
        b.ready()
        assert [r.task_id for r in b.runs] == [second.task_id]  # the free slot on the other one
        tts = eng.snapshot().lane(Lane.TTS)
        assert [w.running for w in tts.workers] == [1, 1]
        a.die()
        eng.check()
        crashed, running = eng.lookup(first.task_id), eng.lookup(second.task_id)
        assert crashed is not None and (crashed.state, crashed.error_code) == ("failed", "worker_crashed")
        assert running is not None and running.state == "running"


@run
async def test_a_replica_restarting_while_the_others_serve_keeps_the_lane_ready(tmp_path: Path) -> None:
    """/ready said 503 for the 20 s of one replica's restart while the other served every
    request: a load balancer took a serving server out of rotation. At the start it still
    waits for every replica."""
    async with started_engine(tmp_path, tts={"replicas": 2}) as (eng, workers, clock):
        a, b = workers.replicas(Lane.TTS)
        workers[Lane.LLM].ready()
        a.ready()
        assert not eng.ready()["tts"]  # b still starting: not said ready at half its size
        b.ready()
        assert eng.ready() == {"llm": True, "tts": True}
        a.die()
        eng.check()
        assert eng.ready()["tts"]  # b serves: min_replicas (1) are ready
        b.die()
        eng.check()
        assert not eng.ready()["tts"]  # none serves
        clock.advance(backoff(0))
        eng.check()
        a.ready()
        assert eng.ready()["tts"]


@run
async def test_a_send_that_fails_mid_batch_does_not_send_the_tasks_it_failed(tmp_path: Path) -> None:
    """A batch of two dispatched at once; the first send finds the worker dead, and the crash
    fails the batch's other task too (running on the lane, held by no replica yet): that task
    is answered and sent nowhere (it went to the dead worker, a second crash of it, and a
    durable row would have been marked running again after its failure)."""
    async with started_engine(tmp_path) as (eng, workers, clock):
        tts = workers[Lane.TTS]
        p = eng.submit(TTS, "e", TTSRequest(text="p"))
        q = eng.submit(TTS, "e", TTSRequest(text="q"))
        tts.die()  # not noticed yet: its ready message still arrives, with two slots
        tts.ready(slots=2)
        for handle in (p, q):
            view = await handle.done
            assert (view.state, view.error_code) == ("failed", "worker_crashed")
        assert tts.kills == 1
        assert eng.snapshot().lane(Lane.TTS).workers[0].restarts == 0


@run
async def test_stopping_sends_no_queued_task_to_a_worker_told_to_stop(tmp_path: Path) -> None:
    """A task ending while the workers stop must not start the next durable one: its attempt
    would count, and the task would fail `interrupted` after one more restart."""
    clock, workers = FakeClock(), FakeWorkers()
    eng = engine(config(tmp_path, image=IMAGE_ON), clock, workers)
    await eng.start()
    img = workers[Lane.IMAGE]
    img.ready()
    first = eng.submit(IMAGE, "i", ImageRequest(prompt="a"))
    eng.submit(IMAGE, "i", ImageRequest(prompt="b"))

    async def stop_as_the_first_ends(timeout: float) -> None:
        img.deliver(m.TaskDone(first.task_id, ImageOutcome(GeneratedImage(PNG, 64, 64, 2, 7))))
        img.die()

    img.stop = stop_as_the_first_ends  # type: ignore[method-assign]
    await eng.stop()
    assert [r.task_id for r in img.runs] == [first.task_id]


@run
async def test_a_worker_that_cannot_be_started_backs_off_and_the_pass_goes_on(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm, tts = workers[Lane.LLM], workers[Lane.TTS]
        llm.ready()
        tts.ready()
        llm.die()
        eng.check()  # found dead: killed, a restart due after the back-off

        def no_fork() -> None:
            raise OSError(11, "Resource temporarily unavailable")

        llm.start = no_fork  # type: ignore[method-assign]
        clock.advance(backoff(0))
        tts.die()
        eng.check()  # the LLM's start fails; the TTS worker's death is still seen in this pass
        assert tts.kills == 1
        starts = tts.starts
        clock.advance(backoff(1) - 0.01)
        eng.check()
        assert tts.starts == starts + 1  # its own first restart, after backoff(0)
        view = eng.snapshot().lane(Lane.LLM).workers[0]
        assert view.restarts == 1  # the failed start counted: the next waits backoff(1)


@run
async def test_a_result_that_cannot_be_counted_still_answers_its_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm, handle = one_task(eng, workers)

        def broken(self: LLMResult) -> tuple[Any, ...]:
            raise ValueError("a lane plugin's bug")

        monkeypatch.setattr(LLMResult, "counted", broken)
        llm.deliver(m.TaskDone(handle.task_id, LLMOutcome("stop", 1, 0)))
        view = await handle.done
        assert view.state == "succeeded"


@run
async def test_an_image_running_through_graceful_restarts_is_not_failed_as_interrupted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Attempts count runs a crash may have cut (MAX_ATTEMPTS 2); a graceful stop is none: an
    image running through three restarts still runs after them. The stop says what it kept."""
    with caplog.at_level(logging.INFO, logger="ris.engine"):
        async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
            workers[Lane.IMAGE].ready()
            long = eng.submit(IMAGE, "i", ImageRequest(prompt="a long one"))
            eng.submit(IMAGE, "i", ImageRequest(prompt="waits"))
            assert eng.lookup(long.task_id).state == "running"  # type: ignore[union-attr]
    assert "image: 1 running task(s) set aside and 1 queued kept" in caplog.text
    for _ in range(3):
        async with started_engine(tmp_path, image=IMAGE_ON) as (again, workers, _):
            assert again.lookup(long.task_id).state == "queued"  # type: ignore[union-attr]
            workers[Lane.IMAGE].ready()
            assert [r.task_id for r in workers[Lane.IMAGE].runs] == [long.task_id]


@run
async def test_an_image_cancelled_while_it_ran_does_not_run_again_after_a_restart(tmp_path: Path) -> None:
    """The cancel was asked for, then the server stopped before the worker said it stopped
    (a long step, a SIGKILL): set aside as a task the stop cut, it ran again to its end."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        workers[Lane.IMAGE].ready()
        handle = eng.submit(IMAGE, "i", ImageRequest(prompt="not wanted any more"))
        assert eng.cancel(handle.task_id) is CancelOutcome.REQUESTED
    async with started_engine(tmp_path, image=IMAGE_ON) as (again, workers, _):
        view = again.lookup(handle.task_id)
        assert view is not None and (view.state, view.error_code) == ("cancelled", "cancelled")
        workers[Lane.IMAGE].ready()
        assert workers[Lane.IMAGE].runs == []


@run
async def test_a_durable_cancel_is_answered_once_it_is_on_disk(tmp_path: Path) -> None:
    """The cancel routes answered while the cancel's write still waited for the store's
    thread: a server killed in those milliseconds ran the task again at its next start, after
    the client was told it was cancelled."""
    import asyncio
    import threading

    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        workers[Lane.IMAGE].ready()
        running = eng.submit(IMAGE, "i", ImageRequest(prompt="running"))
        queued = eng.submit(IMAGE, "i", ImageRequest(prompt="queued"))
        assert eng.durable is not None
        for task_id, outcome in (
            (queued.task_id, CancelOutcome.CANCELLED),
            (running.task_id, CancelOutcome.REQUESTED),
        ):
            disk = threading.Event()
            eng.durable.store._writer.submit(disk.wait, "a slow disk")  # the writes after it wait
            try:
                answer = asyncio.ensure_future(eng.cancel_recorded(task_id))
                await asyncio.sleep(0.05)
                assert not answer.done()  # not answered while the cancel is not on disk
            finally:
                disk.set()  # (else the store's close waits for ever)
            assert await asyncio.wait_for(answer, 5) is outcome
        # Both on disk as they were answered: neither runs again after a restart.
        fresh = type(eng.durable.store)(eng.durable.store.path)
        try:
            was_queued, was_running = fresh.get(queued.task_id), fresh.get(running.task_id)
        finally:
            fresh.close()
        assert was_queued is not None and was_queued.state == "cancelled"
        assert was_running is not None and was_running.on_restart == "cancelled"


@run
async def test_a_resumed_image_keeps_its_clients_timeout(tmp_path: Path) -> None:
    """timeout_s is the client's: kept on disk, it still ends the task after a restart (and one
    whose timeout passed while the server was down fails at the start), where every restart
    gave it the lane's full request_timeout_s anew."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        short = eng.submit(IMAGE, "i", ImageRequest(prompt="a"), timeout_s=60)
        long = eng.submit(IMAGE, "i", ImageRequest(prompt="b"), timeout_s=600)
    clock, workers = FakeClock(), FakeWorkers()
    clock.advance(100)  # the server was down 100 s
    again = engine(config(tmp_path, image=IMAGE_ON), clock, workers)
    await again.start()
    try:
        gone = again.lookup(short.task_id)
        assert gone is not None and (gone.state, gone.error_code) == ("failed", "deadline_exceeded")
        assert again.lookup(long.task_id).state == "queued"  # type: ignore[union-attr]
        clock.advance(501)  # 601 s after it was accepted
        again.check()
        late = again.lookup(long.task_id)
        assert late is not None and (late.state, late.error_code) == ("failed", "deadline_exceeded")
    finally:
        await again.stop()


@run
async def test_a_resumed_image_with_no_timeout_of_its_own_outlives_a_long_outage(tmp_path: Path) -> None:
    """The lane's request_timeout_s was stored as the task's deadline: a server down longer
    than it (an hour by default: a night's maintenance) failed every queued image at the next
    start, deadline_exceeded, for clients that had set no timeout. The lane's timeout counts
    again from the start that resumes it."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        plain = eng.submit(IMAGE, "i", ImageRequest(prompt="a"))
        lane_timeout = eng.config.lane(Lane.IMAGE).request_timeout_s
    clock, workers = FakeClock(), FakeWorkers()
    clock.advance(lane_timeout + 100)
    again = engine(config(tmp_path, image=IMAGE_ON), clock, workers)
    await again.start()
    try:
        assert again.lookup(plain.task_id).state == "queued"  # type: ignore[union-attr]
        clock.advance(lane_timeout + 1)  # the lane's timeout, from the resume
        again.check()
        late = again.lookup(plain.task_id)
        assert late is not None and (late.state, late.error_code) == ("failed", "deadline_exceeded")
    finally:
        await again.stop()


@run
async def test_images_queued_before_a_start_without_the_image_lane_wait_for_its_return(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A start with the image lane off failed every queued image for good, unsaid: an operator
    pausing pictures for a maintenance window lost the queue. They wait for a start with the
    lane, said in the log; one whose model was renamed since fails then with a clear code (its
    worker failed it with a raw KeyError)."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        workers[Lane.IMAGE].ready()  # the first runs: "running" on disk when the server stops
        kept = [eng.submit(IMAGE, "i", ImageRequest(prompt=p)) for p in ("a", "b", "c")]
    with caplog.at_level(logging.WARNING, logger="ris.engine"):
        async with started_engine(tmp_path) as (off, workers, _):
            # Waiting, not running: it does not run while its lane is off, and says why.
            waiting = off.lookup(kept[0].task_id)
            assert waiting is not None and (waiting.state, waiting.waiting_for) == ("queued", "lane_disabled")
            listed = {v.id: v.waiting_for for v in off.tasks(viewer=ANONYMOUS)}
            assert listed[kept[0].task_id] == "lane_disabled"
            # A client may still cancel one (it answered "unknown" and ran it later).
            assert await off.cancel_recorded(kept[2].task_id) is CancelOutcome.CANCELLED
            assert off.lookup(kept[2].task_id).state == "cancelled"  # type: ignore[union-attr]
    assert "3 image task(s) accepted before this start wait for the image lane" in caplog.text
    async with started_engine(tmp_path, image=IMAGE_ON) as (back, workers, _):
        workers[Lane.IMAGE].ready()
        assert [r.task_id for r in workers[Lane.IMAGE].runs] == [kept[0].task_id]
        assert back.lookup(kept[2].task_id).state == "cancelled"  # type: ignore[union-attr]
    # One that ran MAX_ATTEMPTS times fails as interrupted even while its lane is off (kept, it
    # was requeued with its count and ran a third time).
    import sqlite3

    db = sqlite3.connect(str(tmp_path / "data" / "tasks.db"))
    db.execute("UPDATE tasks SET state='running', attempts=2 WHERE id=?", (kept[0].task_id,))
    db.commit()
    db.close()
    async with started_engine(tmp_path) as (off, workers, _):
        view = off.lookup(kept[0].task_id)
        assert view is not None and (view.state, view.error_code) == ("failed", "interrupted")
        # Counted as any failure: an alert on ris_tasks_total{outcome="failed"} never saw it.
        assert off.snapshot().metrics.tasks.get(("image", "i", "failed")) == 1
        failures = off.snapshot().metrics.failures
        assert {k: n for k, n in failures.items() if n} == {("image", "interrupted"): 1}  # by its code
    renamed = {**IMAGE_ON, "default_model": "j", "models": {"j": {"backend": "diffusers"}}}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ris.engine"):
        async with started_engine(tmp_path, image=renamed) as (later, workers, _):
            view = later.lookup(kept[1].task_id)
            assert view is not None and (view.state, view.error_code) == ("failed", "model_not_found")
            assert "model 'i' is no longer configured (the image lane has: j)" in (view.error_message or "")
            # In the lane's stats too (/api/stats, ris status), as /metrics counted it.
            assert later.snapshot().lane(Lane.IMAGE).stats.failed == 1
            workers[Lane.IMAGE].ready()
            assert kept[1].task_id not in [r.task_id for r in workers[Lane.IMAGE].runs]
    assert f"image task {kept[1].task_id} accepted before this start failed" in caplog.text


@run
async def test_a_stored_request_this_version_cannot_read_fails_alone(tmp_path: Path) -> None:
    """A queued row kept by another version (a field since removed) fails that task; the
    server starts and the other tasks resume, where every start raised TypeError."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        odd = eng.submit(IMAGE, "i", ImageRequest(prompt="a"))
        fine = eng.submit(IMAGE, "i", ImageRequest(prompt="b"))
    import sqlite3

    db = sqlite3.connect(str(tmp_path / "data" / "tasks.db"))
    db.execute(
        "UPDATE tasks SET request=? WHERE id=?", ('{"prompt": "a", "a_field_since_removed": 1}', odd.task_id)
    )
    db.commit()
    db.close()
    async with started_engine(tmp_path, image=IMAGE_ON) as (again, workers, _):
        view = again.lookup(odd.task_id)
        assert view is not None and (view.state, view.error_code) == ("failed", "unreadable_request")
        assert "a_field_since_removed" in (view.error_message or "")
        workers[Lane.IMAGE].ready()
        assert [r.task_id for r in workers[Lane.IMAGE].runs] == [fine.task_id]


@run
async def test_speech_that_needs_a_voice_on_a_pending_lane_is_refused_as_pending(tmp_path: Path) -> None:
    """A voice is matched against the worker's models before anything is queued: with the TTS
    lane waiting for its cluster, that said 'still starting' (lane_unavailable), where the docs
    and submit say lane_pending and what it waits for."""
    from ris.api.errors import APIError
    from ris.api.tts_support import pick_tts_model, tts_rate

    async with started_engine(tmp_path) as (eng, workers, clock):
        workers[Lane.TTS].waiting = "no node has ris_lane_tts: 1"
        for ask in (lambda: pick_tts_model(eng, None, "en-US"), lambda: tts_rate(eng, "e")):
            with pytest.raises(LaneUnavailable) as refused:
                ask()
            assert refused.value.code == "lane_pending" and "ris_lane_tts" in str(refused.value)
        workers[Lane.TTS].waiting = None  # placed, still loading: the old answer stands
        with pytest.raises(APIError) as starting:
            pick_tts_model(eng, None, "en-US")
        assert starting.value.code == "lane_unavailable"


@run
async def test_a_second_engine_on_the_folder_in_one_process_is_refused(tmp_path: Path) -> None:
    """Counted holds let `ris serve` and its engine share the folder; a second engine started
    before the first stopped resumed the same durable tasks (each ran them) and swept the same
    files."""
    from ris.runtime.data_lock import DataFolderInUse

    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        eng.submit(IMAGE, "i", ImageRequest(prompt="once"))
        second = engine(config(tmp_path, image=IMAGE_ON), FakeClock(), FakeWorkers())
        with pytest.raises(DataFolderInUse, match="another engine of this process"):
            await second.start()
    async with started_engine(tmp_path, image=IMAGE_ON) as (again, workers, _):
        workers[Lane.IMAGE].ready()  # the first one stopped: the folder is free again
        assert len(workers[Lane.IMAGE].runs) == 1


@run
async def test_an_image_reads_as_ended_only_once_its_end_is_on_disk(tmp_path: Path) -> None:
    """Polled progress said 'succeeded' (and the PNG was served) while the row still said
    running: a crash then ran it again, drawing a new picture under the same id."""
    import asyncio
    from concurrent.futures import Future

    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        workers[Lane.IMAGE].ready()
        handle = eng.submit(IMAGE, "i", ImageRequest(prompt="a"))
        assert eng.durable is not None
        held: Future[None] = Future()
        eng.durable.store.finish = lambda *args, **kwargs: held  # type: ignore[method-assign]
        workers[Lane.IMAGE].deliver(
            m.TaskDone(handle.task_id, ImageOutcome(GeneratedImage(PNG, 64, 64, 2, 7)))
        )
        view = eng.lookup(handle.task_id)
        assert view is not None and (view.state, view.result) == ("running", None)
        assert not handle.done.done()
        held.set_result(None)  # on disk
        for _ in range(5):
            await asyncio.sleep(0)
        view = eng.lookup(handle.task_id)
        assert view is not None and view.state == "succeeded" and view.result is not None
        assert handle.done.done()


@run
async def test_an_image_its_client_waited_for_on_its_connection_is_not_run_after_a_restart(
    tmp_path: Path,
) -> None:
    """/v1/images/generations answers on the connection a stop closes: its tasks, resumed,
    ran ahead of new work for a client that never got their ids."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        workers[Lane.IMAGE].ready()
        waited = eng.submit_many(IMAGE, "i", [ImageRequest(prompt="a")] * 2, resumable=False)
        kept = eng.submit(IMAGE, "i", ImageRequest(prompt="b"))
    async with started_engine(tmp_path, image=IMAGE_ON) as (again, workers, _):
        for handle in waited:
            view = again.lookup(handle.task_id)
            assert view is not None and (view.state, view.error_code) == ("cancelled", "server_shutdown")
        workers[Lane.IMAGE].ready()
        assert [r.task_id for r in workers[Lane.IMAGE].runs] == [kept.task_id]


def test_a_full_disk_is_told_apart_from_other_failures_of_the_store() -> None:
    """507 storage_full by sqlite's own code or the OS's errno, never by words in a message (a
    path may say "full")."""
    db = sqlite3.connect(":memory:")
    db.execute("create table t (x)")
    db.execute("pragma max_page_count = 2")  # sqlite's SQLITE_FULL, as a full disk gives it
    with pytest.raises(sqlite3.OperationalError) as full:
        for _ in range(100):
            db.execute("insert into t values (?)", ("x" * 1000,))
    where = Path("/data")
    assert NotRecorded("image", full.value, where).code == "storage_full"
    assert NotRecorded("image", OSError(errno.EDQUOT, "Disk quota exceeded"), where).code == "storage_full"
    assert (
        NotRecorded("image", OSError(errno.EIO, "/srv/fullstack: I/O error"), where).code
        == "store_unavailable"
    )
    assert (
        NotRecorded("image", sqlite3.OperationalError("database is locked"), where).code
        == "store_unavailable"
    )


@run
async def test_a_full_queue_of_a_lane_whose_worker_is_starting_says_retry_after_the_start(
    tmp_path: Path,
) -> None:
    """Retry-After said 1 s while the image worker was still starting (a minute under load)."""
    async with started_engine(tmp_path, image={**IMAGE_ON, "max_queue": 1}) as (eng, workers, clock):
        image = workers[Lane.IMAGE]
        clock.advance(40.0)
        image.ready()  # its start took 40 s
        image.die()
        eng.check()  # a crash: restarted after the back-off, as long again
        eng.submit(IMAGE, "i", ImageRequest(prompt="a"))
        with pytest.raises(QueueFull) as exc:
            eng.submit(IMAGE, "i", ImageRequest(prompt="b"))
        assert exc.value.retry_after_s >= 40.0
        with pytest.raises(QueueFull) as exc:
            eng.submit_many(IMAGE, "i", [ImageRequest(prompt="c")])
        assert exc.value.retry_after_s >= 40.0


@run
async def test_a_batch_too_large_for_the_ready_workers_waits_for_one_still_starting(tmp_path: Path) -> None:
    """n tasks at once over what the ready workers and the queue hold: no retry helps (a 400),
    unless a worker still starting will bring the slots they lack (a 429, counted as one)."""
    async with started_engine(tmp_path, tts={"replicas": 2, "max_queue": 1}) as (eng, workers, _):
        first, second = workers.replicas(Lane.TTS)
        first.ready()  # the second still starting
        asks = [TTSRequest(text="hi")] * 3  # 1 place + 1 ready slot < 3
        with pytest.raises(QueueFull) as exc:
            eng.submit_many(TTS, "e", asks)
        assert exc.value.most is None and eng.snapshot().lanes[1].stats.rejected == 1
        second.ready()
        with pytest.raises(QueueFull) as exc:
            eng.submit_many(TTS, "e", [TTSRequest(text="hi")] * 4)  # 1 place + 2 slots < 4
        assert exc.value.most == 3


@run
async def test_a_finished_task_keeps_its_model_not_its_request(tmp_path: Path) -> None:
    """The last 1,000 finished tasks of each lane are kept for lookups, and each held its whole
    request: 1,000 prompts of 128 KB took the API process from 152 to 369 MB, never read again."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        llm, image = workers[Lane.LLM], workers[Lane.IMAGE]
        llm.ready()
        image.ready()
        answer = eng.submit(LLM, "m", LLMRequest(prompt="x" * 100_000))
        llm.deliver(m.TaskOutput(answer.task_id, TextDelta("a")))
        llm.deliver(m.TaskDone(answer.task_id, LLMOutcome("stop", 5, 1)))
        picture = eng.submit(IMAGE, "i", ImageRequest(prompt="a boat"))
        eng.check()
        image.deliver(m.TaskDone(picture.task_id, ImageOutcome(GeneratedImage(PNG, 64, 64, 2, 7))))
        await answer.done
        view = await picture.done
        assert view.succeeded, view
        for handle, model in ((answer, "m"), (picture, "i")):
            task = eng._scheduler.get(handle.task_id)
            assert task is not None and task.spec.payload == (model,)
            assert eng.lookup(handle.task_id).model == model  # type: ignore[union-attr]
        # The picture's record, written with its request before it was let go, has it.
        stored = eng.durable.store.get(picture.task_id)  # type: ignore[union-attr]
        assert stored is not None and stored.request["prompt"] == "a boat"
