"""The worker's serving loop (ris.runtime.worker_main.serve) driven entirely in memory: the test
is the server at the other end of an in-memory channel, and the lane is a small one defined
here (a backend that counts), so no process, pipe or model is involved."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ris import lanes
from ris import messages as m
from ris.config.schema import LaneConfig, ModelSpec
from ris.lanes.base import (
    Backend,
    BackendError,
    LaneKind,
    LaneResult,
    LaneRunner,
    ModelDetails,
    ResultFiles,
    Seen,
    result_from_json,
)
from ris.preemption.board import ActivityBoard
from ris.preemption.policy import Activity
from ris.runtime.binding import Binding
from ris.runtime.worker_main import serve
from ris.runtime.workers.base import WorkerSpec

WAIT_S = 10.0  # generous: threads on a loaded machine; a passing test takes milliseconds


@dataclass(frozen=True)
class CountRequest:
    upto: int
    # Count once, then hold until cancelled (the cancel test's task).
    hold: bool = False
    # Raise torch's out-of-memory error, as an allocation past a GPU lane's cap does.
    gpu_oom: bool = False
    # Count once, then hold until the test sets RELEASE (tasks queue behind it meanwhile).
    wait_for_release: bool = False
    # Refused by the runner before it marks the lane busy (as TTS refuses an unknown voice).
    refuse: bool = False


RELEASE = threading.Event()


@dataclass(frozen=True)
class CountOutcome:
    counted: int


class Counter(Backend):
    """Says 1, 2, ... `upto`; refuses a negative count."""

    closed = 0  # instances closed, over the test session's lifetime

    def describe(self) -> ModelDetails:
        return ModelDetails(context_tokens=99)

    def count(self, req: CountRequest, say: Callable[[int], None], cancelled: Callable[[], bool]) -> int:
        if req.upto < 0:
            raise BackendError("invalid_request", "a count cannot be negative")
        if req.gpu_oom:
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        for n in range(1, req.upto + 1):
            say(n)
        assert not req.wait_for_release or RELEASE.wait(WAIT_S), "never released"
        deadline = time.monotonic() + WAIT_S
        while req.hold and not cancelled():
            assert time.monotonic() < deadline, "the cancel never reached the task"
            time.sleep(0.001)
        return req.upto

    def close(self) -> None:
        Counter.closed += 1


class CountRunner(LaneRunner[Counter, CountRequest, CountOutcome]):
    def run(
        self, backend: Counter, task_id: str, request: CountRequest, cancelled: Callable[[], bool]
    ) -> CountOutcome:
        def say(n: int) -> None:
            # Each number as it counts where someone streams the task, else only the last (a
            # runner may hold outputs back that only the result reads, as speech does).
            if self.env.streamed(task_id) or n == request.upto:
                self.env.output(task_id, n)

        if request.refuse:
            raise BackendError("invalid_request", "refused before it started")
        # Marks its lane busy while it runs and idle when done, as the TTS runner does.
        self.env.publish(Activity.BUSY)
        try:
            return CountOutcome(backend.count(request, say, cancelled))
        finally:
            self.env.publish(Activity.IDLE)


class CountLane(LaneKind[CountRequest, CountOutcome, LaneResult]):
    name = "count"
    request_type, outcome_type, backend_type, runner_type = CountRequest, CountOutcome, Counter, CountRunner
    builtin_backends = {"counter": f"{__name__}:Counter"}

    def build_result(self, seen: Seen, outcome: CountOutcome, files: ResultFiles) -> LaneResult:
        raise AssertionError("the server side is not part of these tests")

    def result_from_json(self, data: Mapping[str, Any]) -> LaneResult:
        return result_from_json(LaneResult, data)


LANE = CountLane()


class MemoryChannel:
    """Both halves of a worker's channel: the worker reads what the test puts, and sends what
    the test takes. Once closed, sends fail as a closed pipe's do (the heartbeat thread ends)."""

    def __init__(self) -> None:
        self._to_worker: queue.Queue[object] = queue.Queue()
        self._from_worker: queue.Queue[object] = queue.Queue()
        self._closed = False
        self.reads = 0
        self.reader: threading.Thread | None = None

    # ----- the worker's side (ChannelIn, ChannelOut) -------------------------------------

    def recv(self) -> object:
        self.reads += 1  # the worker's receiver handled every message it read before this one
        self.reader = threading.current_thread()
        return self._to_worker.get()

    def send(self, msg: object, /) -> None:
        if self._closed:
            raise ValueError("the channel is closed")
        self._from_worker.put(msg)

    # ----- the test's side (the server) --------------------------------------------------

    def put(self, msg: object) -> None:
        self._to_worker.put(msg)

    def take(self) -> object:
        """The worker's next message other than a heartbeat."""
        while True:
            msg = self._from_worker.get(timeout=WAIT_S)
            if not isinstance(msg, m.Heartbeat):
                return msg

    def close(self) -> None:
        self._closed = True


