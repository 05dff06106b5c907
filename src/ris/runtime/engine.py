"""The engine: drives the pure Scheduler from the asyncio loop and owns the lane workers.

All scheduler calls happen on the event loop thread. Worker reader threads only hand their
messages over with call_soon_threadsafe; a monitor task checks liveness, hangs and deadlines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ris import messages as m
from ris.config import Config
from ris.machine import machine_info
from ris.runtime.activity import ActivityBoard
from ris.runtime.binding import Binding
from ris.runtime.store import StoredTask, TaskStore
from ris.runtime.worker import WorkerHandle, WorkerState
from ris.runtime.worker_main import WorkerSpec
from ris.scheduler import (
    CancelOutcome,
    Lane,
    QueueFull,
    Scheduler,
    Task,
    TaskSpec,
    TaskState,
)
from ris.scheduler.preemption import Activity

log = logging.getLogger("ris.engine")

MONITOR_INTERVAL_S = 0.25
RESTART_BACKOFF_MAX_S = 30.0
# Lanes whose accepted tasks survive a server restart (asynchronous: the client polls later).
DURABLE_LANES = frozenset({Lane.IMAGE})
# A task found running after a restart is run again at most this many times in all.
MAX_ATTEMPTS = 2


@dataclass
class TaskHandle:
    """The live side of a task: its stream of events and a future for its end."""

    task_id: str
    lane: Lane
    model: str
    # TextDelta / AudioChunk / Progress as the worker sends them; None marks the end.
    events: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    done: asyncio.Future[Task] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    text: list[str] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    sample_rate: int = 0
    first_output_at: float | None = None
    last_progress_at: float = 0.0


class Engine:
    """Scheduler + workers + task handles; the HTTP layer talks only to this."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.scheduler = Scheduler(
            {lane: config.lane(lane).policy() for lane in Lane}, clock, ordering=config.scheduling
        )
        self.workers: dict[Lane, WorkerHandle] = {}
        self.handles: dict[str, TaskHandle] = {}
        self._running_on: dict[Lane, str | None] = {lane: None for lane in Lane}
        self._restart_at: dict[Lane, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._monitor: asyncio.Task[None] | None = None
        self.audio_dir = Path(config.data_dir) / "audio"
        self.board = ActivityBoard()
        self.store: TaskStore | None = None
        # Scheduler times are monotonic; clients see Unix times.
        self._wall_offset = time.time() - clock()

    def wall(self, t: float | None) -> float | None:
        return None if t is None else t + self._wall_offset

    # ----- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.audio_dir.mkdir(parents=True, exist_ok=True)
        self.store = TaskStore(Path(self.config.data_dir) / "tasks.db")
        for lane in self.config.enabled_lanes:
            handle = WorkerHandle(self._worker_spec(lane), self._from_thread, self.board)
            self.workers[lane] = handle
            handle.start()
        self._recover()
        self._monitor = asyncio.create_task(self._monitor_loop(), name="ris-monitor")

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        # Durable tasks stay queued (or are re-run) after a restart; the rest end here.
        durable = {tid for tid, h in self.handles.items() if h.lane in DURABLE_LANES}
        for task_id in list(self.handles):
            if task_id not in durable:
                self.scheduler.cancel(task_id)
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self.workers.values()))
        for lane in self.workers:
            if lane not in DURABLE_LANES:
                self._fail_lane(lane, "server_shutdown", "the server is shutting down")
        if self.store is not None:
            self.store.close()

    def _recover(self) -> None:
        """Resume the durable tasks a previous server accepted but did not finish."""
        assert self.store is not None
        for st in self.store.unfinished():
            lane = Lane(st.lane)
            if st.state == "running" and st.attempts >= MAX_ATTEMPTS:
                self.store.finish(
                    st.id,
                    "failed",
                    time.time(),
                    "interrupted",
                    f"the server stopped while this task ran ({st.attempts} attempts)",
                )
                continue
            if lane not in self.workers:
                self.store.finish(
                    st.id,
                    "failed",
                    time.time(),
                    "lane_unavailable",
                    f"the {lane.value} lane is disabled since the task was accepted",
                )
                continue
            request = m.ImageRequest(**st.request)
            cfg = self.config.lane(lane)
            spec = TaskSpec(
                lane=lane,
                priority=st.priority,
                payload=(st.model, request),
                deadline=self.clock() + cfg.request_timeout_s,
                priority_class=cfg.policy().priority_class,
            )
            self.scheduler.submit(spec, task_id=st.id, force=True)
            self.handles[st.id] = TaskHandle(st.id, lane, st.model)
            if st.state == "running":
                self.store.requeue(st.id)
            log.info("resumed %s task %s (%s)", lane.value, st.id, st.state)

    def _worker_spec(self, lane: Lane) -> WorkerSpec:
        cfg = self.config.lane(lane)
        binding = Binding(
            cores=cfg.cores,
            threads=cfg.effective_threads(machine_info()),
            nice=cfg.nice,
            gpu=cfg.gpu_index,
        )
        image = lane is Lane.IMAGE
        return WorkerSpec(
            lane=lane.value,
            binding=binding,
            device=cfg.device,
            lane_config_json=cfg.model_dump_json(),
            data_dir=str(self.config.data_dir),
            preemption=self.config.image_preemption() if image else None,
            yield_to=tuple(x.value for x in self.config.image_sharing()) if image else (),
        )

    # ----- requests ------------------------------------------------------------------------

    def submit(
        self,
        lane: Lane,
        model: str,
        request: Any,
        *,
        priority: int = 0,
        timeout_s: float | None = None,
    ) -> TaskHandle:
        """Queue a task; raises QueueFull (-> 429) or LaneUnavailable (-> 503)."""
        cfg = self.config.lane(lane)
        if lane not in self.workers:
            raise LaneUnavailable(lane, f"the {lane.value} lane is disabled in the configuration")
        worker = self.workers[lane]
        if worker.state is WorkerState.FAILED and worker.failure is not None:
            raise LaneUnavailable(lane, f"the {lane.value} worker cannot start: {worker.failure.message}")
        deadline = self.clock() + (timeout_s or cfg.request_timeout_s)
        spec = TaskSpec(
            lane=lane,
            priority=priority,
            deadline=deadline,
            payload=(model, request),
            priority_class=cfg.policy().priority_class,
        )
        task = self.scheduler.submit(spec)
        if lane in DURABLE_LANES:
            assert self.store is not None
            try:
                self.store.add(task.id, lane.value, model, priority, dataclasses.asdict(request), time.time())
            except Exception:
                self.scheduler.cancel(task.id)  # not durable, so not accepted
                raise
        handle = TaskHandle(task.id, lane, model)
        self.handles[task.id] = handle
        self._dispatch()
        return handle

    def cancel(self, task_id: str) -> CancelOutcome:
        outcome = self.scheduler.cancel(task_id)
        if outcome is CancelOutcome.CANCELLED:
            self._settle(task_id)
        elif outcome is CancelOutcome.REQUESTED:
            task = self.scheduler.get(task_id)
            if task is not None and task.lane in self.workers:
                self.workers[task.lane].send(m.CancelTask(task_id))
        return outcome

    # ----- dispatch and worker messages -----------------------------------------------------

    def _dispatch(self) -> None:
        for task in self.scheduler.dispatch():
            model, request = task.spec.payload
            worker = self.workers[task.lane]
            self._running_on[task.lane] = task.id
            handle = self.handles.get(task.id)
            if handle is not None:
                handle.last_progress_at = self.clock()
            if task.lane in DURABLE_LANES and self.store is not None:
                self.store.mark_running(task.id, time.time())
            if not worker.send(m.RunTask(task.id, model, request)):
                self._crashed(task.lane, "worker_crashed", "the worker died before the task started")

    def _from_thread(self, worker: WorkerHandle, msg: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_message, worker, worker.generation, msg)

    def _on_message(self, worker: WorkerHandle, generation: int, msg: Any) -> None:
        if generation != worker.generation:
            return  # from a process already replaced
        lane = Lane(worker.spec.lane)
        now = self.clock()
        if isinstance(msg, m.Heartbeat):
            worker.last_heartbeat = now
            if msg.progress_events != worker.last_progress_events:
                worker.last_progress_events = msg.progress_events
                running = self._running_on[lane]
                if running in self.handles:
                    self.handles[running].last_progress_at = now
            return
        worker.last_heartbeat = now
        if isinstance(msg, m.WorkerReady):
            worker.state, worker.ready_info, worker.failure = WorkerState.READY, msg, None
            log.info("%s worker ready (pid %s)", lane.value, msg.pid)
            self.scheduler.set_slots(lane, 1)
            self._dispatch()
        elif isinstance(msg, m.WorkerFailed):
            log.error("%s worker failed to start: %s", lane.value, msg.message)
            worker.failure = msg
            worker.kill()
            worker.state = WorkerState.FAILED
            self.scheduler.set_slots(lane, 0)
            self._restart_at[lane] = now + self._backoff(worker)
        elif isinstance(msg, (m.TextDelta, m.AudioChunk, m.Progress)):
            self._on_progress(msg, now)
        elif isinstance(msg, (m.TaskDone, m.TaskError, m.TaskCancelled)):
            self._on_end(lane, msg)

    def _on_progress(self, msg: m.TextDelta | m.AudioChunk | m.Progress, now: float) -> None:
        handle = self.handles.get(msg.task_id)
        if handle is None:
            return
        handle.last_progress_at = now
        if isinstance(msg, m.Progress):
            self.scheduler.progress(msg.task_id, msg.done, msg.total)
        else:
            if handle.first_output_at is None:
                handle.first_output_at = now
            if isinstance(msg, m.TextDelta):
                handle.text.append(msg.text)
            else:
                handle.audio.extend(msg.pcm)
                handle.sample_rate = msg.sample_rate
            task = self.scheduler.get(msg.task_id)
            if task is not None:
                self.scheduler.progress(msg.task_id, task.progress_done + 1)
        handle.events.put_nowait(msg)

    def _on_end(self, lane: Lane, msg: m.TaskDone | m.TaskError | m.TaskCancelled) -> None:
        if self._running_on[lane] == msg.task_id:
            self._running_on[lane] = None
        handle = self.handles.get(msg.task_id)
        if isinstance(msg, m.TaskDone):
            result = self._result(handle, msg.outcome) if handle else {}
            self.scheduler.finish(msg.task_id, TaskState.SUCCEEDED, result=result)
        elif isinstance(msg, m.TaskError):
            self.scheduler.finish(msg.task_id, TaskState.FAILED, code=msg.code, message=msg.message)
        else:
            self.scheduler.finish(
                msg.task_id, TaskState.CANCELLED, code="cancelled", message="cancelled by the client"
            )
        self._settle(msg.task_id)
        self._dispatch()

    def _result(self, handle: TaskHandle, outcome: Any) -> dict[str, Any]:
        task = self.scheduler.get(handle.task_id)
        timings = {}
        if task is not None and task.started_at is not None:
            timings["queue_ms"] = 1000 * (task.started_at - task.submitted_at)
            if handle.first_output_at is not None:
                timings["first_output_ms"] = 1000 * (handle.first_output_at - task.submitted_at)
            timings["total_ms"] = 1000 * (self.clock() - task.submitted_at)
        if isinstance(outcome, m.LLMOutcome):
            return {
                "model": handle.model,
                "text": "".join(handle.text),
                "finish_reason": outcome.finish_reason,
                "prompt_tokens": outcome.prompt_tokens,
                "completion_tokens": outcome.completion_tokens,
                "timings": timings,
            }
        if isinstance(outcome, m.ImageOutcome):
            return {
                "model": handle.model,
                "path": outcome.path,
                "width": outcome.width,
                "height": outcome.height,
                "steps": outcome.steps,
                "seed": outcome.seed,
                "paused_s": outcome.paused_s,
                "pauses": outcome.pauses,
                "timings": timings,
            }
        if isinstance(outcome, m.TTSOutcome):
            path = self.audio_dir / f"{handle.task_id}.wav"
            write_wav(path, bytes(handle.audio), outcome.sample_rate)
            return {
                "model": handle.model,
                "voice": outcome.voice,
                "sample_rate": outcome.sample_rate,
                "duration_s": outcome.duration_s,
                "audio_path": str(path),
                "timings": timings,
            }
        return {"model": handle.model, "timings": timings}

    def _settle(self, task_id: str) -> None:
        """Resolve a finished task's handle and forget it."""
        handle = self.handles.pop(task_id, None)
        task = self.scheduler.get(task_id)
        if handle is None or task is None:
            return
        if task.lane in DURABLE_LANES and self.store is not None:
            self.store.finish(
                task.id, task.state.value, time.time(), task.error_code, task.error_message, task.result
            )
        handle.events.put_nowait(None)
        if not handle.done.done():
            handle.done.set_result(task)

    # ----- supervision ---------------------------------------------------------------------

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the monitor must outlive any single bad check
                log.exception("monitor check failed")

    def check(self) -> None:
        """One supervision pass: dead or hung workers, stuck tasks, deadlines, restarts."""
        now = self.clock()
        for lane, worker in self.workers.items():
            cfg = self.config.lane(lane)
            if worker.state in (WorkerState.STARTING, WorkerState.READY) and not worker.alive:
                self._crashed(lane, "worker_crashed", f"the {lane.value} worker process died")
            elif worker.state is WorkerState.READY and now - worker.last_heartbeat > cfg.heartbeat_timeout_s:
                self._crashed(
                    lane,
                    "worker_timeout",
                    f"the {lane.value} worker stopped answering for {cfg.heartbeat_timeout_s:g} s",
                )
            elif worker.state is WorkerState.STARTING and now - worker.started_at > cfg.load_timeout_s:
                self._crashed(lane, "worker_timeout", f"the {lane.value} worker did not load in time")
            running = self._running_on[lane]
            handle = self.handles.get(running) if running else None
            if handle is not None and now - handle.last_progress_at > cfg.busy_timeout_s:
                self._crashed(
                    lane,
                    "worker_timeout",
                    f"no progress for {cfg.busy_timeout_s:g} s; the worker was replaced",
                )
            down = worker.state in (WorkerState.DEAD, WorkerState.FAILED)
            if down and now >= self._restart_at.get(lane, 0):
                log.warning("restarting the %s worker", lane.value)
                worker.restarts += 1
                worker.start()
        for task in self.scheduler.expire():
            self.workers[task.lane].send(m.CancelTask(task.id))
        for task_id in list(self.handles):
            live = self.scheduler.get(task_id)
            if live is None or live.state.finished:
                self._settle(task_id)

    def _crashed(self, lane: Lane, code: str, message: str) -> None:
        worker = self.workers[lane]
        log.error("%s: %s", lane.value, message)
        worker.kill()
        # A worker killed mid-prefill must not leave the image lane paused behind it.
        if lane is not Lane.IMAGE:
            self.board.set(lane, Activity.IDLE)
        self.scheduler.set_slots(lane, 0)
        self._fail_lane(lane, code, message)
        self._restart_at[lane] = self.clock() + self._backoff(worker)

    def _fail_lane(self, lane: Lane, code: str, message: str) -> None:
        self._running_on[lane] = None
        for task in self.scheduler.fail_running(lane, code, message):
            self._settle(task.id)

    @staticmethod
    def _backoff(worker: WorkerHandle) -> float:
        # Quick first restart; repeated failures back off so a broken model cannot spin the CPU.
        return min(RESTART_BACKOFF_MAX_S, 0.5 * 2.0 ** min(worker.restarts, 6))

    # ----- queries -------------------------------------------------------------------------

    def ready(self) -> dict[Lane, bool]:
        return {lane: w.state is WorkerState.READY for lane, w in self.workers.items()}

    def lookup(self, task_id: str) -> TaskView | None:
        """A task's state from the scheduler (live) or the durable store (finished, or from
        before a restart)."""
        task = self.scheduler.get(task_id)
        if task is not None:
            model = task.spec.payload[0] if task.spec.payload else ""
            return TaskView(
                id=task.id,
                lane=task.lane,
                model=model,
                state=task.state.value,
                priority=task.spec.priority,
                submitted_at=self.wall(task.submitted_at) or 0.0,
                started_at=self.wall(task.started_at),
                finished_at=self.wall(task.finished_at),
                queue_position=self.scheduler.position(task.id),
                progress_done=task.progress_done,
                progress_total=task.progress_total,
                eta_s=self.scheduler.eta(task.id),
                error_code=task.error_code,
                error_message=task.error_message,
                result=task.result,
            )
        st = self.store.get(task_id) if self.store is not None else None
        return None if st is None else TaskView.from_stored(st)

    def model_infos(self, lane: Lane) -> dict[str, m.ModelInfo]:
        worker = self.workers.get(lane)
        if worker is None or worker.ready_info is None:
            return {}
        return {info.name: info for info in worker.ready_info.models}


