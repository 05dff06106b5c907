"""Worker kinds (ris.runtime.workers): the name -> "module:Class" map, a kind named by its
"module:Class" in the config, and the kill rule for the activity board."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ris import messages as m
from ris.config import Config
from ris.lanes import Lane
from ris.preemption.policy import Activity
from ris.runtime.binding import Binding
from ris.runtime.engine import Engine
from ris.runtime.workers import KINDS, pool_class
from ris.runtime.workers.base import WorkerSpec
from ris.runtime.workers.link import LoopLink
from ris.runtime.workers.process import ProcessWorkers

from .fakes import TWO_CORES, FakeClock, FakeWorkers, config


def test_the_process_kind_is_chosen_by_its_name_and_by_local() -> None:
    assert pool_class("process") is ProcessWorkers
    assert pool_class("local") is ProcessWorkers
    assert KINDS["ray"] == "ris.runtime.workers.ray:RayWorkers"  # not imported: ray is optional


def test_an_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown worker kind 'kube': use one of process, ray, local"):
        pool_class("kube")


class RecordingPool(FakeWorkers):
    """A worker kind of a test's own, named in the config by its "module:Class"."""

    opened: list[RecordingPool] = []

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.lanes = list(config.lanes)
        self.closed = False
        RecordingPool.opened.append(self)

    def activity(self, lane: str) -> Activity | None:
        return Activity.PREFILL if lane == Lane.LLM else None

    def close(self) -> None:
        self.closed = True