def count_worker(tmp_path: Path, model: str, target: str) -> WorkerSpec:
    """A count-lane worker whose one model, its default, is the backend at `target`."""
    config = LaneConfig(default_model=model, models={model: ModelSpec(backend="counter")})
    return WorkerSpec(
        lane="count",
        kind=f"{__name__}:LANE",
        binding=Binding(cores=None, threads=1, nice=0, gpu=None),
        device="cpu",
        lane_config_json=config.model_dump_json(),
        backends={model: target},
        data_dir=str(tmp_path),
    )


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[MemoryChannel]:
    """A worker of the count lane serving in a thread, its channel handed to the test."""
    spec = count_worker(tmp_path, "one", LANE.backend_target("counter"))
    chan = MemoryChannel()
    board = ActivityBoard(("count",), array=bytearray(1))
    worker = threading.Thread(target=serve, args=(spec, chan, chan, board), daemon=True)
    worker.start()
    try:
        yield chan
        worker.join(WAIT_S)
        assert not worker.is_alive(), "the worker kept serving"
    finally:
        chan.close()
        lanes.unregister("count")  # the worker registered its kind, as a spawned process would


def test_ready_reports_the_default_model_with_its_details(channel: MemoryChannel) -> None:
    ready = channel.take()
    assert isinstance(ready, m.WorkerReady) and ready.slots == 1 and ready.threads == 1
    (info,) = ready.models
    assert info.load_s is not None and info.load_s >= 0  # how long it took, for GET /api/models
    assert dataclasses.replace(info, load_s=None) == m.ModelInfo(
        "one", "counter", ModelDetails(context_tokens=99)
    )
    channel.put(m.Shutdown())


def test_a_task_streams_its_outputs_then_ends_done(channel: MemoryChannel) -> None:
    assert isinstance(channel.take(), m.WorkerReady)
    channel.put(m.RunTask("t1", "one", CountRequest(upto=3)))
    assert [channel.take() for _ in range(4)] == [
        m.TaskOutput("t1", 1),
        m.TaskOutput("t1", 2),
        m.TaskOutput("t1", 3),
        m.TaskDone("t1", CountOutcome(3)),
    ]
    channel.put(m.RunTask("t2", "one", CountRequest(upto=-1)))  # the worker serves on after a refusal
    assert channel.take() == m.TaskError("t2", "invalid_request", "a count cannot be negative")
    channel.put(m.RunTask("t3", "one", CountRequest(upto=0)))
    assert channel.take() == m.TaskDone("t3", CountOutcome(0))
    channel.put(m.Shutdown())


def test_the_runner_knows_which_tasks_nobody_streams(channel: MemoryChannel) -> None:
    assert isinstance(channel.take(), m.WorkerReady)
    channel.put(m.RunTask("t1", "one", CountRequest(upto=3), streamed=False))
    assert [channel.take() for _ in range(2)] == [m.TaskOutput("t1", 3), m.TaskDone("t1", CountOutcome(3))]
    channel.put(m.RunTask("t2", "one", CountRequest(upto=2)))  # the mark was the task's alone
    assert [channel.take() for _ in range(3)] == [
        m.TaskOutput("t2", 1),
        m.TaskOutput("t2", 2),
        m.TaskDone("t2", CountOutcome(2)),
    ]
    channel.put(m.Shutdown())


