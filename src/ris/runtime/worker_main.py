"""The body of a lane's worker process: bind, load models, then run tasks.

Nothing here knows one lane from another: the lane kind (imported by name after the binding
is applied) says which models to load first and supplies the runner that drives a backend.
A plain runner takes tasks one at a time; a ConcurrentRunner (the LLM lane's continuous
batching) holds up to `parallel` and advances them together, admitting new ones between steps.

The worker speaks to the server through a channel of two one-way halves, `ChannelIn` and
`ChannelOut`: a local process's pipe Connections, a Ray actor's in-memory queues, or a unit
test's lists all satisfy them.

Threads inside the worker, each with one job:
  main       runs tasks from the inbox (models are not re-entrant: only this thread uses them)
  receiver   reads the channel: queues RunTask, flags CancelTask, ends on Shutdown or EOF
  heartbeat  tells the supervisor every `interval` seconds that the process is alive
  orphan-watch  ends a local worker whose server died (from the start, models loading too)
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

# The standard library and stdlib-only ris modules: safe before the binding is applied.
from ris import messages as m
from ris.preemption.board import ActivityBoard
from ris.preemption.lending import Borrower, LendingPolicy
from ris.preemption.policy import Activity, PreemptionPolicy, Yielder
from ris.runtime.binding import apply_binding, observed_affinity
from ris.runtime.cpu_share import apply_min_cpu_share
from ris.runtime.gpu_memory import gpu_out_of_memory, return_gpu_memory
from ris.runtime.lending import CoreLending

if TYPE_CHECKING:
    from ris.lanes.base import ConcurrentRunner
    from ris.runtime.model_cache import Hold, ModelCache
    from ris.runtime.workers.base import WorkerSpec

HEARTBEAT_INTERVAL_S = 0.5
EXIT_OUT_OF_MEMORY = 3
_OUT_OF_MEMORY = (
    "the task needed more memory than the lane's ceiling (memory_limit_mb) allows; the worker was restarted"
)


def _gpu_budget_message(budget_bytes: int | None, fraction: float | None) -> str:
    if budget_bytes is not None:
        held = f"the lane's GPU budget ({budget_bytes / 2**20:,.0f} MiB)"
    elif fraction is not None:
        held = f"the lane's GPU budget ({fraction:.0%} of its card)"
    else:
        held = "its GPU's free memory"
    return (
        f"the task needed more GPU memory than {held} holds; the lane serves on: ask for less "
        "(a smaller image, fewer images or tokens), or raise the lane's gpu_memory_gb"
    )


class ChannelIn(Protocol):
    """The server's messages to the worker (ris.messages), in the order it sent them."""

    def recv(self) -> object:
        """The next message, waiting for it; EOFError or OSError once the server is gone."""


class ChannelOut(Protocol):
    """The worker's messages to the server. Called from one thread at a time (the worker
    serialises its threads' sends), so an implementation need not lock. One whose sends only
    queue (a Ray actor's outbox) also has `flush(timeout)`: the worker calls it before it exits
    on purpose, so that the failures it just sent reach the server."""

    def send(self, msg: object, /) -> None: ...


# The longest a worker that must exit waits for its last messages to leave (ChannelOut.flush).
EXIT_FLUSH_S = 5.0


class _SerialSender:
    """Sends from several threads (main, heartbeat), one at a time."""

    def __init__(self, channel: ChannelOut) -> None:
        self._channel = channel
        self._lock = threading.Lock()
        # Set once the worker exits on purpose (fail_and_exit): the end of the server's side
        # that its flush waits for is then no reason for the receiver to end the process.
        self.exiting = threading.Event()

    def send(self, msg: object) -> None:
        with self._lock:
            self._channel.send(msg)

    def fail_and_exit(self, code: int, reason: str, failures: list[m.TaskError]) -> NoReturn:
        """Say the worker is going (so no more work comes), send its tasks' failures, and end
        the process once they have left: at once over a pipe (a send is a write), after the
        channel's flush where sends only queue (a Ray actor's outbox)."""
        self.exiting.set()  # before the first send: the server's end can only come after it
        try:
            self.send(m.WorkerExiting(reason))
            for failure in failures:
                self.send(failure)
            flush = getattr(self._channel, "flush", None)
            if flush is not None and not flush(EXIT_FLUSH_S):
                print(f"ris worker: exiting ({reason}) before its last messages left", file=sys.stderr)
        finally:
            _exit_process(code)


