"""The engine: the one facade the HTTP layer talks to, over the scheduler and the lane workers.

The jobs it keeps:
  - lifecycle: open the configured worker kind's pool (ris.runtime.workers), start each lane's
    replicas, resume durable tasks, stop;
  - admission: submit, all-or-none batches, cancel (the pure Scheduler decides);
  - dispatch: a queued task to the replica with the most free slots;
  - worker messages: ready/failed, outputs and progress to the task's handle, ends to results
    (built by the lane kind) and settled handles, kept in the task store for durable lanes;
  - supervision: carrying out the pure Supervisor's decisions, deadlines, retention sweeps;
  - the door for reads: task lookups and `snapshot()`, the read model of lanes, workers and
    tasks (built in ris.runtime.snapshot); every read of tasks is made for a viewer, and shows
    only the tasks it may see (ris.runtime.tenancy).
Elsewhere: worker specs (specs.py), supervision rules (supervisor.py), worker kinds behind the
WorkerPool and LaneWorker protocols (workers/), lane knowledge (ris.lanes). Everything runs on
the event loop thread; time comes from the injected clocks, so unit tests drive it with fake
workers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ris import lanes
from ris import messages as m
from ris.config import Config, ModelSpec
from ris.config.sharing import lends
from ris.failures import SERVER_FAILURES
from ris.lanes.base import LaneKind, LaneResult, Seen, Timings
from ris.machine import MachineInfo
from ris.memory.residency import expiry
from ris.runtime import data_lock
from ris.runtime.disk_room import DiskRoom
from ris.runtime.durable import DurableTasks
from ris.runtime.files import ResultFiles
from ris.runtime.metrics import WorkMeter
from ris.runtime.model_log import ModelLog, ModelLogView
from ris.runtime.replica import Replica
from ris.runtime.retention import ORPHANS_FOLDER, Retention, SweepReport, log_sweep
from ris.runtime.snapshot import OutputRates, Snapshot, TaskWindow, lane_status, task_lists
from ris.runtime.specs import memory_limit, worker_spec
from ris.runtime.store import Removal, StoredTask
from ris.runtime.supervisor import Fail, Limits, Restart, Supervisor, Watch, WorkerState
from ris.runtime.tenancy import ANONYMOUS, Principal
from ris.runtime.views import TaskHandle, TaskView, stored_view, task_view
from ris.runtime.workers import pool_class
from ris.runtime.workers.base import WorkerPool, WorkerSpec
from ris.scheduler import CancelOutcome, ModelWait, QueueFull, Scheduler, Task, TaskSpec, TaskState

log = logging.getLogger("ris.engine")

MONITOR_INTERVAL_S = 0.25
# A supervision pass this much later than due: the server, not its workers, stood still.
SERVER_STALL_S = 1.0
# How often the engine checks its data folder is still the one it locked (two stats), and
# the room left on its disk (ris.runtime.disk_room).
DATA_FOLDER_CHECK_S = 5.0

Req = TypeVar("Req", bound=m.LaneRequest)
Res = TypeVar("Res", bound=LaneResult)


class LaneUnavailable(Exception):
    """The lane is disabled, its worker cannot start, or it waits for a cluster to place it
    (`code` "lane_pending"); the message says which."""

    def __init__(
        self, lane: str, message: str, code: str = "lane_unavailable", *, disabled: bool = False
    ) -> None:
        super().__init__(message)
        self.lane = lane
        self.code = code
        self.disabled = disabled  # by the config: no retry brings it


class NotRecorded(Exception):
    """A durable lane's task whose record could not be written (`code` "storage_full" for a
    full disk, else "store_unavailable"): `outcome` says what that leaves (for a submission,
    nothing queued)."""

    def __init__(
        self,
        lane: str,
        error: Exception,
        where: Path,
        outcome: str = "nothing was queued",
        act: str = "recorded",
        then: str = " and retry",
    ) -> None:
        full = getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or getattr(
            error, "errno", None
        ) in (errno.ENOSPC, errno.EDQUOT)
        self.lane = lane
        self.code = "storage_full" if full else "store_unavailable"
        what = "the disk is full" if full else f"{type(error).__name__}: {error}"
        super().__init__(
            f"the {lane} task could not be {act} ({what}); {outcome}. "
            + (f"Free space where the server keeps its data ({where}){then}." if full else "Retry later.")
        )


class Engine:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        workers: WorkerPool | None = None,
        machine: MachineInfo | None = None,
        monitor_interval_s: float | None = MONITOR_INTERVAL_S,
    ) -> None:
        """`workers` builds each lane's worker (default: the pool of the kind `cluster.engine`
        names, opened at start); `monitor_interval_s` None leaves supervision to explicit
        `check()` calls (unit tests with a fake clock)."""
        self.config = config
        self.clock = clock
        self.wall_clock = wall
        self.kinds: dict[str, LaneKind[Any, Any, Any]] = {lane: lanes.kind(lane) for lane in config.lanes}
        keys = len(config.server.api_keys)
        self._policies = {lane: cfg.policy(keys) for lane, cfg in config.lanes.items()}
        self._scheduler = Scheduler(
            self._policies, clock, ordering=config.scheduling, unreported=lambda t: t in self._handles
        )
        self._supervisor = Supervisor(clock)
        self.files = ResultFiles(Path(config.data_dir))
        self.durable: DurableTasks | None = None
        self.retention: Retention | None = None
        self._sweep: asyncio.Future[SweepReport] | None = None
        self._next_sweep = 0.0  # due at once: a first sweep at start
        self._handles: dict[str, TaskHandle[Any]] = {}
        # Succeeded durable tasks whose end is not on disk yet: they read as running until it is
        # (a crash before the write runs them again, and a picture already fetched would be
        # drawn anew under the same id).
        self._recording: set[str] = set()
        # Lanes whose every worker has been up (ready, or pending on its cluster) at once: from
        # then on /ready holds them while min_replicas serve (Engine.ready).
        self._filled: set[str] = set()
        self._replicas: dict[str, list[Replica]] = {}
        self._where: dict[str, Replica] = {}  # running task id -> the replica running it
        self._rates = OutputRates(config.lanes)
        self._meter = WorkMeter(clock)  # counters and histograms for /metrics and `ris status`
        self._lending_lanes = frozenset(lane for lane in config.lanes if lends(config, lane))
        for lane in config.enabled_lanes:
            models = config.lane(lane).models
            self._meter.declare(lane, models, self.kinds[lane].counters, SERVER_FAILURES)
        # Loads and evictions the workers report, timed as tasks are (their finished_at).
        self._model_log = ModelLog(lambda: self._to_wall(self.clock()))
        self._pool = workers
        self._machine = machine
        self._monitor_interval_s = monitor_interval_s
        self._monitor: asyncio.Task[None] | None = None
        # Set once stop() begins: no task is sent to a worker that is being told to stop (a
        # durable task would count an attempt it never made, and be lost at the second).
        self._stopping = False
        # Set when a stop signal reached the server (stop_signalled): the workers may have had
        # it too, and a death now is the stop, not a crash to fail tasks for and restart.
        self._stop_signalled = False
        self._holds_data = False  # the data folder's lock (ris.runtime.data_lock), from start to stop
        self._next_folder_check = 0.0
        self._folder_check: asyncio.Future[bool] | None = None
        self.folder_lost = False
        # Room on the data folder's disk for durable results, read with its lock check.
        self.disk_room = DiskRoom(
            Path(config.data_dir),
            [lane for lane in config.enabled_lanes if self.kinds[lane].durable],
            self._scheduler.hold,
            self._dispatch,
        )
        # What happens once the data folder is gone from under the engine (deleted, moved):
        # `ris serve` stops, exit status 1; an embedder decides (the engine says so in the log
        # and sweeps no more).
        self.on_folder_lost: Callable[[], None] = lambda: None
        # Scheduler times are monotonic; clients see Unix times.
        self._wall_offset = wall() - clock()

    def _wall(self, t: float | None) -> float | None:
        """A scheduler (monotonic) time as Unix seconds."""
        return None if t is None else t + self._wall_offset

    def _to_wall(self, t: float) -> float:
        return t + self._wall_offset

    # ----- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        data = Path(self.config.data_dir)
        # Before anything reads the store: a second server on this folder must touch nothing.
        data_lock.acquire(data, self.config.server.port, engine=True)
        self._holds_data = True
        self._stopping = self._stop_signalled = False
        self.folder_lost, self._next_folder_check = False, 0.0
        self.disk_room.closed = False
        try:
            await self._start(data)
        except BaseException:
            data_lock.release(data, engine=True)  # a start that failed holds nothing
            self._holds_data = False
            raise

    async def _start(self, data: Path) -> None:
        self.durable = DurableTasks(data / "tasks.db", self.kinds, self.wall_clock, self._to_wall)
        folders = [k.result_folder for k in self.kinds.values() if k.result_folder]
        self.retention = Retention(self.durable.store, data, folders, self.config.retention, self.wall_clock)
        if self._pool is None:
            # Imported only now, the chosen kind alone (ray is an optional extra, ris[ray]).
            opener = pool_class(self.config.cluster.engine)
            self._pool = await asyncio.to_thread(opener, self.config, asyncio.get_running_loop())
        for lane in self.config.enabled_lanes:
            self._replicas[lane] = [self._replica(lane) for _ in range(self.config.lane(lane).replicas)]
        # Each lane's min_replicas first: on a cluster that Ray cannot host whole, a lane's
        # extras should not take the room another lane's only worker needs (Ray mostly places
        # in the order asked; the start check proved the minimum fits).
        minimum = {lane: self.config.lane(lane).min_replicas for lane in self._replicas}
        needed = [r for lane, rs in self._replicas.items() for r in rs[: minimum[lane]]]
        extras = [r for lane, rs in self._replicas.items() for r in rs[minimum[lane] :]]
        for replica in (*needed, *extras):
            replica.worker.start()
            self._supervisor.started(replica.watch)
        self._recover()
        if self._monitor_interval_s is not None:
            self._monitor = asyncio.create_task(
                self._monitor_loop(self._monitor_interval_s), name="ris-monitor"
            )

    def _replica(self, lane: str) -> Replica:
        cfg = self.config.lane(lane)
        limits = Limits(
            cfg.heartbeat_timeout_s,
            cfg.busy_timeout_s,
            cfg.load_timeout_s,
            memory_limit(self.config, lane, self._machine),
        )
        replica: Replica

        def deliver(msg: object) -> None:
            self._on_message(replica, msg)

        assert self._pool is not None
        replica = Replica(
            lane, self._pool(self.worker_spec(lane), deliver), self._supervisor.watch(lane, limits)
        )
        return replica

    def worker_spec(self, lane: str) -> WorkerSpec:
        """What each worker of `lane` is started with."""
        return worker_spec(self.config, lane, self._machine)

    async def stop(self) -> None:
        try:
            await self._stop()
        finally:  # a stop that failed or was cancelled still gives the data folder back
            if self._holds_data:
                data_lock.release(Path(self.config.data_dir), engine=True)
                self._holds_data = False

    def stop_signalled(self) -> None:
        """A stop signal reached the server (SIGTERM, SIGINT, SIGHUP): the stop follows within
        moments. A signal sent to the whole process group (systemd's default KillMode, `kill --
        -PGID`) ends the workers at once with SIGTERM's default; seen as crashes, their running
        images failed for good (set aside at a stop, they run again at the next start) and the
        workers were restarted into the stop. From here the supervisor's pass leaves dead
        workers to the stop."""
        self._stop_signalled = True

    def end_live_tasks(self) -> None:
        """The server is stopping and its HTTP server will soon cancel the answers still being
        written (a plain-text 500, a stream cut without a word): every task that does not
        outlive the server (all but durable ones, and of those the ones whose caller waits on
        its connection) ends now, failed with `server_shutdown`, so each client hears it in its
        API's words; their workers are told to stop computing them. Nothing is dispatched from
        here on. `stop()` does the rest."""
        self._stopping = True
        message = "the server is shutting down"
        for task_id, handle in list(self._handles.items()):
            if self.kinds[handle.lane].durable and handle.resumable:
                continue  # set aside by stop(), run again at the next start
            replica = self._where.get(task_id)
            if replica is not None:  # its end, when the worker reports it, does the bookkeeping
                replica.worker.send(m.CancelTask(task_id))
            if self._scheduler.finish(task_id, TaskState.FAILED, code="server_shutdown", message=message):
                self._settle(task_id)

    async def _stop(self) -> None:
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
        if self._sweep is not None:
            await asyncio.wait([self._sweep])  # it uses the store closed below
        if self._folder_check is not None:
            await asyncio.wait([self._folder_check])
        self.disk_room.closed = True  # its answer changes nothing now (a hung mount's: no wait)
        # Durable tasks stay queued (or are re-run) after a restart; the rest end here.
        for task_id, handle in list(self._handles.items()):
            if not self.kinds[handle.lane].durable:
                self._scheduler.cancel(task_id)
        await asyncio.gather(*(r.worker.stop(5.0) for r in self._all_replicas()))
        if self._pool is not None:
            # Off the loop: it waits (a cluster's groups freed, up to 15 s; cgroups emptied).
            await asyncio.to_thread(self._pool.close)
        for replica in self._all_replicas():
            if not self.kinds[replica.lane].durable:
                self._fail_tasks(replica, "server_shutdown", "the server is shutting down")
        for task in self._scheduler.tasks():
            if task.id in self._handles and not self.kinds[task.lane].durable and task.state.finished:
                self._settle(task.id)
        if self.durable is not None:
            kept: dict[str, list[int]] = {}  # lane: [running, queued]
            for task in self._scheduler.tasks():
                if task.state is TaskState.RUNNING:
                    self.durable.set_aside(task)  # cut by this stop, not by a crash
                if self.durable.durable(task.lane) and not task.state.finished and not task.cancel_requested:
                    kept.setdefault(task.lane, [0, 0])[task.state is not TaskState.RUNNING] += 1
            # The start names what it resumes; the stop said nothing of what it kept.
            for lane, (running, queued) in kept.items():
                log.info(
                    "%s: %d running task(s) set aside and %d queued kept: they run at the next start",
                    lane,
                    running,
                    queued,
                )
            await asyncio.to_thread(self.durable.close)  # the queued writes reach the disk first

    def _recover(self) -> None:
        """Resume the durable tasks a previous server accepted but did not finish, with the
        run times their lanes took before (their ETAs)."""
        assert self.durable is not None
        # How long each lane's worker took to start last time, for the ETAs of the tasks that
        # wait for this first start (ready replaces it with this start's own).
        for lane, seconds in self.durable.store.start_times().items():
            for replica in self._replicas.get(lane, ()):
                if replica.start_s is None:
                    replica.start_s = seconds
        for lane in self._replicas:  # (lanes whose tasks the store keeps: images, speech)
            kind, models = self.kinds[lane], self.config.lane(lane).models
            stored = self.durable.store.run_times(lane)
            runs = [(t, _work(kind, models.get(model), data)) for t, model, data in stored]
            self._scheduler.learned_run_times(lane, runs)
        for st, request in self.durable.resumable(set(self._replicas)):
            kind, model = self.kinds[st.lane], self.config.lane(st.lane).models.get(st.model)
            if model is None:  # renamed or removed since: its worker failed it with a KeyError
                configured = ", ".join(self.config.lane(st.lane).models)
                why = f"model {st.model!r} is no longer configured (the {st.lane} lane has: {configured})"
                self.durable.fail_at_start(st, "model_not_found", why)
                continue
            spec = TaskSpec(
                lane=st.lane,
                priority=st.priority,
                payload=(st.model, request),
                # The client's own timeout, kept on disk; else the lane's, from now.
                deadline=self.clock() + self.config.lane(st.lane).request_timeout_s
                if st.deadline is None
                else st.deadline - self._wall_offset,
                priority_class=self._policies[st.lane].priority_class,
                owner=st.owner,
                # Its share of the lane's slots as when first accepted: the same client, and
                # costly as its request is (a fact of the request, judged again).
                client=st.client,
                costly=kind.costly(request),
                work=kind.work(request, model),
                progress_total=kind.planned_progress(request, model),
            )
            # Its first submission's time, on the scheduler's clock: clients see the time they
            # submitted it, and the queue keeps the order of first submission.
            self._scheduler.submit(
                spec, task_id=st.id, force=True, submitted_at=st.submitted_at - self._wall_offset
            )
            self._handles[st.id] = self._handle(st.id, kind, st.model)
            log.info("resumed %s task %s (%s)", st.lane, st.id, st.state)
        # Those ended here count as any task's end: an alert on ris_tasks_total{outcome="failed"}
        # never saw a task interrupted twice.
        for lane, named, outcome, code in self.durable.ended_at_start:
            self._meter.finished(lane, named, outcome, latency_s=None, code=code)
            self._scheduler.count_ended(lane, TaskState(outcome))
        self.durable.ended_at_start.clear()

    # ----- requests ------------------------------------------------------------------------

    def lane_enabled(self, lane: str) -> bool:
        return lane in self._replicas

    def submit(
        self,
        kind: LaneKind[Req, Any, Res],
        model: str,
        request: Req,
        *,
        priority: int = 0,
        timeout_s: float | None = None,
        client: str | None = None,
        owner: str | None = None,
        keep_alive_s: float | None = None,
        keep_files: bool = True,
        retry: bool = False,
        resumable: bool = True,
        streamed: bool = True,
    ) -> TaskHandle[Res]:
        """Queue a task of `kind`'s lane (e.g. `ris.lanes.llm.LANE`); its handle's view holds
        the kind's result type. `client`: who asks, for fairness across clients (the lane's
        client_share); `owner`: the key it belongs to (ris.runtime.tenancy), kept with it and,
        for a durable lane, in the store; `keep_alive_s`: how long its model stays loaded once
        idle after it (None: the lane's keep_alive_s). `keep_files=False`: the caller streams
        the result from the handle's events and nobody asked for a file, so the task's files go
        as it ends (readers already streaming read on) and it leaves no record in the store: no
        fsync'd row, no file to sweep, for speech that was only streamed. A durable lane always
        keeps its own. `retry`: the caller's own retry of a refused submission (the speaking
        pipeline waiting for room), not counted as another refusal. `resumable=False`: a durable
        lane's task whose caller waits for it on its connection (a synchronous route), not run
        again after a restart, for nobody. `streamed=False`: the caller reads only the result
        once the task ended, never its events as they come, so the worker may send its outputs
        later and in fewer messages. Raises QueueFull (-> 429) or LaneUnavailable (-> 503)."""
        lane = kind.name
        if not keep_files and kind.durable:
            raise ValueError(f"the {lane} lane is durable: its tasks keep their files")
        self.require_serving(lane)
        if self.kinds[lane] is not kind:
            raise TypeError(f"{kind!r} is not the {lane} lane kind this engine was configured with")
        # A request from the generic API (or an untyped caller) is checked here, once.
        if not isinstance(request, kind.request_type):
            raise TypeError(
                f"the {lane} lane takes {kind.request_type.__name__}, not {type(request).__name__}"
            )
        request = kind.owned(request, owner)
        cfg = self.config.lane(lane)
        model_spec = cfg.models.get(model)
        spec = TaskSpec(
            lane=lane,
            priority=priority,
            deadline=self.clock() + (timeout_s or cfg.request_timeout_s),
            payload=(model, request),
            priority_class=self._policies[lane].priority_class,
            client=client,
            owner=owner,
            costly=kind.costly(request),
            load_s=self._load_ahead(lane, model),
            work=kind.work(request, model_spec),
            progress_total=kind.planned_progress(request, model_spec),
        )
        try:
            task = self._scheduler.submit(spec, retry=retry)
        except QueueFull as e:
            e.retry_after_s += self._start_left(lane)
            raise
        assert self.durable is not None
        try:
            # Only a client's own timeout is kept on disk: the lane's default counts again from
            # a restart (an outage longer than request_timeout_s failed every queued image).
            self.durable.accepted(task, model, request, resumable=resumable, keep_deadline=bool(timeout_s))
        except Exception as e:
            self._scheduler.withdraw(task.id)  # not durable, so not accepted: no trace of it
            if isinstance(e, (OSError, sqlite3.Error)):
                raise NotRecorded(lane, e, Path(self.config.data_dir)) from e
            raise
        handle = self._handle(task.id, kind, model, keep_files=keep_files)
        handle.keep_alive_s = keep_alive_s
        handle.streamed = streamed
        handle.resumable = resumable
        self._handles[task.id] = handle
        self._dispatch()
        return handle

    def _load_ahead(self, lane: str, model: str) -> float:
        """The load a task for `model` will wait for: none while it is loaded (ModelLog says
        how long one takes otherwise)."""
        for replica in self._replicas.get(lane, ()):
            if replica.ready and replica.ready_info is not None:  # as model_infos, without a copy
                if model in replica.models:
                    return 0.0
                break
        return self._model_log.expected_load_s(lane, model)

    def _handle(
        self, task_id: str, kind: LaneKind[Any, Any, Res], model: str, *, keep_files: bool = True
    ) -> TaskHandle[Res]:
        collector = kind.collector(task_id, self.files, keep=keep_files)
        handle = TaskHandle(task_id, kind, model, collector=collector)
        handle.keep_files = keep_files
        return handle

    def start_failure(self, lane: str) -> str | None:
        """Why the lane's last worker start failed, while none of its workers is ready (None:
        one is, or no start failed)."""
        replicas = self._replicas.get(lane, [])
        if any(r.ready for r in replicas):
            return None
        return next((r.failure.message for r in replicas if r.failure is not None), None)

    def require_serving(self, lane: str) -> None:
        """Raise LaneUnavailable where the lane cannot take work: its every worker failed to
        start, or waits for its cluster (`lane_pending`). Routes that need a worker's word before
        they submit (a voice's model, its sample rate) ask this first, to refuse as submit would."""
        if lane not in self._replicas:
            raise LaneUnavailable(lane, f"the {lane} lane is disabled in the configuration", disabled=True)
        if self._stopping:  # after end_live_tasks: nothing more is dispatched
            raise LaneUnavailable(lane, "the server is shutting down", "server_shutdown")
        replicas = self._replicas[lane]
        if replicas and all(r.worker.waiting_for() for r in replicas):
            # Accepted, it would wait behind a false ETA for a placement that may never come.
            # (Said first: a worker that died while its cluster was away did not fail to start.)
            waiting = replicas[0].worker.waiting_for()
            raise LaneUnavailable(lane, f"the {lane} lane cannot serve yet: {waiting}", "lane_pending")
        if replicas and all(_cannot_start(r) for r in replicas):
            failure = next((r.failure for r in replicas if r.failure is not None), None)
            if failure is not None:
                raise LaneUnavailable(lane, f"the {lane} worker cannot start: {failure.message}")

    def submit_many(
        self,
        kind: LaneKind[Req, Any, Res],
        model: str,
        requests: list[Req],
        *,
        priority: int = 0,
        timeout_s: float | None = None,
        client: str | None = None,
        owner: str | None = None,
        resumable: bool = True,
    ) -> list[TaskHandle[Res]]:
        """Queue all of `requests` or none: QueueFull when the lane has no room for them all;
        if one still fails to be admitted, those admitted before it are cancelled."""
        if kind.name in self._replicas:  # otherwise submit() says why the lane takes nothing
            try:
                self._scheduler.require_room(kind.name, len(requests), client)
            except QueueFull as e:
                e.retry_after_s += self._start_left(kind.name)
                starting = [r for r in self._replicas[kind.name] if r.watch.state is WorkerState.STARTING]
                if e.most is not None and starting:
                    e.most = None  # a replica still starting may bring the slots it lacks: a 429
                    self._scheduler.count_refusal(kind.name)
                raise
        handles: list[TaskHandle[Res]] = []
        try:
            for request in requests:
                handles.append(
                    self.submit(
                        kind,
                        model,
                        request,
                        priority=priority,
                        timeout_s=timeout_s,
                        client=client,
                        owner=owner,
                        resumable=resumable,
                    )
                )
        except BaseException:
            for handle in handles:
                self.cancel(handle.task_id)
            raise
        return handles

    def cancel(self, task_id: str) -> CancelOutcome:
        outcome = self._scheduler.cancel(task_id)
        if outcome is CancelOutcome.UNKNOWN and self.durable is not None:
            # Finished before this server's start: only the store knows it, and it has ended.
            stored = self.durable.store.get(task_id)
            if stored is not None and stored.state in {s.value for s in TaskState if s.finished}:
                return CancelOutcome.FINISHED
            if stored is not None and stored.lane not in self._replicas:
                # Kept for a start with its lane on (DurableTasks.resumable): cancelled on disk.
                self.durable.cancel_kept(stored)
                return CancelOutcome.CANCELLED
        if outcome is CancelOutcome.CANCELLED:
            self._settle(task_id)
        elif outcome is CancelOutcome.REQUESTED and task_id in self._where:
            self._where[task_id].worker.send(m.CancelTask(task_id))
            task = self._scheduler.get(task_id)
            if self.durable is not None and task is not None:
                self.durable.cancel_asked(task)
        return outcome

    async def cancel_recorded(self, task_id: str) -> CancelOutcome:
        """cancel(), answered once the store has the cancel on disk where the task is durable: a
        server killed right after the client was told "cancelled" must not run it again at its
        next start (the write is on the store's thread: the loop goes on meanwhile)."""
        task = self._scheduler.get(task_id)
        outcome = self.cancel(task_id)
        if (
            self.durable is not None
            and (task is None or self.durable.durable(task.lane))  # None: a task kept on disk
            and outcome in (CancelOutcome.CANCELLED, CancelOutcome.REQUESTED)
        ):
            await asyncio.wrap_future(self.durable.store.flushed())
            if self.durable.store.held_writes:
                # flushed() counts a write held for want of room as done: the cancel waits in
                # memory behind the held ones, and a restart before there is room ran the task
                # (it answered "cancelled", and the picture was made after the restart).
                stored = self.durable.store.get(task_id) if task is None else None
                raise NotRecorded(
                    task.lane if task is not None else stored.lane if stored is not None else "durable",
                    OSError(errno.ENOSPC, "no space left on the device"),
                    Path(self.config.data_dir),
                    outcome="the cancel is in effect now, but a restart before there is room "
                    "would run the task again",
                    act="cancelled on disk",
                    then=": the cancel is written once there is room",
                )
        return outcome

    async def delete(self, view: TaskView[Any]) -> None:
        """Delete a finished task for good, at its owner's word (a picture or a voice recording
        not to be kept until the retention policy's max_age_h): its record, then its result
        files, then the scheduler's memory of it. The record first: a full disk refuses its
        deletion (SQLite needs room to delete), and nothing is gone (NotRecorded, 507); files
        first left a task that read succeeded with its picture gone (an operator's run). A
        crash between the two leaves files no record names, which the retention sweep sets
        aside and deletes. The disk work is on a thread: the loop only moves bytes."""
        if view.state in ("queued", "running"):
            raise ValueError(f"task {view.id} is {view.state}: only a finished task is deleted")
        kind = self.kinds.get(view.lane)
        folder = kind.result_folder if kind is not None else None

        def remove() -> None:
            if self.durable is not None:
                try:
                    if self.durable.store.held_writes:
                        # A write held for room may be this task's end: the row on disk still
                        # says running, a DELETE of finished rows matches none, and the held
                        # end would bring the task back, its files gone (a review).
                        raise OSError(errno.ENOSPC, "writes wait for room on the disk")
                    self.durable.store.delete([view.id])  # returns once the row is gone on disk
                except Exception as e:  # noqa: BLE001 - a full disk, a store that failed: said
                    raise NotRecorded(
                        view.lane,
                        e,
                        Path(self.config.data_dir),
                        outcome="its record and its files are as they were",
                        act="deleted",
                    ) from e
            if folder is not None:
                # Every file of the task's, not only those its result names: the encoded
                # copies a player asked for (`<id>.mp3` beside `<id>.wav`), one being written
                # (`<id>.mp3.<hex>.tmp`), one a sweep set aside (ids are hex: no glob syntax).
                where = self.files.folder(folder)
                for path in (*where.glob(f"{view.id}.*"), *(where / ORPHANS_FOLDER).glob(f"{view.id}.*")):
                    path.unlink(missing_ok=True)

        await asyncio.to_thread(remove)
        self._scheduler.forget([view.id])

    def keep_model(self, lane: str, model: str, keep_alive_s: float | None) -> None:
        """How long `model` stays loaded once idle, from now, on every worker of `lane` that
        has it (m.KeepModel; 0: unloaded as soon as nothing runs on it). A worker that has not
        loaded it does nothing."""
        for replica in self._replicas.get(lane, ()):
            replica.worker.send(m.KeepModel(model, keep_alive_s))
            if any(self._model_of(t) == model for t in replica.running):
                replica.kept[model] = keep_alive_s  # for the end of its tasks (_expect_expiry)

    # ----- dispatch and worker messages -----------------------------------------------------

    def _dispatch(self) -> None:
        if self._stopping:
            return
        for task in self._scheduler.dispatch():
            if task.state.finished:
                # A send to a dead worker earlier in this batch failed the lane's running tasks
                # that no replica held yet, this one among them: answered, not sent anywhere.
                continue
            model, request = task.spec.payload
            replicas = self._replicas[task.lane]
            replica = replicas[0] if len(replicas) == 1 else max(replicas, key=lambda r: r.free_slots)
            replica.running.add(task.id)
            handle = self._handles.get(task.id)
            # The latest request's keep_alive wins over one asked before it, whichever ends
            # last (residency.started): the expiry its end will set (_expect_expiry).
            replica.kept[model] = handle.keep_alive_s if handle is not None else None
            self._where[task.id] = replica
            self._supervisor.task_started(replica.watch)
            if self.durable is not None:
                self.durable.started(task)
            if task.queue_wait is not None:
                self._meter.started(task.lane, handle.model if handle is not None else model, task.queue_wait)
            keep_alive = handle.keep_alive_s if handle is not None else None
            streamed = handle.streamed if handle is not None else True
            if not replica.worker.send(m.RunTask(task.id, model, request, keep_alive, streamed)):
                self._crashed(replica, "worker_crashed", "the worker died before the task started")

    def _on_message(self, replica: Replica, msg: object) -> None:
        if isinstance(msg, m.WorkerGone):  # not a word from the worker: no heartbeat either
            replica.exiting = True
            self._update_slots(replica.lane)
            return
        self._supervisor.heard(replica.watch, msg.progress_events if isinstance(msg, m.Heartbeat) else None)
        if isinstance(msg, m.Heartbeat):
            if msg.borrowed_cores is not None:
                replica.lending = msg
            if msg.engine is not None:
                replica.engine = msg.engine
        if isinstance(msg, (m.TaskOutput, m.TaskProgress)):
            self._on_progress(replica, msg)
        elif isinstance(msg, (m.TaskDone, m.TaskError, m.TaskCancelled)):
            self._on_end(replica, msg)
        elif isinstance(msg, m.WorkerExiting):
            log.warning("%s worker exits (%s): no more work for it", replica.lane, msg.reason)
            replica.exiting = True
            self._update_slots(replica.lane)
        elif isinstance(msg, (m.ModelsHeld, m.ModelLoading, m.ModelLoaded)):
            self._on_model_wait(replica, msg)
        elif isinstance(msg, m.ModelExpiry):
            due = msg.expires_in_s
            replica.expiries[msg.name] = None if due is None else self.clock() + due
        elif isinstance(msg, m.ModelUnloaded):
            replica.models.pop(msg.name, None)
            replica.expiries.pop(msg.name, None)
            self._model_log.unloaded(replica.lane, msg.name, msg.reason)
            log.info("%s: model %s unloaded (%s)", replica.lane, msg.name, msg.reason)
        elif isinstance(msg, m.WorkerReady):
            replica.ready_info, replica.failure = msg, None
            replica.forget_waits()
            replica.models = {info.name: info for info in msg.models}
            replica.expiries = dict.fromkeys(replica.models)  # their ModelExpiry follows, if any
            for info in msg.models:
                self._model_log.loaded(replica.lane, info.name, info.load_s, at_start=True)
            if msg.memory_limit_bytes is not None:
                # The ceiling its machine set (a Ray node's share of its own memory) is the one
                # the watchdog holds it to; locally it is the one the engine gave.
                replica.watch.limits = dataclasses.replace(
                    replica.watch.limits, memory_bytes=msg.memory_limit_bytes
                )
            self._supervisor.ready(replica.watch)
            replica.start_s = replica.watch.ready_at - replica.watch.started_at
            if self.durable is not None:
                self.durable.store.note_start(replica.lane, replica.start_s)
            self._note_filled(replica.lane)
            log.info("%s worker ready (pid %s)", replica.lane, msg.pid)
            self._update_slots(replica.lane)
            self._dispatch()
        elif isinstance(msg, m.WorkerFailed):
            log.error("%s worker failed to start: %s", replica.lane, msg.message)
            replica.failure, replica.ready_info = msg, None
            replica.worker.kill()
            self._supervisor.load_failed(replica.watch)
            self._update_slots(replica.lane)
            replicas = self._replicas[replica.lane]
            if all(r.watch.state is WorkerState.FAILED and _start_fails(r.watch) for r in replicas):
                # Refused from now on (require_serving): those queued before fail the same way
                # at once, not at their deadline behind starts that may fail every time.
                why = f"the {replica.lane} worker cannot start: {msg.message}"
                for task_id in self._fail_queued(replica.lane, "lane_unavailable", why):
                    self._settle(task_id)

    def _start_left(self, lane: str) -> float:
        """Seconds until the lane's first worker is expected up (0: one serves, or none of its
        starts is under way here): a full queue of a starting lane frees nothing before then."""
        replicas = self._replicas.get(lane, ())
        starting = [r.start_left(self.clock()) for r in replicas if not r.worker.waiting_for()]
        if not starting or any(r.ready for r in replicas):
            return 0.0
        return min(starting)

    def _waiting_for_start(self, lane: str, view: TaskView[Any]) -> TaskView[Any]:
        """A queued task of a lane with no worker ready (starting, restarting after a crash or
        a server restart): it says so (waiting_for "worker_start"), and its ETA counts what is
        left of the start, as long as the last one took (none known before a first start). Its
        ETA stood still for the whole start before, saying nothing of why."""
        replicas = self._replicas.get(lane, ())
        if not replicas or any(r.ready for r in replicas):
            return view
        if all(r.worker.waiting_for() for r in replicas):
            # Its cluster has not placed a worker (a head or a node lost): when it will is not
            # known, and an estimate would be a guess (a durable image waits; others are refused).
            return dataclasses.replace(view, waiting_for="lane_pending", eta_s=None)
        left = self._start_left(lane)
        eta = None if view.eta_s is None else view.eta_s + left
        return dataclasses.replace(view, waiting_for="worker_start", eta_s=eta)

    def _expect_expiry(self, replica: Replica, task_id: str) -> None:
        """The expiry a task's end sets for its model, now idle, as its worker will tell it
        (m.ModelExpiry, sent after the end): until then /api/ps, asked by a client the moment
        its `keep_alive: 0` answer came, said the model was kept for ever."""
        model = self._model_of(task_id)
        if (
            model is None
            or model not in replica.models
            or any(self._model_of(t) == model for t in replica.running)
        ):
            return
        if model in replica.kept:  # the latest request's, or one asked since: as the worker's
            asked = replica.kept.pop(model)
        else:
            handle = self._handles.get(task_id)
            asked = handle.keep_alive_s if handle is not None else None
        ttl = self.config.lane(replica.lane).keep_alive_s if asked is None else asked
        replica.expiries[model] = expiry(self.clock(), ttl)

    def _on_model_wait(self, replica: Replica, msg: m.ModelsHeld | m.ModelLoading | m.ModelLoaded) -> None:
        """What the worker says of the models its tasks wait for; a task that waited and no
        longer does has its model: its own run begins (Scheduler.model_ready)."""
        waited = self._waiting_for_model(replica)
        if isinstance(msg, m.ModelsHeld):
            replica.held = msg
        elif isinstance(msg, m.ModelLoading):
            replica.loading = (msg.name, self.clock())
            self._supervisor.loading(replica.watch)
        else:
            if replica.loading is not None and replica.loading[0] == msg.info.name:
                replica.loading = None
                self._supervisor.loaded(replica.watch)
            replica.models[msg.info.name] = msg.info
            replica.expiries[msg.info.name] = None  # until its ModelExpiry, if it has one
            self._model_log.loaded(replica.lane, msg.info.name, msg.info.load_s)
            log.info("%s: model %s loaded in %.2f s", replica.lane, msg.info.name, msg.info.load_s or 0.0)
        for task_id in waited - self._waiting_for_model(replica):
            self._scheduler.model_ready(task_id)

    def _waiting_for_model(self, replica: Replica) -> set[str]:
        """The running tasks `replica` holds for a switch or whose model it is loading."""
        held = set(replica.held.task_ids) & replica.running
        if replica.loading is None:
            return held
        model = replica.loading[0]
        return held | {t for t in replica.running if self._model_of(t) == model}

    def _on_progress(self, replica: Replica, msg: m.TaskOutput | m.TaskProgress) -> None:
        handle = self._handles.get(msg.task_id)
        if handle is None:
            return
        self._supervisor.progressed(replica.watch)
        now = self.clock()
        if isinstance(msg, m.TaskProgress):  # an image's step: its time, pauses included
            if handle.last_output_at is not None:
                self._meter.output_gap(handle.lane, handle.model, now - handle.last_output_at)
            handle.last_output_at = now
            self._scheduler.progress(msg.task_id, msg.done, msg.total)
            handle.events.put_nowait(msg)
            return
        self._rates.output(handle.lane, now)
        task = self._scheduler.get(msg.task_id)
        if handle.first_output_at is None:
            handle.first_output_at = now
            if task is not None:
                self._meter.first_output(handle.lane, handle.model, now - task.submitted_at)
        elif handle.last_output_at is not None:
            self._meter.output_gap(handle.lane, handle.model, now - handle.last_output_at)
        handle.last_output_at = now
        event = handle.collector.add(msg.data)
        if task is not None:
            self._scheduler.progress(msg.task_id, task.progress_done + 1)
        handle.events.put_nowait(event)

    def _on_end(self, replica: Replica, msg: m.TaskDone | m.TaskError | m.TaskCancelled) -> None:
        if msg.task_id in replica.running:
            replica.running.discard(msg.task_id)
            if replica.loading is not None and self._model_of(msg.task_id) == replica.loading[0]:
                # While a load runs the worker ends no task: an end for a task of the loading
                # model is the load failing (a TaskError, or a TaskCancelled when the task was
                # cancelled meanwhile); after ModelLoaded nothing is loading anyway.
                replica.loading = None
                self._supervisor.loaded(replica.watch)
            self._where.pop(msg.task_id, None)
            self._supervisor.task_ended(replica.watch)
            self._expect_expiry(replica, msg.task_id)
        handle = self._handles.get(msg.task_id)
        if isinstance(msg, m.TaskDone):
            try:
                result = self._result(handle, msg.outcome) if handle else None
            except Exception as e:  # noqa: BLE001 - disk full, a bad outcome, a plugin's bug
                message = f"the result could not be stored: {type(e).__name__}: {e}"
                full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
                if full:  # the disk, not a defect: one line per task, no traceback to alert on
                    log.error("%s task %s: no result: %s", replica.lane, msg.task_id, message)
                else:
                    log.exception("%s task %s: no result", replica.lane, msg.task_id)
                code = "storage_full" if full else "result_not_stored"  # 507, as for a record
                self._scheduler.finish(msg.task_id, TaskState.FAILED, code=code, message=message)
            else:
                self._scheduler.finish(msg.task_id, TaskState.SUCCEEDED, result=result)
        elif isinstance(msg, m.TaskError):
            self._scheduler.finish(msg.task_id, TaskState.FAILED, code=msg.code, message=msg.message)
        else:
            self._scheduler.finish(
                msg.task_id, TaskState.CANCELLED, code="cancelled", message="cancelled by the client"
            )
        self._settle(msg.task_id)
        if isinstance(msg, m.TaskError) and msg.code == "worker_out_of_memory":
            # The worker exits after an allocation over its OS limit: no task may go to it.
            self._crashed(replica, msg.code, f"the {replica.lane} worker ran out of memory")
        self._dispatch()

    def _result(self, handle: TaskHandle[Res], outcome: Any) -> Res:
        task = self._scheduler.get(handle.task_id)
        timings = Timings()
        if task is not None and task.started_at is not None:
            first = handle.first_output_at
            timings = Timings(
                queue_ms=1000 * (task.started_at - task.submitted_at),
                first_output_ms=None if first is None else 1000 * (first - task.submitted_at),
                total_ms=1000 * (self.clock() - task.submitted_at),
            )
        collector = handle.collector
        seen = Seen(
            handle.task_id, handle.model, collector.outputs, timings, collector.finish(), handle.keep_files
        )
        return handle.kind.build_result(seen, outcome, self.files)

    def _settle(self, task_id: str) -> None:
        """Resolve a finished task's handle and forget it."""
        task = self._scheduler.get(task_id)
        if task is None:
            self._handles.pop(task_id, None)  # forgotten by the scheduler: nothing to report
            return
        if not task.state.finished:
            return
        handle = self._handles.pop(task_id, None)
        recorded = None
        try:
            if self.durable is not None and (handle is None or handle.keep_files):
                recorded = self.durable.finished(task)  # on the store's thread: the loop goes on
            if handle is not None:
                self._account(handle, task)
        except Exception:  # noqa: BLE001 - a lane's result that does not serialise or count
            # Said, and the client still answered: its handle is already out of the table.
            log.exception("%s task %s: not recorded", task.lane, task_id)
        self._scheduler.forget_request(task_id)  # recorded: only its model is read again
        view = self._view(task)
        if handle is not None:
            handle.events.put_nowait(None)
        if recorded is None or recorded.done():
            if handle is not None:
                _resolve(handle, view)
            return
        # A recorded task is answered once its record is on disk (a result the client was
        # given survives a SIGKILL), without the loop waiting for the fsync; a success reads
        # as ended, its result served, only then too.
        if task.state is TaskState.SUCCEEDED:
            self._recording.add(task_id)
        loop = asyncio.get_running_loop()
        recorded.add_done_callback(lambda _: loop.call_soon_threadsafe(self._recorded, task_id, handle, view))

    def _recorded(self, task_id: str, handle: TaskHandle[Any] | None, view: TaskView[Any]) -> None:
        self._recording.discard(task_id)
        if handle is not None:
            _resolve(handle, view)

    def _account(self, handle: TaskHandle[Any], task: Task) -> None:
        """A finished task's collector's files kept or let go, then its figures."""
        if task.state is not TaskState.SUCCEEDED:
            handle.collector.discard()  # a failed task's partial result goes with it
        elif not handle.keep_files:
            handle.collector.release()  # streamed, not kept: its streams read on from the open file
        result = task.result
        self._meter.finished(
            handle.lane,
            handle.model,
            task.state.value,
            latency_s=None if task.finished_at is None else task.finished_at - task.submitted_at,
            code=task.error_code,
            counted=result.counted() if isinstance(result, LaneResult) else (),
        )

    def _update_slots(self, lane: str) -> None:
        ready = [r for r in self._replicas[lane] if r.ready and r.ready_info and not r.exiting]
        self._scheduler.set_slots(lane, sum(r.ready_info.slots for r in ready if r.ready_info))

    # ----- supervision ---------------------------------------------------------------------

    async def _monitor_loop(self, interval_s: float) -> None:
        loop = asyncio.get_running_loop()
        skipped = False
        while True:
            before = loop.time()
            await asyncio.sleep(interval_s)
            if loop.time() - before > interval_s + SERVER_STALL_S and not skipped:
                # The server itself stood still (a paused container or VM, a swapped-out API
                # process): the workers' heartbeats wait in their pipes, and uvloop runs timers
                # before it reads them. Judged now, every worker read as hung and was replaced,
                # its tasks failed. The next pass judges them after the reading (one pass only:
                # a loop late every time still supervises).
                skipped = True
                continue
            skipped = False
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the monitor must outlive any single bad check
                log.exception("monitor check failed")

    def check(self) -> None:
        """One supervision pass: dead or hung workers, restarts, deadlines."""
        for replica in self._all_replicas():
            if self._stop_signalled:  # read at each: the signal may come in the middle of a pass
                break
            if replica.worker.waiting_for():
                self._supervisor.waiting(replica.watch)
            action = self._supervisor.decide(
                replica.watch, replica.worker.alive(), replica.worker.memory_bytes()
            )
            if isinstance(action, Fail):
                message = action.message
                ended = getattr(replica.worker, "how_it_ended", lambda: None)()
                if action.code == "worker_crashed" and ended:
                    message = f"{message} ({ended})"  # a kill, a crash in native code, an exit
                self._crashed(replica, action.code, message)
            elif isinstance(action, Restart):
                log.warning("restarting the %s worker", replica.lane)
                try:
                    replica.worker.start()
                except Exception:  # noqa: BLE001 - no pipe, no fork, a cluster refusing the actor
                    # Counted as a restart that died: the back-off grows, the other replicas
                    # and the rest of this pass go on.
                    log.exception("the %s worker could not be started; trying again later", replica.lane)
                    self._supervisor.restarting(replica.watch)
                    self._supervisor.killed(replica.watch)
                    continue
                self._supervisor.restarting(replica.watch)
        for task in self._scheduler.expire():
            if task.id in self._where:
                self._where[task.id].worker.send(m.CancelTask(task.id))
        self._fail_queued_while_pending()
        for task_id in list(self._handles):
            self._settle(task_id)
        self._watch_data_folder()
        self._sweep_when_due()

    def _watch_data_folder(self) -> None:
        """Every DATA_FOLDER_CHECK_S: is the folder's lock still the one this server holds?
        A folder deleted while the server ran left its store and lock open on files no path
        names: every record it wrote was lost at the next start, and a second server took the
        folder and swept this one's new results away as orphans. Said once; the engine then
        sweeps no more, and `on_folder_lost` acts (`ris serve` stops: its work cannot be kept)."""
        if not self._holds_data or self.folder_lost or self.clock() < self._next_folder_check:
            return
        if self._folder_check is not None and not self._folder_check.done():
            return
        self._next_folder_check = self.clock() + DATA_FOLDER_CHECK_S
        # On a thread: a hung network mount would hold the event loop, and every answer.
        folder = Path(self.config.data_dir)
        self._folder_check = asyncio.ensure_future(asyncio.to_thread(data_lock.still_held, folder))
        self._folder_check.add_done_callback(self._folder_checked)
        self.disk_room.check()

    def _folder_checked(self, done: asyncio.Future[bool]) -> None:
        if done.cancelled() or done.exception() is not None or done.result() or self.folder_lost:
            return
        self.folder_lost = True
        log.critical(
            "the data folder %s lost its lock file %s while the server ran (the folder, or the "
            "file, deleted, moved or replaced): another server could take the folder and sweep "
            "this one's results away, and a folder gone took the task store with it; stopping "
            "(start it again to begin afresh)",
            self.config.data_dir,
            data_lock.LOCK_FILE,
        )
        self.on_folder_lost()

    def _fail_queued_while_pending(self) -> None:
        """A lane whose every worker waits for its cluster (a head lost, no node with room)
        refuses new tasks (submit); those it queued before fail the same way, at once, rather
        than wait for their deadline behind a wait nobody can bound. Durable tasks wait: they
        run when the lane returns, as after a restart."""
        for lane, replicas in self._replicas.items():
            if self.kinds[lane].durable or not replicas:
                continue
            waiting = [r.worker.waiting_for() for r in replicas]
            if all(waiting):
                self._fail_queued(lane, "lane_pending", f"the {lane} lane cannot serve now: {waiting[0]}")

    def _fail_queued(self, lane: str, code: str, message: str) -> list[str]:
        """Fail the lane's queued tasks (not a durable lane's: they run when it returns)."""
        if self.kinds[lane].durable:
            return []
        failed = [t.id for t in self._scheduler.tasks(lane) if t.state is TaskState.QUEUED]
        for task_id in failed:
            self._scheduler.finish(task_id, TaskState.FAILED, code=code, message=message)
        return failed

    def _sweep_when_due(self) -> None:
        """Apply the retention policy every `sweep_interval_s`, on a thread (it reads the disk)."""
        if self.retention is None or self.folder_lost or self.clock() < self._next_sweep:
            return
        if self._sweep is not None and not self._sweep.done():
            return
        self._next_sweep = self.clock() + self.config.retention.sweep_interval_s
        self._sweep = asyncio.ensure_future(asyncio.to_thread(self.retention.sweep))
        self._sweep.add_done_callback(log_sweep)
        self._sweep.add_done_callback(self._forget_swept)

    def _forget_swept(self, done: asyncio.Future[SweepReport]) -> None:
        """Tasks whose records the sweep deleted leave the scheduler's memory too: looked up,
        they are gone (404), not succeeded with a result URL that answers 404."""
        if not done.cancelled() and done.exception() is None:
            self._scheduler.forget(done.result().deleted)

    def _crashed(self, replica: Replica, code: str, message: str) -> None:
        log.error("%s: %s", replica.lane, message)
        died_starting = replica.ready_info is None
        if died_starting:
            # Killed before it was ready (over its memory ceiling while loading, say): its start
            # failed, which /api/stats and the lane's refusals say until a start succeeds.
            replica.failure = m.WorkerFailed(code, message)
        replica.worker.kill()
        replica.ready_info = None  # its models and voices went with it
        replica.engine = None  # and its counters: the next process counts from 0
        replica.forget_waits()
        self._supervisor.killed(replica.watch)
        self._update_slots(replica.lane)
        self._fail_tasks(replica, code, message)
        if died_starting and all(_cannot_start(r) for r in self._replicas[replica.lane]):
            # A worker that dies while it loads, start after start (a model that crashes its
            # builder): the lane refuses, as for a load that fails, and its queue fails at once.
            why = f"the {replica.lane} worker cannot start: {message}"
            for task_id in self._fail_queued(replica.lane, "lane_unavailable", why):
                self._settle(task_id)

    def _fail_tasks(self, replica: Replica, code: str, message: str) -> None:
        # The replica's own tasks, and any the scheduler still counts as running on the lane
        # with no replica holding them (none should; a leak here would jam the lane's slots).
        held = {t for r in self._replicas[replica.lane] if r is not replica for t in r.running}
        orphans = {t.id for t in self._scheduler.tasks(replica.lane) if t.state is TaskState.RUNNING} - held
        for task_id in replica.running | orphans:
            self._where.pop(task_id, None)
            self._scheduler.finish(task_id, TaskState.FAILED, code=code, message=message)
            self._settle(task_id)
        replica.running.clear()

    def _all_replicas(self) -> list[Replica]:
        return [r for rs in self._replicas.values() for r in rs]

    # ----- queries -------------------------------------------------------------------------

    def ready(self) -> dict[str, bool]:
        """Per lane: its min_replicas workers are ready, and, until the lane has once had
        every worker up, none is still starting (a server said ready serves at its size).
        Replicas a cluster has no room for yet (pending, listed by `pending()`) do not hold a
        lane that serves out of rotation; nor, later, does a replica restarting while the others
        serve (a replica's loss took the server out of rotation for the 20 s of its restart)."""
        out: dict[str, bool] = {}
        for lane, rs in self._replicas.items():
            enough = sum(r.ready for r in rs) >= self.config.lane(lane).min_replicas
            out[lane] = enough and (lane in self._filled or self._note_filled(lane))
        return out

    def _note_filled(self, lane: str) -> bool:
        """Whether every worker of the lane is up (ready, or pending on its cluster) now; once
        it is, the lane is filled for good."""
        if all(r.ready or r.worker.waiting_for() for r in self._replicas.get(lane, ())):
            self._filled.add(lane)
        return lane in self._filled

    def held_writes(self) -> int:
        """Task records the full disk refused, waiting in memory to be written (store_writer)."""
        return 0 if self.durable is None else self.durable.store.held_writes

    def pending(self) -> dict[str, str]:
        """Lanes with a worker that waits for its cluster to place it, and what it waits for."""
        out: dict[str, str] = {}
        for lane, rs in self._replicas.items():
            waiting = next((w for w in (r.worker.waiting_for() for r in rs) if w), None)
            if waiting:
                out[lane] = waiting
        return out

    def _view(self, task: Task) -> TaskView[Any]:
        """A task as clients see it. One the scheduler counts as running may still wait in its
        worker for a model, as the worker says: while it loads the task's model (ModelLoading,
        until ModelLoaded), what is left of the load; while it holds the task for a switch
        (ModelsHeld), the running tasks of the models the switch waits for, then the load."""
        replica = self._where.get(task.id)
        if task.state is not TaskState.RUNNING or replica is None:
            view = task_view(task, self._scheduler, self._wall)
            if task.id in self._recording:  # ended, not on disk yet: running to a reader
                view = dataclasses.replace(view, state="running", finished_at=None, result=None)
            elif task.state is TaskState.QUEUED:
                view = self._waiting_for_start(task.lane, view)
                if view.waiting_for is None and self._scheduler.held(task.lane):
                    view = dataclasses.replace(view, waiting_for=self._scheduler.held(task.lane), eta_s=None)
            return view
        model = self._model_of(task.id)
        loading = replica.loading
        if loading is not None and loading[0] == model:
            wait = ModelWait(load_s=self._load_s(task, model), loading_since=loading[1], model=model)
        elif task.id in replica.held.task_ids:
            held = replica.held
            if loading is not None and loading[0] == held.model:
                # The switch it is held behind loads now (the worker has not said it admitted
                # it yet): what is left of that load.
                load_s = self._load_s(task, held.model)
                wait = ModelWait(load_s=load_s, loading_since=loading[1], model=held.model)
            else:
                behind = tuple(
                    t
                    for t in replica.running
                    if t not in held.task_ids and self._model_of(t) in held.blocked_by
                )
                wait = ModelWait(behind=behind, load_s=self._load_s(task, held.model), model=held.model)
        else:
            return task_view(task, self._scheduler, self._wall)
        return task_view(task, self._scheduler, self._wall, wait)

    def _load_s(self, task: Task, model: str) -> float:
        """The seconds a load of `model` is expected to take: the model log's figure, or the
        task's own estimate for its model."""
        own = task.spec.load_s if model == self._model_of(task.id) else 0.0
        return max(own, self._model_log.expected_load_s(task.lane, model))

    def _model_of(self, task_id: str) -> str | None:
        task = self._scheduler.get(task_id)
        return task.spec.payload[0] if task is not None and task.spec.payload else None

    def lookup(self, task_id: str, viewer: Principal = ANONYMOUS) -> TaskView[Any] | None:
        """A task from the scheduler (live and recent) or the durable store (older, or from
        before a restart); None when there is none, or when `viewer` may not see it (another
        user's task does not exist for a user)."""
        task = self._scheduler.get(task_id)
        if task is not None and viewer.sees(task.spec.owner):
            return self._view(task)
        # Not live (or not the viewer's): the store. Another user's live task is looked for
        # there too, so that its answer costs what an unknown id's does.
        st = self.durable.store.get(task_id) if self.durable is not None else None
        if task is not None or st is None or not viewer.sees(st.owner):
            return None
        return self._kept_view(st)

    def removal(self, task_id: str, viewer: Principal = ANONYMOUS) -> Removal | None:
        """Why and when the retention policy removed a task `viewer` may see (another user's
        is as unknown as an id never seen); None where it did not, or long ago."""
        found = self.durable.store.removal(task_id) if self.durable is not None else None
        if found is None or not viewer.sees(found[0]):
            return None
        return found[1]

    def _kept_view(self, st: StoredTask) -> TaskView[Any]:
        """A task as the store has it; one kept for a start with its lane on says so (its
        client polled a queued task with no reason given: an operator's run)."""
        view = stored_view(st, self.kinds.get(st.lane))
        if view.state in ("queued", "running") and st.lane not in self._replicas:
            return dataclasses.replace(view, state="queued", waiting_for="lane_disabled")
        return view

    def tasks(
        self, lane: str | None = None, state: str | None = None, limit: int = 100, *, viewer: Principal
    ) -> list[TaskView[Any]]:
        """Live and recent tasks `viewer` may see, newest first: this run's, and those the
        store keeps from before a restart (images, speech), which GET /api/tasks/{id} finds."""
        found = [t for t in self._scheduler.tasks(lane) if viewer.sees(t.spec.owner)]
        views = [self._view(t) for t in found]  # by the state a reader sees (_recording)
        views = [v for v in views if state is None or v.state == state]
        if self.durable is not None:
            store = self.durable.store
            stored = store.recent(lane, state, limit, owner=viewer.owner, all_owners=viewer.admin)
            # A task the scheduler still holds is its live view above (or not the viewer's);
            # the rest as the store has them, with no second read of each row.
            held = self._scheduler.get
            views += [self._kept_view(st) for st in stored if held(st.id) is None]
        views.sort(key=lambda v: v.submitted_at, reverse=True)
        return views[:limit]

    def durable_tasks(
        self, lane: str, state: str | None = None, limit: int = 100, *, viewer: Principal
    ) -> list[TaskView[Any]]:
        """A durable lane's tasks from the store that `viewer` may see, newest first, with their
        live state."""
        assert self.durable is not None
        stored = self.durable.store.recent(lane, state, limit, owner=viewer.owner, all_owners=viewer.admin)
        views = (self.lookup(st.id, viewer) for st in stored)
        return [v for v in views if v is not None]

    def model_infos(self, lane: str) -> dict[str, m.ModelInfo]:
        """What the lane's first ready worker reports of the models it holds now (empty while
        none is ready): those loaded at its start and since, less those it unloaded."""
        for replica in self._replicas.get(lane, ()):
            if replica.ready and replica.ready_info is not None:
                return dict(replica.models)
        return {}

    def known_model_infos(self, lane: str) -> dict[str, m.ModelInfo]:
        """model_infos, or while no worker is ready, what the last ready one held (a worker
        being replaced after a crash: its successor loads the same models from the same
        config). The speech routes choose a voice's model and a stream's sample rate from it,
        so that a request during the restart waits in the queue as on other lanes: it was a
        503 for every /v1/audio/speech while the worker came back. Empty before any was ready
        and where the lane's every start failed (its refusal is said by require_serving)."""
        live = self.model_infos(lane)
        if live:
            return live
        for replica in self._replicas.get(lane, ()):
            if replica.models and replica.failure is None:
                return dict(replica.models)
        return {}

    def model_expiries(self, lane: str) -> dict[str, float | None]:
        """Seconds from now until each model that model_infos lists is unloaded by its
        keep_alive (None: not before it is evicted or its worker ends), on the same worker (the
        lane's first ready one: another replica's may differ). A model with work
        running is counted from now, with the lane's keep_alive: its request's own is known
        once that ends."""
        for replica in self._replicas.get(lane, ()):
            if replica.ready and replica.ready_info is not None:
                now = self.clock()
                busy = {self._model_of(t) for t in replica.running}
                lane_ttl = expiry(0.0, self.config.lane(lane).keep_alive_s)
                left: dict[str, float | None] = {}
                for name in replica.models:
                    due = replica.expiries.get(name)
                    left[name] = lane_ttl if name in busy else None if due is None else max(due - now, 0.0)
                return left
        return {}

    def model_log(self) -> ModelLogView:
        """Loads and unloads since the server started, and each model's last load time."""
        return self._model_log.view()

    def snapshot(self, tasks: TaskWindow | None = None, viewer: Principal = ANONYMOUS) -> Snapshot:
        """The read model of every lane and its workers now, and of the tasks in `tasks`'s
        window when given (the console's; stats and metrics need none): those `viewer` may see,
        while the lanes' figures count everyone's work."""
        now = self.clock()
        lanes_now = tuple(
            lane_status(
                lane,
                cfg,
                self._replicas.get(lane, ()),
                self._scheduler.stats(lane),
                outputs_per_s=self._rates.per_s(lane, now),
                activity=self._pool.activity(lane) if self._pool is not None else None,
                now=now,
                lends=lane in self._lending_lanes,
            )
            for lane, cfg in self.config.lanes.items()
        )
        listed = None
        if tasks is not None:
            listed = task_lists(
                self._scheduler,
                self.config.lanes,
                self._handles,
                tasks,
                now=now,
                view=self._view,
                wall=self._to_wall,
                visible=lambda t: viewer.sees(t.spec.owner),
            )
        return Snapshot(
            time=self.wall_clock(),
            now=self._to_wall(now),
            lanes=lanes_now,
            tasks=listed,
            metrics=self._meter.view(),
            models=self._model_log.view(),
        )


__all__ = ["Engine", "LaneUnavailable", "QueueFull", "TaskHandle", "TaskView"]


def _cannot_start(r: Replica) -> bool:
    """The replica has no worker to give, and will not have one: its start failed (a model that
    does not load, a worker that dies while loading) and fails as a rule, until one succeeds.
    A worker killed before it was ready alternates between dead and starting, never "failed":
    its lane took work (202, an ETA) that no start of it would ever run."""
    if r.watch.state is WorkerState.FAILED:
        return True
    if r.worker.waiting_for():  # its cluster is away (a head lost): pending, not failing
        return False
    return r.failure is not None and not r.ready and _start_fails(r.watch)


def _start_fails(w: Watch) -> bool:
    """A worker whose start fails as a rule: its first start, or a second restart in a row.
    A restart after a crash may fail once (the dead process's GPU memory not yet freed): the
    queue then waits for the next one."""
    return w.restarts == 0 or w.in_a_row >= 2


def _resolve(handle: TaskHandle[Any], view: TaskView[Any]) -> None:
    if not handle.done.done():
        handle.done.set_result(view)


def _work(kind: LaneKind[Any, Any, Any], spec: ModelSpec | None, request: dict[str, Any]) -> float:
    """A stored task's work (TaskSpec.work), from its request as kept; 1 (the lane's unit) for
    one this version does not read."""
    try:
        return kind.work(kind.request_from_json(request), spec)
    except (TypeError, ValueError):
        return 1.0