class RecordingBoard(ActivityBoard):
    """A board that also keeps every mark its lanes' writers made, in order."""

    def __init__(self, lanes: tuple[str, ...]) -> None:
        super().__init__(lanes, array=bytearray(len(lanes)))
        self.marks: list[Activity] = []

    def writer(self, lane: str) -> Callable[[Activity], None]:
        publish = super().writer(lane)

        def record(activity: Activity) -> None:
            self.marks.append(activity)
            publish(activity)

        return record


def _marks_behind_a_held_task(
    tmp_path: Path, queued: list[CountRequest], stop_queued: bool = False
) -> list[Activity]:
    """The board's marks while t1 runs held, `queued` wait behind it (and a Shutdown after
    them, with `stop_queued`), and all of them end."""
    spec = count_worker(tmp_path, "one", LANE.backend_target("counter"))
    chan, board = MemoryChannel(), RecordingBoard(("count",))
    worker = threading.Thread(target=serve, args=(spec, chan, chan, board), daemon=True)
    worker.start()
    RELEASE.clear()
    try:
        assert isinstance(chan.take(), m.WorkerReady)
        chan.put(m.RunTask("t1", "one", CountRequest(upto=1, wait_for_release=True)))
        assert chan.take() == m.TaskOutput("t1", 1)  # running, and held
        for i, request in enumerate(queued, start=2):
            chan.put(m.RunTask(f"t{i}", "one", request))
        if stop_queued:
            chan.put(m.Shutdown())
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and chan.reads < 2 + len(queued):  # queued, reading on
            time.sleep(0.001)
        assert chan.reads >= 2 + len(queued), "the worker did not read the queued tasks"
        if stop_queued:  # the receiver ends once it has queued the Shutdown
            assert chan.reader is not None
            chan.reader.join(WAIT_S)
            assert not chan.reader.is_alive()
        RELEASE.set()
        ended = {f"t{i}" for i in range(1, len(queued) + 2)}
        while ended:
            msg = chan.take()
            if isinstance(msg, m.TaskDone | m.TaskError):
                ended.discard(msg.task_id)
        if not stop_queued:
            chan.put(m.Shutdown())  # it may arrive before the worker's mark after the last task
        worker.join(WAIT_S)
        assert not worker.is_alive(), "the worker kept serving"
        assert board.get("count") is Activity.IDLE  # after the last task, or as it stopped
        return board.marks
    finally:
        RELEASE.set()
        chan.close()
        lanes.unregister("count")


def test_a_lane_stays_busy_between_queued_tasks_and_goes_idle_after_the_last(tmp_path: Path) -> None:
    """The runner marks its lane idle as each task ends; with the next task queued the mark
    is not made, so a lane borrowing its cores or yielding to it never sees it idle between
    two of its tasks."""
    marks = _marks_behind_a_held_task(tmp_path, [CountRequest(upto=1), CountRequest(upto=1)])
    assert marks[:3] == [Activity.BUSY] * 3 and set(marks[3:]) == {Activity.IDLE}


def test_a_lane_goes_idle_when_the_task_queued_last_is_refused_before_it_starts(tmp_path: Path) -> None:
    """The idle mark held back for the queued task is made when that task ends, even when its
    runner never marked anything (refused before it started)."""
    marks = _marks_behind_a_held_task(tmp_path, [CountRequest(upto=1, refuse=True)])
    assert marks[0] is Activity.BUSY and marks[-1] is Activity.IDLE


def test_a_lane_stopped_with_its_shutdown_queued_behind_a_task_is_left_idle(tmp_path: Path) -> None:
    """The task's idle mark is held back for the queued Shutdown; the worker marks the lane
    idle as it stops, so a lane yielding to it is not left paused until the server reaps it."""
    marks = _marks_behind_a_held_task(tmp_path, [], stop_queued=True)
    assert marks == [Activity.BUSY, Activity.IDLE]


