"""The engine: the one facade the HTTP layer talks to, over the scheduler and the lane workers.

It admits work (the pure Scheduler decides), hands tasks to free worker slots, turns worker
messages into task events and, through the lane kind, into typed results; durable lanes are
kept in the task store. Supervision rules live in supervisor.py, process handling behind the
LaneWorker protocol (worker.py), lane knowledge in ris.lanes. Everything runs on the event loop
thread; time comes from the injected clocks, so unit tests drive it with fake workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ris import lanes
from ris import messages as m
from ris.config import Config
from ris.config.sharing import resolve_policy, yields_to
from ris.lanes.base import LaneKind, Seen, Timings
from ris.machine import MachineInfo, machine_info
from ris.preemption.board import ActivityBoard
from ris.preemption.policy import Activity
from ris.runtime.binding import Binding
from ris.runtime.durable import DurableTasks
from ris.runtime.files import ResultFiles
from ris.runtime.retention import Retention, SweepReport
from ris.runtime.supervisor import Fail, Limits, Restart, Supervisor, Watch, WorkerState
from ris.runtime.views import LaneStatus, TaskHandle, TaskView, WorkerStatus, stored_view, task_view
from ris.runtime.worker import LaneWorker, WorkerFactory, WorkerSpec
from ris.scheduler import CancelOutcome, QueueFull, Scheduler, TaskSpec, TaskState

log = logging.getLogger("ris.engine")

MONITOR_INTERVAL_S = 0.25
RATE_WINDOW_S = 10.0  # the window of a lane's outputs-per-second figure


class LaneUnavailable(Exception):
    """The lane is disabled, or its worker cannot start; the message says which."""

    def __init__(self, lane: str, message: str) -> None:
        super().__init__(message)
        self.lane = lane


@dataclass(eq=False)
class Replica:
    """One worker of a lane and what the engine knows of it."""

    lane: str
    worker: LaneWorker
    watch: Watch
    running: set[str] = field(default_factory=set)
    ready_info: m.WorkerReady | None = None
    failure: m.WorkerFailed | None = None

    @property
    def free_slots(self) -> int:
        if self.watch.state is not WorkerState.READY or self.ready_info is None:
            return 0
        return self.ready_info.slots - len(self.running)


class Engine:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        workers: WorkerFactory | None = None,
        machine: MachineInfo | None = None,
        monitor_interval_s: float | None = MONITOR_INTERVAL_S,
    ) -> None:
        """`workers` builds each lane's worker (default: local processes); `monitor_interval_s`
        None leaves supervision to explicit `check()` calls (unit tests with a fake clock)."""
        self.config = config
        self.clock = clock
        self.wall_clock = wall
        self.kinds: dict[str, LaneKind[Any, Any]] = {lane: lanes.kind(lane) for lane in config.lanes}
        self._policies = {lane: cfg.policy() for lane, cfg in config.lanes.items()}
        self.scheduler = Scheduler(self._policies, clock, ordering=config.scheduling)
        self.supervisor = Supervisor(clock)
        self.files = ResultFiles(Path(config.data_dir))
        self.durable: DurableTasks | None = None
        self.retention: Retention | None = None
        self._sweep: asyncio.Future[SweepReport] | None = None
        self._next_sweep = 0.0  # due at once: a first sweep at start
        self.handles: dict[str, TaskHandle] = {}
        self.replicas: dict[str, list[Replica]] = {}
        self._where: dict[str, Replica] = {}  # running task id -> the replica running it
        self._output_times: dict[str, deque[float]] = {lane: deque() for lane in config.lanes}
        self._factory = workers
        self._machine = machine
        self._monitor_interval_s = monitor_interval_s
        self._monitor: asyncio.Task[None] | None = None
        # Scheduler times are monotonic; clients see Unix times.
        self._wall_offset = wall() - clock()

    def wall(self, t: float | None) -> float | None:
        """A scheduler (monotonic) time as Unix seconds."""
        return None if t is None else t + self._wall_offset

    def _to_wall(self, t: float) -> float:
        return t + self._wall_offset

    # ----- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        data = Path(self.config.data_dir)
        self.durable = DurableTasks(data / "tasks.db", self.kinds, self.wall_clock, self._to_wall)
        folders = [k.result_folder for k in self.kinds.values() if k.result_folder]
        self.retention = Retention(self.durable.store, data, folders, self.config.retention, self.wall_clock)
        if self._factory is None and self.config.cluster.engine == "ray":
            # Imported only here: ray is an optional extra (ris[ray]).
            from ris.runtime.ray_worker import RayWorkers

            self._factory = await asyncio.to_thread(RayWorkers, self.config, asyncio.get_running_loop())
        elif self._factory is None:
            from ris.runtime.process_worker import ProcessWorkers

            self._factory = ProcessWorkers(list(self.config.lanes), asyncio.get_running_loop())
        for lane in self.config.enabled_lanes:
            self.replicas[lane] = [self._replica(lane) for _ in range(self.config.lane(lane).replicas)]
        for replica in self._all_replicas():
            replica.worker.start()
            self.supervisor.started(replica.watch)
        self._recover()
        if self._monitor_interval_s is not None:
            self._monitor = asyncio.create_task(
                self._monitor_loop(self._monitor_interval_s), name="ris-monitor"
            )

    def _replica(self, lane: str) -> Replica:
        cfg = self.config.lane(lane)
        limits = Limits(
            cfg.heartbeat_timeout_s, cfg.busy_timeout_s, cfg.load_timeout_s, self._memory_limit(lane)
        )
        replica: Replica

        def deliver(msg: object) -> None:
            self._on_message(replica, msg)

        assert self._factory is not None
        replica = Replica(
            lane, self._factory(self.worker_spec(lane), deliver), self.supervisor.watch(lane, limits)
        )
        return replica

    def _memory_limit(self, lane: str) -> int | None:
        return self.config.lane(lane).memory_limit_bytes(
            self._machine or machine_info(), self.kinds[lane].memory_share
        )

    def worker_spec(self, lane: str) -> WorkerSpec:
        cfg = self.config.lane(lane)
        kind = self.kinds[lane]
        preemptible = kind.preemptible
        return WorkerSpec(
            lane=lane,
            kind=lanes.target(lane),
            binding=Binding(
                cores=cfg.cores,
                threads=cfg.effective_threads(self._machine or machine_info()),
                nice=cfg.nice,
                gpu=cfg.gpu_index,
                memory_limit_bytes=self._memory_limit(lane),
            ),
            device=cfg.device,
            lane_config_json=cfg.model_dump_json(),
            backends={name: kind.backend_target(spec.backend) for name, spec in cfg.models.items()},
            data_dir=str(self.config.data_dir),
            preemption=resolve_policy(self.config, lane) if preemptible else None,
            yield_to=yields_to(self.config, lane),
        )

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        if self._sweep is not None:
            await asyncio.wait([self._sweep])  # it uses the store closed below
        # Durable tasks stay queued (or are re-run) after a restart; the rest end here.
        for task_id, handle in list(self.handles.items()):
            if not self.kinds[handle.lane].durable:
                self.scheduler.cancel(task_id)
        await asyncio.gather(*(r.worker.stop(5.0) for r in self._all_replicas()))
        close = getattr(self._factory, "close", None)  # a factory holding cluster resources
        if close is not None:
            close()
        for replica in self._all_replicas():
            if not self.kinds[replica.lane].durable:
                self._fail_tasks(replica, "server_shutdown", "the server is shutting down")
        for task in self.scheduler.tasks():
            if task.id in self.handles and not self.kinds[task.lane].durable and task.state.finished:
                self._settle(task.id)
        if self.durable is not None:
            self.durable.close()

    def _recover(self) -> None:
        """Resume the durable tasks a previous server accepted but did not finish."""
        assert self.durable is not None
        for st, request in self.durable.resumable(set(self.replicas)):
            spec = TaskSpec(
                lane=st.lane,
                priority=st.priority,
                payload=(st.model, request),
                deadline=self.clock() + self.config.lane(st.lane).request_timeout_s,
                priority_class=self._policies[st.lane].priority_class,
            )
            self.scheduler.submit(spec, task_id=st.id, force=True)
            self.handles[st.id] = TaskHandle(st.id, st.lane, st.model)
            log.info("resumed %s task %s (%s)", st.lane, st.id, st.state)

    # ----- requests ------------------------------------------------------------------------

    def lane_enabled(self, lane: str) -> bool:
        return lane in self.replicas

    def submit(
        self, lane: str, model: str, request: Any, *, priority: int = 0, timeout_s: float | None = None
    ) -> TaskHandle:
        """Queue a task; raises QueueFull (-> 429) or LaneUnavailable (-> 503)."""
        if lane not in self.replicas:
            raise LaneUnavailable(lane, f"the {lane} lane is disabled in the configuration")
        kind = self.kinds[lane]
        if not isinstance(request, kind.request_type):
            raise TypeError(
                f"the {lane} lane takes {kind.request_type.__name__}, not {type(request).__name__}"
            )
        failures = [r.failure for r in self.replicas[lane] if r.watch.state is WorkerState.FAILED]
        if failures and len(failures) == len(self.replicas[lane]) and failures[0] is not None:
            raise LaneUnavailable(lane, f"the {lane} worker cannot start: {failures[0].message}")
        cfg = self.config.lane(lane)
        spec = TaskSpec(
            lane=lane,
            priority=priority,
            deadline=self.clock() + (timeout_s or cfg.request_timeout_s),
            payload=(model, request),
            priority_class=self._policies[lane].priority_class,
        )
        task = self.scheduler.submit(spec)
        assert self.durable is not None
        try:
            self.durable.accepted(task, model, request)
        except Exception:
            self.scheduler.cancel(task.id)  # not durable, so not accepted
            raise
        handle = TaskHandle(task.id, lane, model)
        self.handles[task.id] = handle
        self._dispatch()
        return handle

    def submit_many(
        self, lane: str, model: str, requests: list[Any], *, priority: int = 0, timeout_s: float | None = None
    ) -> list[TaskHandle]:
        """Queue all of `requests` or none: QueueFull when the lane has no room for them all;
        if one still fails to be admitted, those admitted before it are cancelled."""
        if lane in self.replicas:  # otherwise submit() says why the lane takes nothing
            self.scheduler.require_room(lane, len(requests))
        handles: list[TaskHandle] = []
        try:
            for request in requests:
                handles.append(self.submit(lane, model, request, priority=priority, timeout_s=timeout_s))
        except BaseException:
            for handle in handles:
                self.cancel(handle.task_id)
            raise
        return handles

    def cancel(self, task_id: str) -> CancelOutcome:
        outcome = self.scheduler.cancel(task_id)
        if outcome is CancelOutcome.CANCELLED:
            self._settle(task_id)
        elif outcome is CancelOutcome.REQUESTED and task_id in self._where:
            self._where[task_id].worker.send(m.CancelTask(task_id))
        return outcome

    # ----- dispatch and worker messages -----------------------------------------------------

    def _dispatch(self) -> None:
        for task in self.scheduler.dispatch():
            model, request = task.spec.payload
            replica = max(self.replicas[task.lane], key=lambda r: r.free_slots)
            replica.running.add(task.id)
            self._where[task.id] = replica
            self.supervisor.task_started(replica.watch)
            if self.durable is not None:
                self.durable.started(task)
            if not replica.worker.send(m.RunTask(task.id, model, request)):
                self._crashed(replica, "worker_crashed", "the worker died before the task started")

    def _on_message(self, replica: Replica, msg: object) -> None:
        self.supervisor.heard(replica.watch, msg.progress_events if isinstance(msg, m.Heartbeat) else None)
        if isinstance(msg, (m.TaskOutput, m.TaskProgress)):
            self._on_progress(replica, msg)
        elif isinstance(msg, (m.TaskDone, m.TaskError, m.TaskCancelled)):
            self._on_end(replica, msg)
        elif isinstance(msg, m.WorkerReady):
            replica.ready_info, replica.failure = msg, None
            self.supervisor.ready(replica.watch)
            log.info("%s worker ready (pid %s)", replica.lane, msg.pid)
            self._update_slots(replica.lane)
            self._dispatch()
        elif isinstance(msg, m.WorkerFailed):
            log.error("%s worker failed to start: %s", replica.lane, msg.message)
            replica.failure, replica.ready_info = msg, None
            replica.worker.kill()
            self.supervisor.load_failed(replica.watch)
            self._update_slots(replica.lane)

    def _on_progress(self, replica: Replica, msg: m.TaskOutput | m.TaskProgress) -> None:
        handle = self.handles.get(msg.task_id)
        if handle is None:
            return
        self.supervisor.progressed(replica.watch)
        if isinstance(msg, m.TaskProgress):
            self.scheduler.progress(msg.task_id, msg.done, msg.total)
            handle.events.put_nowait(msg)
            return
        now = self.clock()
        times = self._output_times[handle.lane]
        times.append(now)
        while times[0] < now - RATE_WINDOW_S:  # bounded by the window, read or not
            times.popleft()
        if handle.first_output_at is None:
            handle.first_output_at = now
        handle.outputs.append(msg.data)
        task = self.scheduler.get(msg.task_id)
        if task is not None:
            self.scheduler.progress(msg.task_id, task.progress_done + 1)
        handle.events.put_nowait(msg.data)

    def _on_end(self, replica: Replica, msg: m.TaskDone | m.TaskError | m.TaskCancelled) -> None:
        if msg.task_id in replica.running:
            replica.running.discard(msg.task_id)
            self._where.pop(msg.task_id, None)
            self.supervisor.task_ended(replica.watch)
        handle = self.handles.get(msg.task_id)
        if isinstance(msg, m.TaskDone):
            try:
                result = self._result(handle, msg.outcome) if handle else None
            except Exception as e:  # noqa: BLE001 - disk full, a bad outcome, a plugin's bug
                log.exception("%s task %s: no result", replica.lane, msg.task_id)
                message = f"the result could not be stored: {type(e).__name__}: {e}"
                self.scheduler.finish(
                    msg.task_id, TaskState.FAILED, code="result_not_stored", message=message
                )
            else:
                self.scheduler.finish(msg.task_id, TaskState.SUCCEEDED, result=result)
        elif isinstance(msg, m.TaskError):
            self.scheduler.finish(msg.task_id, TaskState.FAILED, code=msg.code, message=msg.message)
        else:
            self.scheduler.finish(
                msg.task_id, TaskState.CANCELLED, code="cancelled", message="cancelled by the client"
            )
        self._settle(msg.task_id)
        if isinstance(msg, m.TaskError) and msg.code == "worker_out_of_memory":
            # The worker exits after an allocation over its OS limit: no task may go to it.
            self._crashed(replica, msg.code, f"the {replica.lane} worker ran out of memory")
        self._dispatch()

    def _result(self, handle: TaskHandle, outcome: Any) -> Any:
        task = self.scheduler.get(handle.task_id)
        timings = Timings()
        if task is not None and task.started_at is not None:
            first = handle.first_output_at
            timings = Timings(
                queue_ms=1000 * (task.started_at - task.submitted_at),
                first_output_ms=None if first is None else 1000 * (first - task.submitted_at),
                total_ms=1000 * (self.clock() - task.submitted_at),
            )
        seen = Seen(handle.task_id, handle.model, handle.outputs, timings)
        return self.kinds[handle.lane].build_result(seen, outcome, self.files)

    def _settle(self, task_id: str) -> None:
        """Resolve a finished task's handle and forget it."""
        task = self.scheduler.get(task_id)
        if task is None:
            self.handles.pop(task_id, None)  # forgotten by the scheduler: nothing to report
            return
        if not task.state.finished:
            return
        handle = self.handles.pop(task_id, None)
        if self.durable is not None:
            self.durable.finished(task)
        if handle is None:
            return
        handle.events.put_nowait(None)
        if not handle.done.done():
            handle.done.set_result(task_view(task, self.scheduler, self.wall))

    def _update_slots(self, lane: str) -> None:
        ready = [r for r in self.replicas[lane] if r.watch.state is WorkerState.READY and r.ready_info]
        self.scheduler.set_slots(lane, sum(r.ready_info.slots for r in ready if r.ready_info))

    # ----- supervision ---------------------------------------------------------------------

    async def _monitor_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the monitor must outlive any single bad check
                log.exception("monitor check failed")

    def check(self) -> None:
        """One supervision pass: dead or hung workers, restarts, deadlines."""
        for replica in self._all_replicas():
            action = self.supervisor.decide(
                replica.watch, replica.worker.alive(), replica.worker.memory_bytes()
            )
            if isinstance(action, Fail):
                self._crashed(replica, action.code, action.message)
            elif isinstance(action, Restart):
                log.warning("restarting the %s worker", replica.lane)
                replica.worker.start()
                self.supervisor.restarting(replica.watch)
        for task in self.scheduler.expire():
            if task.id in self._where:
                self._where[task.id].worker.send(m.CancelTask(task.id))
        for task_id in list(self.handles):
            self._settle(task_id)
        self._sweep_when_due()

    def _sweep_when_due(self) -> None:
        """Apply the retention policy every `sweep_interval_s`, on a thread (it reads the disk)."""
        if self.retention is None or self.clock() < self._next_sweep:
            return
        if self._sweep is not None and not self._sweep.done():
            return
        self._next_sweep = self.clock() + self.config.retention.sweep_interval_s
        self._sweep = asyncio.ensure_future(asyncio.to_thread(self.retention.sweep))
        self._sweep.add_done_callback(_log_sweep)

    def _crashed(self, replica: Replica, code: str, message: str) -> None:
        log.error("%s: %s", replica.lane, message)
        replica.worker.kill()
        replica.ready_info = None  # its models and voices went with it
        self.supervisor.killed(replica.watch)
        self._update_slots(replica.lane)
        self._fail_tasks(replica, code, message)

    def _fail_tasks(self, replica: Replica, code: str, message: str) -> None:
        # The replica's own tasks, and any the scheduler still counts as running on the lane
        # with no replica holding them (none should; a leak here would jam the lane's slots).
        held = {t for r in self.replicas[replica.lane] if r is not replica for t in r.running}
        orphans = {t.id for t in self.scheduler.tasks(replica.lane) if t.state is TaskState.RUNNING} - held
        for task_id in replica.running | orphans:
            self._where.pop(task_id, None)
            self.scheduler.finish(task_id, TaskState.FAILED, code=code, message=message)
            self._settle(task_id)
        replica.running.clear()

    def _all_replicas(self) -> list[Replica]:
        return [r for rs in self.replicas.values() for r in rs]

    # ----- queries -------------------------------------------------------------------------

    def ready(self) -> dict[str, bool]:
        return {
            lane: all(r.watch.state is WorkerState.READY for r in rs) for lane, rs in self.replicas.items()
        }

    def lookup(self, task_id: str) -> TaskView | None:
        """A task from the scheduler (live and recent) or the durable store (older, or from
        before a restart)."""
        task = self.scheduler.get(task_id)
        if task is not None:
            return task_view(task, self.scheduler, self.wall)
        st = self.durable.store.get(task_id) if self.durable is not None else None
        return None if st is None else stored_view(st, self.kinds.get(st.lane))

    def tasks(self, lane: str | None = None, state: str | None = None, limit: int = 100) -> list[TaskView]:
        """Live and recent tasks, newest first."""
        found = [t for t in self.scheduler.tasks(lane) if state is None or t.state.value == state]
        found.sort(key=lambda t: t.submitted_at, reverse=True)
        return [task_view(t, self.scheduler, self.wall) for t in found[:limit]]

    def durable_tasks(self, lane: str, state: str | None = None, limit: int = 100) -> list[TaskView]:
        """A durable lane's tasks from the store, newest first, with their live state."""
        assert self.durable is not None
        views = (self.lookup(st.id) for st in self.durable.store.recent(lane, state, limit))
        return [v for v in views if v is not None]

    def output_rate(self, lane: str) -> float:
        """The lane's streamed outputs per second over the last RATE_WINDOW_S."""
        times = self._output_times[lane]
        horizon = self.clock() - RATE_WINDOW_S
        while times and times[0] < horizon:
            times.popleft()
        return len(times) / RATE_WINDOW_S

    def activity(self, lane: str) -> Activity | None:
        """What the lane's worker publishes on the activity board now (idle, prefill, decode,
        busy); None where workers share no board (not local processes) or the lane has no slot."""
        board = getattr(self._factory, "board", None)
        if not isinstance(board, ActivityBoard) or lane not in board.lanes:
            return None
        return board.get(lane)

    def model_infos(self, lane: str) -> dict[str, m.ModelInfo]:
        """What the lane's ready workers report of their loaded models (empty while none is)."""
        for replica in self.replicas.get(lane, ()):
            if replica.watch.state is WorkerState.READY and replica.ready_info is not None:
                return {info.name: info for info in replica.ready_info.models}
        return {}

    def status(self) -> list[LaneStatus]:
        out = []
        for lane, cfg in self.config.lanes.items():
            workers = tuple(self._worker_status(r) for r in self.replicas.get(lane, ()))
            out.append(
                LaneStatus(
                    lane=lane,
                    enabled=cfg.enabled,
                    device=cfg.device,
                    cores=cfg.cores,
                    max_queue=cfg.max_queue,
                    stats=self.scheduler.stats(lane),
                    workers=workers,
                )
            )
        return out

    @staticmethod
    def _worker_status(r: Replica) -> WorkerStatus:
        usage = r.worker.usage()
        info = r.ready_info
        return WorkerStatus(
            state=r.watch.state.value,
            slots=info.slots if info else 0,
            running=len(r.running),
            restarts=r.watch.restarts,
            pid=usage.pid,
            cpu_affinity=info.cpu_affinity if info and info.cpu_affinity else None,
            threads=info.threads if info else None,
            cuda_visible_devices=info.cuda_visible_devices if info else None,
            cpu_percent=usage.cpu_percent,
            rss_bytes=usage.rss_bytes,
            memory_limit_bytes=r.watch.limits.memory_bytes,
            gpu_memory_bytes=usage.gpu_memory_bytes,
            error=r.failure.message if r.failure else None,
            node=usage.node,
            node_ip=usage.node_ip,
        )


def _log_sweep(done: asyncio.Future[SweepReport]) -> None:
    if done.cancelled():
        return
    if done.exception() is not None:
        log.error("retention sweep failed: %r", done.exception())
        return
    r = done.result()
    if r.expired or r.evicted or r.orphans:
        log.info(
            "retention: %d expired, %d over the size limit, %d orphan files; %.1f MiB freed, %.1f MiB kept",
            r.expired,
            r.evicted,
            r.orphans,
            r.bytes_freed / 2**20,
            r.bytes_kept / 2**20,
        )


__all__ = ["Engine", "LaneUnavailable", "QueueFull", "Replica", "TaskHandle", "TaskView"]