def _exit_process(code: int) -> NoReturn:
    """os._exit: no cleanup a broken worker could hang in (tests replace this function)."""
    os._exit(code)


@dataclass
class _Shared:
    """What the worker's threads share."""

    progress_events: int = 0  # reported by heartbeats: the supervisor tells busy from stuck
    cancelled: set[str] = field(default_factory=set)  # ids flagged by CancelTask
    running: set[str] = field(default_factory=set)  # ids held by a concurrent runner
    known: set[str] = field(default_factory=set)  # ids received and not yet reported ended
    unstreamed: set[str] = field(default_factory=set)  # ids whose outputs only the result reads
    # The runner's engine figures for the heartbeat (ConcurrentRunner.figures), once it exists.
    figures: Callable[[], m.EngineFigures | None] | None = None

    def ended(self, task_id: str) -> None:
        self.running.discard(task_id)
        self.known.discard(task_id)
        self.cancelled.discard(task_id)
        self.unstreamed.discard(task_id)


def worker_main(
    spec: WorkerSpec,
    inbound: ChannelIn,
    outbound: ChannelOut,
    board: ActivityBoard,
    share_owner: int | None = None,
) -> None:
    """The worker process (or Ray actor): bind it to its resources, then serve. `share_owner`:
    the process whose life a minimum share's cgroup lasts (cpu_share; default the parent: the
    server of a local worker)."""
    _interrupts_left_to_the_server()
    _ends_with_its_server()
    _named_after_its_lane(spec.lane)
    # Before any model library is imported. A batch lane with a minimum share gets its nice
    # level from that (cpu_share): set here first, the share's lower level would need a
    # privilege an unprivileged server lacks, and the lane would stay at nice 19 (~1.4%).
    apply_binding(spec.binding, with_nice=spec.min_cpu_share is None)
    serve(spec, inbound, outbound, board, share_owner)


def _interrupts_left_to_the_server() -> None:
    """A worker ignores SIGINT: its server stops it (Shutdown, then a kill). Ctrl-C in a
    terminal reaches every process of the service: a worker that died of it before the server
    began its stop had its running image failed as a crash, for good, where the server sets it
    aside for the next start, and each printed a KeyboardInterrupt traceback into the log.
    SIGHUP likewise (the terminal closed: it reaches every process of the group too, and the
    server stops gracefully on it). SIGTERM keeps its default: multiprocessing ends a server's
    leftover workers with it at exit (a start that failed half way), and an orphan still
    loading its models ends by it. A service manager stops the server alone (systemd:
    KillMode=mixed, docs/DEPLOYMENT_GUIDE.md); where SIGTERM reaches the whole group, the
    server, told too, leaves the workers' deaths to its stop (Engine.stop_signalled)."""
    if threading.current_thread() is not threading.main_thread():
        return  # a Ray actor's serving thread: the actor's process and its signals are Ray's
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):  # not on Windows
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


ORPHAN_CHECK_S = 0.5