@pytest.mark.parametrize("sleeps", [True, False])
def test_a_borrowing_worker_watches_its_lent_cores_where_its_threads_sleep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sleeps: bool
) -> None:
    """The watcher that takes a lent core back under a running step starts for a lane whose
    threads sleep when they wait (the TTS lane's, whatever its OpenMP policy), not for one
    whose threads spin (a spinning LLM narrows at its next step)."""
    from ris.preemption.lending import Lender

    monkeypatch.setattr(CountLane, "borrowed_threads_sleep", sleeps)
    binding = Binding(cores=(1,), threads=1, nice=0, gpu=None, passive_wait=False)
    spec = dataclasses.replace(
        count_worker(tmp_path, "one", LANE.backend_target("counter")),
        binding=binding,
        borrow_from=(Lender("llm", (0,)),),
    )
    before = {t.ident for t in threading.enumerate() if t.name == "ris-lending-watch"}
    chan = MemoryChannel()
    board = ActivityBoard(("count", "llm"), array=bytearray(2))
    worker = threading.Thread(target=serve, args=(spec, chan, chan, board), daemon=True)
    worker.start()
    try:
        assert isinstance(chan.take(), m.WorkerReady)
        watching = [
            t for t in threading.enumerate() if t.name == "ris-lending-watch" and t.ident not in before
        ]
        assert bool(watching) == sleeps
        chan.put(m.Shutdown())
        worker.join(WAIT_S)
    finally:
        chan.close()
        lanes.unregister("count")


def test_a_cancelled_task_ends_cancelled_and_the_next_one_runs(channel: MemoryChannel) -> None:
    assert isinstance(channel.take(), m.WorkerReady)
    channel.put(m.RunTask("held", "one", CountRequest(upto=1, hold=True)))
    assert channel.take() == m.TaskOutput("held", 1)  # running: now the cancel can find it
    channel.put(m.CancelTask("held"))
    assert channel.take() == m.TaskCancelled("held")
    channel.put(m.CancelTask("held"))  # late: the task has ended, nothing is flagged
    channel.put(m.RunTask("next", "one", CountRequest(upto=1)))
    assert [channel.take(), channel.take()] == [m.TaskOutput("next", 1), m.TaskDone("next", CountOutcome(1))]
    channel.put(m.Shutdown())


def test_shutdown_closes_the_loaded_models(channel: MemoryChannel) -> None:
    assert isinstance(channel.take(), m.WorkerReady)
    closed = Counter.closed
    channel.put(m.Shutdown())
    deadline = time.monotonic() + WAIT_S
    while Counter.closed == closed:  # the fixture's join says the loop also returned
        assert time.monotonic() < deadline
        time.sleep(0.001)


def test_a_model_that_fails_to_load_fails_the_start(tmp_path: Path) -> None:
    spec = count_worker(tmp_path, "bad", f"{__name__}:NoSuchBackend")
    chan = MemoryChannel()
    try:
        serve(spec, chan, chan, ActivityBoard(("count",), array=bytearray(1)))  # returns at once
    finally:
        lanes.unregister("count")
    failed = chan.take()
    assert isinstance(failed, m.WorkerFailed) and failed.code == "backend_unavailable"
    assert "NoSuchBackend" in failed.message


def _three_models(tmp_path: Path, **lane: Any) -> WorkerSpec:
    """A count-lane worker with three models, each "weighing" a 600 KiB file, and a budget
    of 1 MiB: one model resident at a time."""
    models = {}
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.bin").write_bytes(b"\0" * 600 * 1024)
        models[name] = ModelSpec(backend="counter", source=str(tmp_path / f"{name}.bin"))
    config = LaneConfig(default_model="a", models=models, **{"memory_budget_mb": 1, **lane})
    return dataclasses.replace(
        count_worker(tmp_path, "a", LANE.backend_target("counter")),
        lane_config_json=config.model_dump_json(),
        backends=dict.fromkeys(models, LANE.backend_target("counter")),
    )