@dataclass(frozen=True)
class TaskView:
    """A task as clients see it; times are Unix seconds."""

    id: str
    lane: Lane
    model: str
    state: str
    priority: int
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    queue_position: int | None
    progress_done: int
    progress_total: int | None
    eta_s: float | None
    error_code: str | None
    error_message: str | None
    result: dict[str, Any] | None

    @classmethod
    def from_stored(cls, st: StoredTask) -> TaskView:
        steps = (st.result or {}).get("steps")
        return cls(
            id=st.id,
            lane=Lane(st.lane),
            model=st.model,
            state=st.state,
            priority=st.priority,
            submitted_at=st.submitted_at,
            started_at=st.started_at,
            finished_at=st.finished_at,
            queue_position=None,
            progress_done=steps or 0,
            progress_total=steps,
            eta_s=None,
            error_code=st.error_code,
            error_message=st.error_message,
            result=st.result,
        )


class LaneUnavailable(Exception):
    def __init__(self, lane: Lane, message: str) -> None:
        super().__init__(message)
        self.lane = lane
        self.message = message


def write_wav(path: Path, pcm: bytes, sample_rate: int) -> None:
    tmp = path.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(sample_rate)
        wf.writeframes(pcm)
    tmp.replace(path)


__all__ = ["Engine", "LaneUnavailable", "QueueFull", "TaskHandle", "TaskView", "write_wav"]