def _ends_with_its_server() -> None:
    """A worker whose server died without stopping it (SIGKILL, the OOM killer) while it
    loaded its models went on loading for as long as that took, then held them: the channel
    that tells it is read only once it serves, and a GPU model loading for a minute held the
    card the restarted server's own worker needed. A watcher ends it within ORPHAN_CHECK_S of
    being orphaned (its parent then is another process). A polled parent, not the kernel's
    PR_SET_PDEATHSIG: that fires when the spawning *thread* ends, not the server. Local
    workers only: a Ray actor's process is Ray's to end."""
    if threading.current_thread() is not threading.main_thread():
        return
    # The server as it spawned us (multiprocessing records it before our code runs): a server
    # killed before this line would otherwise read as init, and never be missed.
    spawner = multiprocessing.parent_process()
    server = spawner.pid if spawner is not None and spawner.pid is not None else os.getppid()
    if os.getppid() != server:
        os._exit(0)  # orphaned already

    def watch() -> None:
        while os.getppid() == server:
            time.sleep(ORPHAN_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _named_after_its_lane(lane: str) -> None:
    """`top`, `htop`, `pidstat` and `ps -o comm` show a local worker as `ris-llm`, `ris-tts`,
    `ris-image` rather than three processes called `python` (its command line stays the one
    multiprocessing spawned). Linux only; a Ray actor's process keeps the name Ray gives it."""
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        Path("/proc/self/comm").write_text(f"ris-{lane}"[:15])  # the kernel keeps 15 bytes
    except OSError:
        pass  # not Linux, or /proc not mounted: a name is a convenience


def serve(
    spec: WorkerSpec,
    inbound: ChannelIn,
    outbound: ChannelOut,
    board: ActivityBoard,
    share_owner: int | None = None,
) -> None:
    """Load the models, say WorkerReady (or WorkerFailed), then run the tasks that arrive on
    `inbound` until Shutdown, reporting on `outbound`. Returns after Shutdown or a failed start."""
    # Imports below may pull numpy and friends: only once the binding's thread variables are set.
    from ris.config import LaneConfig
    from ris.config.fit_checks import preloaded, worker_base_bytes
    from ris.lanes import import_kind
    from ris.lanes.base import (
        BackendContext,
        BackendError,
        Cancelled,
        ConcurrentRunner,
        WorkerEnv,
        load_backend,
    )
    from ris.runtime.model_cache import ModelCache

    out = _SerialSender(outbound)
    infos: list[m.ModelInfo] = []
    cpu_share = None
    if spec.min_cpu_share is not None:
        owner = os.getppid() if share_owner is None else share_owner
        cpu_share = apply_min_cpu_share(spec.min_cpu_share, spec.lane, spec.binding.nice, owner)
    lending = None
    if spec.borrow_from and spec.binding.cores is not None:
        lenders = [x.lane for x in spec.borrow_from]
        borrower = Borrower(
            LendingPolicy(spec.binding.cores, spec.borrow_from),
            board.reader(lenders),
            time.monotonic,
            board.idle_since(lenders),
        )
        lending = CoreLending(borrower, spec.binding.threads)
    try:  # anything that goes wrong before WorkerReady is a failed start, said as such
        kind = import_kind(spec.kind)
        if lending is not None and (spec.binding.passive_wait or kind.borrowed_threads_sleep):
            # Threads that sleep at a barrier may be moved under a running step; spinning ones
            # (OpenMP's active wait) piled onto one core would each spin out a time slice at
            # every barrier of the step's rest: those narrow at the next step.
            lending.watch()
        cfg = LaneConfig.model_validate_json(spec.lane_config_json)
        # A preemptible worker always has a Yielder: even with nothing to yield to (policy
        # "none"), its preemption points are where a cancelled task stops.
        yielder: Yielder | None = None
        if kind.preemptible:
            policy = spec.preemption or PreemptionPolicy(mode="none")
            yielder = Yielder(policy, board.reader(spec.yield_to), time.monotonic, time.sleep)
        ctx = BackendContext(
            device=spec.device,
            threads=spec.binding.threads,
            data_dir=Path(spec.data_dir),
            preemption=spec.preemption,
            parallel=cfg.parallel,
            gpu_budget_bytes=spec.gpu_budget_bytes,
            gpu_memory_fraction=cfg.gpu_memory_fraction,
        )

        def construct(name: str) -> Any:
            backend = load_backend(spec.backends[name], cfg.models[name].backend)
            return backend(cfg.models[name], ctx)

        def check(name: str) -> None:
            load_backend(spec.backends[name], cfg.models[name].backend).check(cfg.models[name])

        cache = ModelCache(
            cfg,
            spec.device,
            spec.binding.memory_limit_bytes,
            construct,
            out.send,
            spec.gpu_budget_bytes,
            check=check,
            base_bytes=worker_base_bytes(spec.lane, cfg),
        )
        # Large models load on first use, except the default (and those marked preload); small
        # ones (speech) all at once.
        for name in preloaded(cfg, kind.load_all_models):
            cache.get(name, announce=False)  # nothing runs yet: never held
        # Those still loaded: a later preload may have evicted an earlier one (a budget that
        # holds fewer than the preloaded models on a node or card the start check cannot see).
        infos.extend(cache.info(name) for name in cache.models)
    except BackendError as e:
        out.send(m.WorkerFailed(code=e.code, message=e.message))
        return
    except Exception as e:  # noqa: BLE001 - report any start failure, then exit
        traceback.print_exc()
        out.send(m.WorkerFailed(code="model_load_failed", message=f"{type(e).__name__}: {e}"))
        return

    inbox: queue.Queue[Any] = queue.Queue()
    state = _Shared()

    publish = board.writer(spec.lane) if spec.lane in board.lanes else (lambda _activity: None)
    marks = BoardMarks(publish, inbox)

    def receive() -> None:
        while True:
            try:
                msg = inbound.recv()
            except (EOFError, OSError):
                if out.exiting.is_set():
                    # Exiting on purpose: a direct link's flush ends our side and waits for the
                    # server to close its own, which this read sees. The exit code must be the
                    # one fail_and_exit gives (a memory ceiling's), not 0 from this thread.
                    return
                os._exit(0)  # the server is gone: nothing left to serve
            if isinstance(msg, m.CancelTask):
                if msg.task_id in state.known:  # a late cancel of an ended task is no flag to keep
                    state.cancelled.add(msg.task_id)
            else:
                if isinstance(msg, m.RunTask):
                    state.known.add(msg.task_id)
                    if not msg.streamed:
                        state.unstreamed.add(msg.task_id)
                    if spec.lends:
                        # Marked busy as it is queued: the lane borrowing our idle cores gives
                        # them back before its next step, so they are free when our task starts.
                        marks.arrived(msg)
                        continue
                inbox.put(msg)
                if isinstance(msg, m.Shutdown):
                    return

    def heartbeat() -> None:
        stop = threading.Event()
        while not stop.wait(HEARTBEAT_INTERVAL_S):
            try:
                engine = state.figures() if state.figures is not None else None
            except Exception:  # noqa: BLE001 - a view: a bug in it must not stop the heartbeat
                engine = None
            try:
                if lending is None:
                    out.send(m.Heartbeat(progress_events=state.progress_events, engine=engine))
                else:
                    out.send(m.Heartbeat(state.progress_events, lending.borrowed, lending.threads, engine))
            except (OSError, ValueError):
                return

    def tick() -> None:
        state.progress_events += 1

    if yielder is not None:
        yielder.waiting = tick  # paused for another lane: going as planned, not hung

    threading.Thread(target=receive, name="ris-receiver", daemon=True).start()
    threading.Thread(target=heartbeat, name="ris-heartbeat", daemon=True).start()
    out.send(
        m.WorkerReady(
            pid=os.getpid(),
            models=tuple(infos),
            cpu_affinity=observed_affinity(),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            threads=spec.binding.threads,
            slots=cfg.parallel,
            memory_limit_bytes=spec.binding.memory_limit_bytes,
            cpu_share=cpu_share,
            nice=os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None,
        )
    )
    cache.expire()  # the start's models: when their keep_alive ends, if it ever does (ModelExpiry)
    # A runner marks its lane idle when its task ends: only with nothing queued, through the
    # same gate as a lender's marks. Between two queued tasks the lane stays busy: a lane
    # yielding to it (it looks every 0.5 ms) does not resume for a step in the moment before
    # the next task starts, nor a borrower without an idle grace take its cores for one. (A
    # runner with a queue of its own, the LLM's, holds its idle mark back for that queue.)
    env = WorkerEnv(
        spec.lane,
        out.send,
        marks.runner_mark,
        tick,
        yielder,
        cfg.parallel,
        lending,
        streamed=lambda task_id: task_id not in state.unstreamed,
    )
    runner = kind.runner(env)
    gpu_oom_message = _gpu_budget_message(spec.gpu_budget_bytes, cfg.gpu_memory_fraction)
    if isinstance(runner, ConcurrentRunner):
        cache.unloading.append(runner.forget)
        state.figures = runner.figures
        # The lane is idle again once nothing runs or waits, even where its last task ended
        # before the runner published anything (a refused request, a failed load) after the
        # runner's own idle mark was held back for it: a lender's busy mark on arrival too.
        _serve_concurrently(runner, inbox, cache, state, out, gpu_oom_message, marks)
        return
    while True:
        try:  # idle, it wakes when a model's keep_alive ends
            msg = inbox.get(timeout=cache.seconds_to_expiry())
        except queue.Empty:
            cache.expire()
            continue
        if isinstance(msg, m.Shutdown):
            marks.stopped()
            cache.close()
            return
        if isinstance(msg, m.KeepModel):
            cache.keep(msg.model, msg.keep_alive_s)
            continue
        if not isinstance(msg, m.RunTask):
            continue
        task_id = msg.task_id

        def cancelled(task_id: str = task_id) -> bool:
            return task_id in state.cancelled

        release_gpu = False
        try:
            # One task at a time: nothing runs, so never held. A load that fails raises
            # BackendError: model_load_failed, or gpu_out_of_memory with the numbers.
            backend = cache.get(msg.model)
            cache.started(msg.model, msg.keep_alive_s)
            try:
                outcome = runner.run(backend, task_id, msg.request, cancelled)
            finally:
                cache.finished(msg.model, msg.keep_alive_s)
            out.send(m.TaskCancelled(task_id) if cancelled() else m.TaskDone(task_id, outcome))
        except BackendError as e:  # Cancelled included
            if cancelled() or isinstance(e, Cancelled):
                out.send(m.TaskCancelled(task_id))
            else:
                out.send(m.TaskError(task_id, e.code, e.message))
        except MemoryError:
            # Over the OS memory limit (ris.runtime.binding): the heap may be left fragmented
            # or a library half-way through an allocation, so a fresh worker serves on.
            failure = m.TaskError(task_id, "worker_out_of_memory", _OUT_OF_MEMORY)
            out.fail_and_exit(EXIT_OUT_OF_MEMORY, "out of memory", [failure])
        except Exception as e:  # noqa: BLE001 - a failed task must not take the worker down
            if gpu_out_of_memory(e):
                # torch raised before allocating, and the backend put its model back as it was
                # (an offloaded pipeline re-offloads its parts): the worker serves on. The
                # task's tensors are freed with the traceback, after this block: the cache is
                # emptied then (finally), not on every task.
                out.send(m.TaskError(task_id, "gpu_out_of_memory", gpu_oom_message))
                release_gpu = True
            else:
                traceback.print_exc()
                out.send(m.TaskError(task_id, "backend_error", f"{type(e).__name__}: {e}"))
        finally:
            state.ended(task_id)
            if release_gpu:
                return_gpu_memory()
                release_gpu = False
            # Idle again once none waits: a lender's busy mark on arrival, or a runner's busy
            # mark whose idle mark was held back for a task that ended before it published.
            marks.idle()
        cache.expire()  # a keep_alive of 0 unloads now


def _serve_concurrently(
    runner: ConcurrentRunner[Any, Any, Any],
    inbox: queue.Queue[Any],
    cache: ModelCache,
    state: _Shared,
    out: _SerialSender,
    gpu_oom_message: str,
    marks: BoardMarks,
) -> None:
    """The loop of a worker whose runner holds several tasks: take every message that has
    arrived (waiting only when nothing runs or waits), admit new tasks in their order of
    arrival, advance all by one step, report those that ended. A task for a model that must
    evict one with running work waits, and those behind it too, until that work drains: a
    switch never cuts a running batch, and the old model's later tasks do not overtake it."""
    from ris.lanes.base import BackendError, Cancelled

    pending: collections.deque[m.RunTask] = collections.deque()
    running: dict[str, m.RunTask] = {}
    held = _HeldTasks(out.send)

    def fail_all(code: str, message: str, exit_code: int) -> NoReturn:
        """The runner's state cannot be trusted: its tasks fail, a fresh worker serves on."""
        failures = [m.TaskError(task_id, code, message) for task_id in list(state.running)]
        out.fail_and_exit(exit_code, code, failures)

    while True:
        idle = not runner.busy() and not pending
        if idle and inbox.empty():
            marks.idle()
        try:
            msg = inbox.get(timeout=cache.seconds_to_expiry()) if idle else inbox.get_nowait()
        except queue.Empty:
            msg = None
        try:
            while msg is not None:
                if isinstance(msg, m.Shutdown):
                    marks.stopped()
                    cache.close()
                    return
                if isinstance(msg, m.RunTask):
                    state.running.add(msg.task_id)  # failed with the others if the runner breaks
                    pending.append(msg)
                elif isinstance(msg, m.KeepModel):
                    cache.keep(msg.model, msg.keep_alive_s)
                try:
                    msg = inbox.get_nowait()
                except queue.Empty:
                    msg = None
            held.report(_admit_pending(runner, pending, running, cache, state, out), pending)
            ended = runner.step()
        except MemoryError:
            fail_all("worker_out_of_memory", _OUT_OF_MEMORY, EXIT_OUT_OF_MEMORY)
        except Exception as e:  # noqa: BLE001 - a bug in the runner: never a silent hang
            if gpu_out_of_memory(e):
                # A batch step's sequences share its tensors: none can be failed alone, and
                # the runner's state after a failed step is not known. A fresh worker serves on.
                fail_all("gpu_out_of_memory", gpu_oom_message, 1)
            traceback.print_exc()
            fail_all("backend_error", f"{type(e).__name__}: {e}", 1)
        for task_id, result in ended:
            task = running.pop(task_id, None)
            if task is not None:
                cache.finished(task.model, task.keep_alive_s)
            was_cancelled = task_id in state.cancelled
            state.ended(task_id)
            if was_cancelled or isinstance(result, Cancelled):
                out.send(m.TaskCancelled(task_id))
            elif isinstance(result, BackendError):
                out.send(m.TaskError(task_id, result.code, result.message))
            else:
                out.send(m.TaskDone(task_id, result))
        cache.expire()


class BoardMarks:
    """A lane's marks on the board around its worker's queue: a lending lane's task is marked
    busy as it is queued (`arrived`), and any lane idle only while nothing is queued (`idle`,
    the runners' idle marks included), both under one lock, so that neither thread's mark
    overwrites the other's wrongly (a busy mark landing after the idle one of a worker that
    already ran the task; an idle one over a queued task)."""

    def __init__(self, publish: Callable[[Activity], None], inbox: queue.Queue[Any]) -> None:
        self._publish = publish
        self._inbox = inbox
        self._lock = threading.Lock()

    def arrived(self, task: object) -> None:
        with self._lock:
            self._publish(Activity.BUSY)
            self._inbox.put(task)

    def idle(self) -> None:
        """Once a task has ended, or the worker waits with nothing to run."""
        with self._lock:
            if self._inbox.empty():
                self._publish(Activity.IDLE)

    def runner_mark(self, activity: Activity) -> None:
        """What a runner publishes: its phases as they are, its idle mark through `idle`."""
        if activity is Activity.IDLE:
            self.idle()
        else:
            self._publish(activity)

    def stopped(self) -> None:
        """The worker stops (Shutdown): nothing it holds will run, whatever is queued."""
        with self._lock:
            self._publish(Activity.IDLE)


class _HeldTasks:
    """Tells the server which tasks wait for a switch (ModelsHeld), when that changes: checked
    after every admission, on the batch loop's path, so the common case (nothing held, nothing
    said) costs two comparisons."""

    def __init__(self, send: Callable[[object], None]) -> None:
        self._send = send
        self._said = m.NONE_HELD

    def report(self, hold: tuple[str, Hold] | None, pending: collections.deque[m.RunTask]) -> None:
        if hold is None or not pending:
            if self._said is not m.NONE_HELD:
                self._send(m.NONE_HELD)
                self._said = m.NONE_HELD
            return
        now = m.ModelsHeld(hold[0], tuple(p.task_id for p in pending), hold[1].blocked_by)
        if now != self._said:
            self._send(now)
            self._said = now


def _admit_pending(
    runner: ConcurrentRunner[Any, Any, Any],
    pending: collections.deque[m.RunTask],
    running: dict[str, m.RunTask],
    cache: ModelCache,
    state: _Shared,
    out: _SerialSender,
) -> tuple[str, Hold] | None:
    """Admit waiting tasks in order until one's model must wait for running work to drain;
    that model and its hold (None: nothing held)."""
    from ris.lanes.base import BackendError
    from ris.runtime.model_cache import Hold  # noqa: F811 - at run time, not only for mypy

    for msg in [p for p in pending if p.task_id in state.cancelled]:  # cancelled while waiting
        pending.remove(msg)
        state.ended(msg.task_id)
        out.send(m.TaskCancelled(msg.task_id))
    while pending:
        msg = pending[0]
        task_id = msg.task_id
        try:
            backend = cache.get(msg.model)  # a load here: the others wait this once
        except MemoryError:
            raise  # with the task counted as running: it fails with the others
        except BackendError as e:
            pending.popleft()
            state.ended(task_id)
            out.send(m.TaskError(task_id, e.code, e.message))
            continue
        except Exception as e:  # noqa: BLE001 - a model that fails to load fails its task
            traceback.print_exc()
            pending.popleft()
            state.ended(task_id)
            out.send(m.TaskError(task_id, "model_load_failed", f"{type(e).__name__}: {e}"))
            continue
        if isinstance(backend, Hold):
            return msg.model, backend
        pending.popleft()
        cache.started(msg.model, msg.keep_alive_s)
        running[task_id] = msg

        def cancelled(task_id: str = task_id) -> bool:
            return task_id in state.cancelled

        runner.admit(backend, task_id, msg.request, cancelled)
    return None