def _serving(spec: WorkerSpec) -> tuple[MemoryChannel, threading.Thread]:
    chan = MemoryChannel()
    board = ActivityBoard(("count",), array=bytearray(1))
    worker = threading.Thread(target=serve, args=(spec, chan, chan, board), daemon=True)
    worker.start()
    return chan, worker


def test_models_load_on_use_and_the_least_recently_used_is_evicted(tmp_path: Path) -> None:
    chan, worker = _serving(_three_models(tmp_path))
    try:
        ready = chan.take()
        assert isinstance(ready, m.WorkerReady) and [i.name for i in ready.models] == ["a"]
        assert ready.models[0].footprint_bytes == 600 * 1024
        chan.put(m.RunTask("t1", "b", CountRequest(upto=0)))
        assert chan.take() == m.ModelUnloaded("a", "evicted")
        assert chan.take() == m.ModelLoading("b")  # the server counts the load from now
        loaded = chan.take()
        assert isinstance(loaded, m.ModelLoaded) and loaded.info.name == "b"
        assert chan.take() == m.TaskDone("t1", CountOutcome(0))
        chan.put(m.RunTask("t2", "b", CountRequest(upto=0)))  # resident: no load
        assert chan.take() == m.TaskDone("t2", CountOutcome(0))
        chan.put(m.RunTask("t3", "c", CountRequest(upto=0)))
        assert chan.take() == m.ModelUnloaded("b", "evicted")
        assert chan.take() == m.ModelLoading("c")
        assert isinstance(chan.take(), m.ModelLoaded)
        assert chan.take() == m.TaskDone("t3", CountOutcome(0))
        chan.put(m.Shutdown())
        worker.join(WAIT_S)
    finally:
        chan.close()
        lanes.unregister("count")


def test_a_request_keep_alive_of_zero_unloads_once_idle(tmp_path: Path) -> None:
    chan, worker = _serving(_three_models(tmp_path, memory_budget_mb=None))
    try:
        assert isinstance(chan.take(), m.WorkerReady)
        chan.put(m.RunTask("t1", "a", CountRequest(upto=0), keep_alive_s=0))
        assert chan.take() == m.TaskDone("t1", CountOutcome(0))
        assert chan.take() == m.ModelUnloaded("a", "expired")
        chan.put(m.Shutdown())
        worker.join(WAIT_S)
    finally:
        chan.close()
        lanes.unregister("count")


def test_a_keep_alive_asked_for_by_itself_unloads_an_idle_model_at_once(tmp_path: Path) -> None:
    # Ollama's `keep_alive: 0` with nothing to generate (`ollama stop`): m.KeepModel.
    chan, worker = _serving(_three_models(tmp_path, memory_budget_mb=None))
    try:
        assert isinstance(chan.take(), m.WorkerReady)
        chan.put(m.KeepModel("b", 0))  # not loaded: nothing happens
        chan.put(m.KeepModel("a", 0))
        assert chan.take() == m.ModelUnloaded("a", "expired")
        chan.put(m.RunTask("t1", "a", CountRequest(upto=0)))  # loads again on use
        assert chan.take() == m.ModelLoading("a")
        assert isinstance(chan.take(), m.ModelLoaded)
        assert chan.take() == m.TaskDone("t1", CountOutcome(0))
        chan.put(m.Shutdown())
        worker.join(WAIT_S)
    finally:
        chan.close()
        lanes.unregister("count")