def test_a_kind_named_by_module_and_class_in_the_config_builds_the_workers(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg = cfg.model_copy(
        update={"cluster": cfg.cluster.model_copy(update={"engine": f"{__name__}:RecordingPool"})}
    )

    async def serve() -> None:
        clock = FakeClock()
        eng = Engine(cfg, clock=clock, wall=clock, machine=TWO_CORES, monitor_interval_s=None)
        await eng.start()
        (pool,) = RecordingPool.opened
        assert sorted(pool.by_lane) == [Lane.LLM, Lane.TTS]
        assert eng.snapshot().lane(Lane.LLM).activity is Activity.PREFILL  # read through the pool
        await eng.stop()
        assert pool.closed

    RecordingPool.opened.clear()
    asyncio.run(serve())


def test_the_config_accepts_a_module_and_class_as_its_engine() -> None:
    from pydantic import ValidationError

    from ris.config.schema import ClusterConfig

    assert ClusterConfig(engine="mypkg.kinds:SlurmWorkers").engine == "mypkg.kinds:SlurmWorkers"
    with pytest.raises(ValidationError, match="engine"):
        ClusterConfig(engine="slurm")


def test_a_killed_process_worker_leaves_its_lane_idle_on_the_board(tmp_path: Path) -> None:
    async def kill_one() -> None:
        pool = ProcessWorkers(config(tmp_path), asyncio.get_running_loop())
        assert pool.activity(Lane.LLM) is Activity.IDLE
        pool.board.set(Lane.LLM, Activity.PREFILL)
        worker = pool(_spec(Lane.LLM), lambda msg: None)
        worker.kill()  # never started: nothing to stop, the rule holds all the same
        assert pool.activity(Lane.LLM) is Activity.IDLE
        pool.close()

    asyncio.run(kill_one())


class _Gone:
    """A worker process that has exited."""

    def is_alive(self) -> bool:
        return False

    def join(self, timeout: float | None = None) -> None:
        pass


def test_a_dead_workers_last_messages_are_read_before_it_is_called_dead(tmp_path: Path) -> None:
    """A worker over its memory ceiling writes WorkerExiting and its tasks' TaskErrors, then
    exits at once; the supervisor may look before the loop reads them. alive() takes them
    first, so the tasks fail with the worker's own code, not worker_crashed."""

    async def look() -> list[object]:
        pool = ProcessWorkers(config(tmp_path), asyncio.get_running_loop())
        said: list[object] = []
        worker = pool(_spec(Lane.LLM), said.append)
        up_r, up_w = multiprocessing.Pipe(duplex=False)
        down_r, down_w = multiprocessing.Pipe(duplex=False)
        worker._proc = _Gone()  # noqa: SLF001 - as start() sets it
        worker._link = LoopLink(  # noqa: SLF001
            asyncio.get_running_loop(), up_r, down_w, said.append, lambda: said.append(m.WorkerGone()), "llm"
        )
        last = [m.WorkerExiting("over its memory"), m.TaskError("t", "worker_out_of_memory", "too big")]
        for msg in last:
            up_w.send(msg)
        up_w.close()
        assert worker.alive() is False  # before the loop ever ran its reader
        worker.kill()
        down_r.close()
        pool.close()
        return said

    assert asyncio.run(look()) == [
        m.WorkerExiting("over its memory"),
        m.TaskError("t", "worker_out_of_memory", "too big"),
        m.WorkerGone(),  # the pipe's end of file: the engine sends it no more work
    ]


def _actor_class_streaming(
    stream: Callable[[], object], calls: list[tuple[str, object]] | None = None
) -> Callable[[], object]:
    """A fake of ris.runtime.workers.ray's actor class whose actors' stream is `stream()`;
    into `calls`, what reaches its actors through Ray: the key each was made with, put() and
    decline_link() calls."""
    said: list[tuple[str, object]] = [] if calls is None else calls

    class Method:
        def __init__(self, fn: Callable[..., object]) -> None:
            self.remote = fn

    class Actor:
        def __init__(self) -> None:
            self.stream = Method(stream)
            self.put = Method(lambda msg: said.append(("put", msg)))
            self.decline_link = Method(lambda: said.append(("decline_link", None)))

    class ActorClass:
        def options(self, **options: object) -> ActorClass:
            return self

        def remote(self, *args: object) -> Actor:
            said.append(("key", args[3]))
            return Actor()

    return ActorClass


def _queued_stream(loop: asyncio.AbstractEventLoop) -> tuple[type, asyncio.Queue[object]]:
    """Ray's ObjectRefGenerator as the pump reads it (each next is a ref to await), yielding
    what is put in the queue."""
    yields: asyncio.Queue[object] = asyncio.Queue()

    class Stream:
        async def __anext__(self) -> asyncio.Future[object]:
            ref: asyncio.Future[object] = loop.create_future()
            ref.set_result(await yields.get())
            return ref

    return Stream, yields


class _Unplaced:
    """The placements' part of a Ray pool for a lane placed alone."""

    def get(self, lane: str) -> None:
        return None


def _fake_ray_pool(ray_kind: Any, *, direct_link: bool = False, placements: object = None) -> Any:
    """A Ray pool without its cluster part (not needed here); messages through the fake
    stream unless `direct_link`."""
    pool = object.__new__(ray_kind.RayWorkers)
    pool.head_lost = None
    pool.direct_link = direct_link
    pool.unreachable = {}
    pool._placements = placements if placements is not None else _Unplaced()
    return pool


def _spec(lane: str) -> WorkerSpec:
    binding = Binding(cores=None, threads=1, nice=0, gpu=None, memory_limit_bytes=None)
    return WorkerSpec(lane, "", binding, "cpu", "{}", {}, "")


def test_a_ray_pool_shows_what_its_actors_report_and_idles_a_killed_lane(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray's boards live on the nodes: the pool keeps what each yield of a worker's stream
    reported (no cluster here: a fake actor's stream yields)."""
    ray_kind = pytest.importorskip("ris.runtime.workers.ray")
    from ris.preemption.board import ActivityBoard

    class Idled:
        """The placements' part: which lanes were set idle on their node."""

        def __init__(self) -> None:
            self.lanes: list[str] = []

        def set_idle(self, lane: str) -> None:
            self.lanes.append(lane)

        def get(self, lane: str) -> None:
            return None  # placed alone: no shared board, Ray's default scheduling

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        Stream, yields = _queued_stream(loop)
        monkeypatch.setattr(ray_kind, "_actor_class", _actor_class_streaming(Stream))
        killed: list[object] = []
        # Ray's own kill would start a local Ray instance for a fake actor: record it instead.
        monkeypatch.setattr(ray_kind.ray, "kill", lambda actor, no_restart: killed.append(actor))
        # Ray's get of a yield __anext__ returned, its value here already: the fake ref's.
        monkeypatch.setattr(ray_kind.ray, "get", lambda ref, timeout: ref.result())
        pool = _fake_ray_pool(ray_kind, placements=(idled := Idled()))
        pool.board = ActivityBoard([Lane.LLM, Lane.TTS], array=bytearray(2))
        worker = ray_kind.RayWorker(_spec(Lane.LLM), lambda msg: None, loop, {}, pool)
        worker.start()
        await asyncio.sleep(0)
        yields.put_nowait(
            ray_kind._Batch([], False, 7, 0, 0.0, 0.0, "node", "10.0.0.2", int(Activity.PREFILL))
        )
        for _ in range(3):
            await asyncio.sleep(0)
        assert (pool.activity(Lane.LLM), pool.activity(Lane.TTS)) == (Activity.PREFILL, Activity.IDLE)
        worker.kill()
        assert pool.activity(Lane.LLM) is Activity.IDLE
        for _ in range(200):  # the kill and the node's reset run off the loop
            if idled.lanes:
                break
            await asyncio.sleep(0.01)
        assert idled.lanes == [Lane.LLM] and len(killed) == 1

    asyncio.run(scenario())


def test_a_ray_actor_that_never_started_is_a_failed_start_with_rays_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An actor whose constructor failed (RIS missing on its node, a runtime_env that failed):
    Ray ends its stream with ActorDiedError(actor_init_failed). Taken as a crash, the lane was
    restarted forever with no reason given; it is WorkerFailed now, with Ray's words."""
    ray_kind = pytest.importorskip("ris.runtime.workers.ray")

    class InitFailed(Exception):
        actor_init_failed = True

    async def scenario() -> list[object]:
        loop = asyncio.get_running_loop()

        class Stream:
            async def __anext__(self) -> object:
                raise InitFailed("ModuleNotFoundError: No module named 'ris'")

        monkeypatch.setattr(ray_kind, "_actor_class", _actor_class_streaming(Stream))
        pool = _fake_ray_pool(ray_kind)
        said: list[object] = []
        worker = ray_kind.RayWorker(_spec(Lane.TTS), said.append, loop, {}, pool)
        worker.start()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not worker.alive()
        return said

    [failed, gone] = asyncio.run(scenario())
    assert isinstance(failed, m.WorkerFailed) and "No module named 'ris'" in failed.message
    assert gone == m.WorkerGone()  # (an engine has replaced the worker on WorkerFailed: not said then)


@pytest.mark.parametrize("case", ["unplaced", "unplaced after a rejoin"])
def test_a_ray_worker_left_unplaced_is_said_pending_with_why(
    monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """A node lost long after a rejoin was blamed on the rejoin."""
    ray_kind = pytest.importorskip("ris.runtime.workers.ray")
    monkeypatch.setattr(ray_kind, "PENDING_AFTER_S", 0.01)

    async def scenario() -> str | None:
        loop = asyncio.get_running_loop()

        class Silent:
            async def __anext__(self) -> object:
                await asyncio.Event().wait()  # Ray finds the actor no room: nothing comes
                return None

        monkeypatch.setattr(ray_kind, "_actor_class", _actor_class_streaming(Silent))
        pool = _fake_ray_pool(ray_kind)
        pool.rejoined_at = time.monotonic() if "after a rejoin" in case else None

        async def available() -> dict[str, float]:
            return {"CPU": 1.0}

        pool.available = available
        pool.killed = lambda lane, actor: None  # Ray's own kill would start a local Ray
        options = {"num_cpus": 1, "num_gpus": 0, "resources": {"ris_lane_tts": 1}}
        worker = ray_kind.RayWorker(_spec(Lane.TTS), lambda msg: None, loop, options, pool)
        worker.start()
        await asyncio.sleep(0.1)
        said: str | None = worker.waiting_for()
        worker.kill()
        return said

    said = asyncio.run(scenario()) or ""
    assert said.startswith(
        "Ray has not placed the tts worker after 0.01 s: it asks for {CPU: 1, ris_lane_tts: 1}"
    ), said
    rejoin = "after the head's return" in said
    assert rejoin == ("after a rejoin" in case), said


def test_a_workers_cpu_percent_is_the_same_whoever_asked_last() -> None:
    """psutil's cpu_percent(None) measured since its previous call: a /metrics scrape 3 ms
    after a console tick read 0 or 300% of a worker using one core."""
    from ris.runtime.workers.base import CpuMeter

    meter = CpuMeter(window_s=0.5)
    assert meter.read(10.0, now=100.0) == 0.0  # a first reading: nothing to compare yet
    assert meter.read(11.0, now=101.0) == 100.0  # one CPU second in one second
    assert meter.read(11.003, now=101.003) == 100.0  # asked again 3 ms later: the same figure
    assert meter.read(11.25, now=101.5) == 50.0  # over the half second since the last sample
    assert meter.read(0.1, now=102.0) == 50.0  # fewer CPU seconds: a new process, measured anew
    assert meter.read(0.6, now=103.0) == 50.0


@pytest.mark.parametrize("case", ["linked", "unreachable", "not listening"])
def test_a_ray_worker_links_to_its_actor_or_goes_through_ray(
    monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """cluster.link "direct": the first yield names the actor's listener and the server links
    to it with the key it made the actor with; what was sent before goes first, over the link;
    the link's messages are delivered and its end says WorkerGone once, the stream's end
    after it too. A listener the server cannot reach: the same messages go through put(), and
    the actor is told to stop listening (decline_link). An actor that could not listen (its
    first yield names no listener): through put() at once."""
    reachable = case == "linked"
    import threading

    ray_kind = pytest.importorskip("ris.runtime.workers.ray")
    from ris.preemption.board import ActivityBoard
    from ris.runtime.workers.link import LinkListener, SocketOut, end_link

    monkeypatch.setattr(ray_kind, "LINK_CONNECT_S", 1.0)
    calls: list[tuple[str, object]] = []
    actor_got: list[object] = []

    async def scenario() -> list[object]:
        loop = asyncio.get_running_loop()
        Stream, yields = _queued_stream(loop)
        monkeypatch.setattr(ray_kind, "_actor_class", _actor_class_streaming(Stream, calls))
        monkeypatch.setattr(ray_kind.ray, "get", lambda ref, timeout: ref.result())
        pool = _fake_ray_pool(ray_kind, direct_link=True)
        pool.board = ActivityBoard([Lane.TTS], array=bytearray(1))
        said: list[object] = []
        worker = ray_kind.RayWorker(_spec(Lane.TTS), said.append, loop, {}, pool)
        worker.start()
        assert worker.send(m.CancelTask("early"))  # before the link: kept, in order
        key = calls[0][1]
        assert isinstance(key, bytes) and len(key) == 32
        listener = LinkListener("127.0.0.1", key)
        address = listener.address

        def actor() -> None:
            conn = listener.accept(10)
            listener.close()
            assert conn is not None
            actor_got.append(conn.recv())
            out = SocketOut(conn)
            out.send(m.TaskCancelled("early"))
            end_link(conn, 5)
            conn.close()

        if reachable:
            threading.Thread(target=actor, daemon=True).start()
        else:
            listener.close()  # nobody listens there: refused
        named = None if case == "not listening" else address
        yields.put_nowait(ray_kind._Batch([], False, 7, 0, 0.0, 0.0, "node", "127.0.0.1", 0, named))
        for _ in range(500):
            if (reachable and said) or (not reachable and ("put", m.CancelTask("early")) in calls):
                break
            await asyncio.sleep(0.01)
        if reachable:
            for _ in range(500):  # the link's end, then the stream's
                if m.WorkerGone() in said:
                    break
                await asyncio.sleep(0.01)
        yields.put_nowait(ray_kind._Batch([], True, 7, 0, 0.0, 0.0, "node", "127.0.0.1", 0))
        for _ in range(20):
            await asyncio.sleep(0.01)
        return said

    said = asyncio.run(scenario())
    if reachable:
        assert actor_got == [m.CancelTask("early")]
        assert said == [m.TaskCancelled("early"), m.WorkerGone()]
        assert [c for c, _ in calls] == ["key"]  # nothing through Ray
    elif case == "unreachable":
        assert calls[1:] == [("decline_link", None), ("put", m.CancelTask("early"))]
        assert said == [m.WorkerGone()]  # the stream's end
    else:
        assert calls[1:] == [("put", m.CancelTask("early"))]
        assert said == [m.WorkerGone()]


@pytest.mark.parametrize("error", ["unreachable", "refused", "challenge timed out"])
def test_a_node_the_server_cannot_reach_is_not_tried_again_by_the_next_actors_for_a_while(
    monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    """A firewall that drops the connection costs LINK_CONNECT_S at every actor's start: once
    a link to a node's address timed out, the actors restarted on it go through Ray at once
    (told to stop listening) for LINK_UNREACHABLE_S, then it is tried again. A refusal is
    quick and may be one actor's own (gone before the server came), and a key exchange that
    timed out a stranger's port or a slow actor (BlockingIOError, an OSError too): tried every
    time."""
    ray_kind = pytest.importorskip("ris.runtime.workers.ray")
    from ris.preemption.board import ActivityBoard
    from ris.runtime.workers.link import NodeUnreachable

    tries: list[tuple[str, int]] = []
    raised = {
        "unreachable": NodeUnreachable(110, "no answer from 10.0.0.9 in 5 s"),
        "refused": ConnectionRefusedError("refused"),
        "challenge timed out": BlockingIOError(11, "Resource temporarily unavailable"),
    }[error]

    def connect_link(address: tuple[str, int], key: bytes, timeout: float) -> object:
        tries.append(address)
        raise raised

    monkeypatch.setattr(ray_kind, "connect_link", connect_link)
    calls: list[tuple[str, object]] = []

    async def scenario() -> Any:
        loop = asyncio.get_running_loop()
        Stream, yields = _queued_stream(loop)
        monkeypatch.setattr(ray_kind, "_actor_class", _actor_class_streaming(Stream, calls))
        monkeypatch.setattr(ray_kind.ray, "get", lambda ref, timeout: ref.result())
        pool = _fake_ray_pool(ray_kind, direct_link=True)
        pool.board = ActivityBoard([Lane.TTS], array=bytearray(1))
        pool.killed = lambda lane, actor: None  # Ray's own kill would start a local Ray
        worker = ray_kind.RayWorker(_spec(Lane.TTS), lambda msg: None, loop, {}, pool)

        async def start(port: int) -> None:  # an actor on 10.0.0.9, its messages through Ray
            calls.clear()
            worker.start()
            assert worker.send(m.CancelTask("early"))
            link = ("10.0.0.9", port)
            yields.put_nowait(ray_kind._Batch([], False, 7, 0, 0.0, 0.0, "node", "10.0.0.9", 0, link))
            for _ in range(500):
                if ("put", m.CancelTask("early")) in calls:
                    break
                await asyncio.sleep(0.01)
            assert calls[1:] == [("decline_link", None), ("put", m.CancelTask("early"))]
            worker.kill()

        await start(4001)
        await start(4002)  # a restart on the same node: its listener has another port
        pool.unreachable = {host: at - ray_kind.LINK_UNREACHABLE_S for host, at in pool.unreachable.items()}
        await start(4003)  # long after: tried again
        return pool

    pool = asyncio.run(scenario())
    if error == "unreachable":
        assert tries == [("10.0.0.9", 4001), ("10.0.0.9", 4003)]
        assert list(pool.unreachable) == ["10.0.0.9"]  # for the next while
    else:
        assert tries == [("10.0.0.9", 4001), ("10.0.0.9", 4002), ("10.0.0.9", 4003)]
        assert pool.unreachable == {}