def test_a_keep_alive_of_centuries_leaves_the_idle_worker_waiting_and_serving(tmp_path: Path) -> None:
    # Ollama's "3000000h" or 1e10 s: a queue wait that long overflows; the worker waits an hour
    # at most at a time and serves on.
    chan, worker = _serving(_three_models(tmp_path, memory_budget_mb=None))
    try:
        assert isinstance(chan.take(), m.WorkerReady)
        chan.put(m.RunTask("t1", "a", CountRequest(upto=0), keep_alive_s=1e10))
        assert chan.take() == m.TaskDone("t1", CountOutcome(0))
        # The server hears when the model leaves (Ollama's /api/ps), in seconds from now.
        expiry = chan.take()
        assert isinstance(expiry, m.ModelExpiry) and 1e10 - 60 < (expiry.expires_in_s or 0) <= 1e10
        chan.put(m.RunTask("t2", "a", CountRequest(upto=0)))  # the lane's keep_alive: for ever
        assert chan.take() == m.TaskDone("t2", CountOutcome(0))
        assert chan.take() == m.ModelExpiry("a", None)
        chan.put(m.RunTask("t3", "a", CountRequest(upto=0)))
        assert chan.take() == m.TaskDone("t3", CountOutcome(0))  # no change, nothing said
        chan.put(m.Shutdown())
        worker.join(WAIT_S)
        assert not worker.is_alive()
    finally:
        chan.close()
        lanes.unregister("count")


def test_a_start_models_expiry_is_reported_after_ready_and_when_a_request_changes_it(tmp_path: Path) -> None:
    """A model loaded at the start leaves after the lane's keep_alive (300 s): the server hears
    it right after WorkerReady, and again when a request keeps the model for ever."""
    chan, worker = _serving(_three_models(tmp_path, memory_budget_mb=None, keep_alive_s=300))
    try:
        assert isinstance(chan.take(), m.WorkerReady)
        told = chan.take()
        assert isinstance(told, m.ModelExpiry) and told.name == "a" and 290 < (told.expires_in_s or 0) <= 300
        chan.put(m.RunTask("t1", "a", CountRequest(upto=0), keep_alive_s=-1))
        assert chan.take() == m.TaskDone("t1", CountOutcome(0))
        assert chan.take() == m.ModelExpiry("a", None)
        chan.put(m.Shutdown())
        worker.join(WAIT_S)
    finally:
        chan.close()
        lanes.unregister("count")


def test_a_model_over_the_budget_is_refused_with_numbers(tmp_path: Path) -> None:
    spec = _three_models(tmp_path)
    (tmp_path / "c.bin").write_bytes(b"\0" * 3 * 2**20)
    chan, worker = _serving(spec)
    try:
        assert isinstance(chan.take(), m.WorkerReady)
        chan.put(m.RunTask("t1", "c", CountRequest(upto=0)))
        assert chan.take() == m.TaskError(
            "t1",
            "model_too_large",
            "model 'c' needs 3 MiB but the lane's memory budget is 1 MiB; it can never be loaded here",
        )
        chan.put(m.Shutdown())
        worker.join(WAIT_S)
    finally:
        chan.close()
        lanes.unregister("count")


def _serves_on_then_stops(chan: MemoryChannel, worker: threading.Thread) -> None:
    """After a failed task: the same worker answers the next request for model "one", then
    stops when told."""
    chan.put(m.RunTask("t2", "one", CountRequest(upto=1)))
    assert [chan.take(), chan.take()] == [m.TaskOutput("t2", 1), m.TaskDone("t2", CountOutcome(1))]
    chan.put(m.Shutdown())
    worker.join(WAIT_S)
    assert not worker.is_alive()


def test_a_gpu_out_of_memory_fails_its_task_alone_naming_the_budget_and_the_worker_serves_on(
    tmp_path: Path,
) -> None:
    pytest.importorskip("torch")
    spec = count_worker(tmp_path, "one", LANE.backend_target("counter"))
    chan, worker = _serving(dataclasses.replace(spec, gpu_budget_bytes=3 * 2**30))
    try:
        assert isinstance(chan.take(), m.WorkerReady)
        chan.put(m.RunTask("t1", "one", CountRequest(upto=1, gpu_oom=True)))
        error = chan.take()
        assert isinstance(error, m.TaskError) and error.code == "gpu_out_of_memory"
        assert "the lane's GPU budget (3,072 MiB)" in error.message, error.message
        _serves_on_then_stops(chan, worker)
    finally:
        chan.close()
        lanes.unregister("count")


class LoadsPastTheCard(Counter):
    """A model whose load runs out of GPU memory, as one does that the budget held on paper
    but the card (or memory an evicted model still held) did not."""

    half_built: ClassVar[list[weakref.ref[Any]]] = []

    def __init__(self, *args: Any) -> None:
        import torch

        self.weights = bytearray(2**20)  # what was placed before the allocation that failed
        LoadsPastTheCard.half_built.append(weakref.ref(self))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")


def test_a_load_out_of_gpu_memory_fails_its_task_gpu_out_of_memory_with_the_numbers_and_serves_on(
    tmp_path: Path,
) -> None:
    pytest.importorskip("torch")
    models = {"one": ModelSpec(backend="counter"), "big": ModelSpec(backend="counter")}
    config = LaneConfig(default_model="one", models=models)
    spec = dataclasses.replace(
        count_worker(tmp_path, "one", LANE.backend_target("counter")),
        lane_config_json=config.model_dump_json(),
        backends={"one": LANE.backend_target("counter"), "big": f"{__name__}:LoadsPastTheCard"},
        device="cuda:0",  # only the model cache reads it: its models are counted on the card
        gpu_budget_bytes=3 * 2**30,
    )
    chan, worker = _serving(spec)
    try:
        assert isinstance(chan.take(), m.WorkerReady)
        chan.put(m.RunTask("t1", "big", CountRequest(upto=1)))
        assert chan.take() == m.ModelLoading("big")
        error = chan.take()
        assert isinstance(error, m.TaskError) and error.code == "gpu_out_of_memory", error
        # What to act on: that it was GPU memory, during the load, what stayed loaded, the fix.
        for part in (
            "model 'big' ran out of GPU memory while loading",
            "the lane's GPU budget 3,072 MiB",
            "still loaded: one",
            "gpu_memory_gb",
        ):
            assert part in error.message, error.message
        assert "OutOfMemoryError: CUDA out of memory" in error.message
        # Collected before the failure was told (and torch's cache emptied after): the
        # half-built model's memory is back before the next load tries.
        assert [ref() for ref in LoadsPastTheCard.half_built] == [None]
        _serves_on_then_stops(chan, worker)
    finally:
        chan.close()
        lanes.unregister("count")


def test_the_tasks_held_for_a_switch_are_said_once_per_change() -> None:
    from collections import deque

    from ris.runtime.model_cache import Hold
    from ris.runtime.worker_main import _HeldTasks

    said: list[object] = []
    held = _HeldTasks(said.append)
    pending = deque([m.RunTask("t2", "b", CountRequest(0)), m.RunTask("t3", "a", CountRequest(0))])
    held.report(None, deque())  # nothing held, nothing said
    held.report(("b", Hold(("a",))), pending)
    held.report(("b", Hold(("a",))), pending)  # the same: not said again
    pending.append(m.RunTask("t4", "a", CountRequest(0)))
    held.report(("b", Hold(("a",))), pending)
    pending.clear()
    held.report(None, pending)  # admitted: none held any more
    held.report(None, pending)
    assert said == [
        m.ModelsHeld("b", ("t2", "t3"), ("a",)),
        m.ModelsHeld("b", ("t2", "t3", "t4"), ("a",)),
        m.ModelsHeld("", (), ()),
    ]


def test_a_worker_exiting_on_purpose_says_so_then_fails_its_tasks_then_flushes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ris.runtime import worker_main

    events: list[object] = []

    class Queueing:  # a Ray actor's outbox: sends only queue
        def send(self, msg: object) -> None:
            events.append(("sent", msg))

        def flush(self, timeout: float) -> bool:
            events.append(("flush", timeout))
            return True

    class Piped:  # a pipe: a send is a write, nothing to flush
        def send(self, msg: object) -> None:
            events.append(("sent", msg))

    def fake_exit(code: int) -> None:
        events.append(("exit", code))
        raise SystemExit(code)

    monkeypatch.setattr(worker_main, "_exit_process", fake_exit)
    failure = m.TaskError("t1", "worker_out_of_memory", "over")
    for channel in (Queueing(), Piped()):
        out = worker_main._SerialSender(channel)
        with pytest.raises(SystemExit):
            out.fail_and_exit(worker_main.EXIT_OUT_OF_MEMORY, "out of memory", [failure])
    said = [("sent", m.WorkerExiting("out of memory")), ("sent", failure)]
    assert events == [*said, ("flush", worker_main.EXIT_FLUSH_S), ("exit", 3), *said, ("exit", 3)]


def test_a_worker_exiting_on_purpose_exits_with_its_code_when_the_server_then_closes_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a direct link the flush of an exit on purpose waits for the server to close its
    end, and the receiver thread reads that end too: it must not end the process with 0
    before fail_and_exit ends it with the memory code."""
    import os as real_os

    from ris.runtime import worker_main

    exits: list[int] = []

    def record_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)  # ends the calling thread here

    class Os:  # worker_main's os, its os._exit recorded (the receiver's exit when the server is gone)
        def __getattr__(self, name: str) -> Any:
            return record_exit if name == "_exit" else getattr(real_os, name)

    monkeypatch.setattr(worker_main, "os", Os())
    monkeypatch.setattr(worker_main, "_exit_process", record_exit)

    def out_of_memory(*_args: object) -> int:
        raise MemoryError

    monkeypatch.setattr(Counter, "count", out_of_memory)
    server_closed = object()

    class Linked(MemoryChannel):  # SocketOut's flush: the server reads our end, then closes its own
        def recv(self) -> object:
            msg = super().recv()
            if msg is server_closed:
                raise EOFError
            return msg

        def flush(self, timeout: float) -> bool:
            self.put(server_closed)
            assert self.reader is not None
            self.reader.join(WAIT_S)  # the receiver has seen the end (and exited, or not)
            return True

    spec = count_worker(tmp_path, "one", LANE.backend_target("counter"))
    chan = Linked()
    board = ActivityBoard(("count",), array=bytearray(1))

    def serving() -> None:
        with pytest.raises(SystemExit):
            serve(spec, chan, chan, board)

    worker = threading.Thread(target=serving, daemon=True)
    worker.start()
    try:
        assert isinstance(chan.take(), m.WorkerReady)
        chan.put(m.RunTask("t1", "one", CountRequest(upto=1)))
        assert chan.take() == m.WorkerExiting("out of memory")
        assert chan.take() == m.TaskError("t1", "worker_out_of_memory", worker_main._OUT_OF_MEMORY)
        worker.join(WAIT_S)
        assert not worker.is_alive()
        assert exits == [worker_main.EXIT_OUT_OF_MEMORY]
    finally:
        chan.close()
        lanes.unregister("count")


def test_a_worker_whose_server_died_while_it_loaded_ends_within_a_second() -> None:
    """A server SIGKILLed while its worker loaded a model: the worker went on loading, then
    held the model (a GPU's memory) until it first read its channel."""
    import os
    import signal
    import subprocess
    import sys

    loading = (
        "from ris.runtime.worker_main import _ends_with_its_server; import time; "
        "_ends_with_its_server(); time.sleep(60)"  # a minute-long model load
    )
    server = (
        "import subprocess, sys, time; "
        f"w = subprocess.Popen([sys.executable, '-c', {loading!r}]); print(w.pid, flush=True); time.sleep(60)"
    )
    with subprocess.Popen([sys.executable, "-c", server], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        worker = int(proc.stdout.readline())
        time.sleep(1.0)  # the worker's watcher is up
        assert _alive(worker)
        proc.send_signal(signal.SIGKILL)
    ended = time.monotonic() + 5.0
    while _alive(worker) and time.monotonic() < ended:
        time.sleep(0.05)
    alive = _alive(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the orphaned worker went on loading"


def _alive(pid: int) -> bool:
    """Running, not ended (an ended orphan may wait as a zombie for its new parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
