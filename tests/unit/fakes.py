"""In-memory fakes for building the whole engine without processes: a fake clock, and a
LaneWorker whose messages the test writes by hand (as vLLM's scheduler tests hand-write
model outputs); the environment a lane's runner reports to; and the small harness the unit
tests share to start such an engine and run their async bodies."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ris import messages as m
from ris.config import Config
from ris.config.load import parse_config
from ris.lanes.base import WorkerEnv
from ris.machine import MachineInfo
from ris.preemption.policy import Activity
from ris.runtime.engine import Engine
from ris.runtime.workers.base import ResourceUsage, WorkerSpec

TWO_CORES = MachineInfo(cores=(0, 1), gpus=0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeWorker:
    """A LaneWorker that runs nothing: it records what the engine sends, and the test speaks
    for it through `deliver` (ready, outputs, ends) and `die()`."""

    def __init__(self, spec: WorkerSpec, deliver: Callable[[object], None]) -> None:
        self.spec = spec
        self.deliver = deliver
        self.inbox: list[object] = []
        self.starts = 0
        self.kills = 0
        self.rss: int | None = None  # what the watchdog reads; a test sets it
        self.waiting: str | None = None  # what it waits for before it runs; a test sets it
        self._alive = False

    # LaneWorker
    def start(self) -> None:
        self.starts += 1
        self._alive = True

    def send(self, msg: object) -> bool:
        if not self._alive:
            return False
        self.inbox.append(msg)
        return True

    def alive(self) -> bool:
        return self._alive

    def kill(self) -> None:
        self.kills += 1
        self._alive = False

    async def stop(self, timeout: float) -> None:
        self._alive = False

    def usage(self) -> ResourceUsage:
        return ResourceUsage(pid=4242 if self._alive else None)

    def memory_bytes(self) -> int | None:
        return self.rss if self._alive else None

    def waiting_for(self) -> str | None:
        return self.waiting if self._alive else None

    # what a test makes the worker say
    def ready(self, slots: int = 1, models: tuple[m.ModelInfo, ...] = ()) -> None:
        self.deliver(m.WorkerReady(4242, models, (0,), "", 1, slots))

    def die(self) -> None:
        self._alive = False

    @property
    def runs(self) -> list[m.RunTask]:
        return [x for x in self.inbox if isinstance(x, m.RunTask)]

    @property
    def cancels(self) -> list[str]:
        return [x.task_id for x in self.inbox if isinstance(x, m.CancelTask)]


class FakeWorkers:
    """The worker pool: a FakeWorker per replica, found by lane name (the lane's last one) or,
    for a lane with replicas, all of them; it keeps no activity board."""

    def __init__(self) -> None:
        self.by_lane: dict[str, FakeWorker] = {}
        self.built: list[FakeWorker] = []

    def __call__(self, spec: WorkerSpec, deliver: Callable[[object], None]) -> FakeWorker:
        worker = FakeWorker(spec, deliver)
        self.by_lane[spec.lane] = worker
        self.built.append(worker)
        return worker

    def __getitem__(self, lane: str) -> FakeWorker:
        return self.by_lane[lane]

    def replicas(self, lane: str) -> list[FakeWorker]:
        """Every worker built for the lane, in the order its replicas were built."""
        return [w for w in self.built if w.spec.lane == lane]

    def activity(self, lane: str) -> Activity | None:
        return None

    def close(self) -> None:
        pass


class Env:
    """What a lane's runner reports to, in memory: the messages it sends, the activities it
    shows on the board, in the order the board changed (writing what it shows already changes
    nothing), and how often it ticked (no worker process, no pipe)."""

    def __init__(self) -> None:
        self.sent: list[object] = []
        self.board: list[Activity] = []
        self.ticks = 0

    def worker_env(self) -> WorkerEnv:
        return WorkerEnv("test", self.sent.append, self.show, self.tick)

    def show(self, activity: Activity) -> None:
        """A write to the board, the runner's or (in a test) another thread's."""
        if not self.board or self.board[-1] is not activity:
            self.board.append(activity)

    def tick(self) -> None:
        self.ticks += 1


def config(tmp: Path, **lanes: dict[str, Any]) -> Config:
    """A small valid config: an LLM and a TTS lane on their own cores, images off unless given."""
    data: dict[str, Any] = {
        "data_dir": str(tmp / "data"),
        "lanes": {
            "llm": {
                "cores": [0],
                "max_queue": 2,
                "heartbeat_timeout_s": 5,
                "busy_timeout_s": 20,
                "load_timeout_s": 60,
                "default_model": "m",
                "models": {"m": {"backend": "noop"}},
            },
            "tts": {"cores": [1], "default_model": "e", "models": {"e": {"backend": "espeak"}}},
            "image": {"enabled": False},
        },
    }
    for lane, override in lanes.items():
        data["lanes"][lane] = {**data["lanes"].get(lane, {}), **override}
    return parse_config(data, TWO_CORES)


# The image lane switched on, sharing both cores (it is off in `config` unless given).
IMAGE_ON = {"enabled": True, "cores": [0, 1], "default_model": "i", "models": {"i": {"backend": "diffusers"}}}


def engine(cfg: Config, clock: FakeClock, workers: FakeWorkers) -> Engine:
    return Engine(
        cfg,
        clock=clock,
        wall=lambda: 1_700_000_000.0 + clock(),
        workers=workers,
        machine=TWO_CORES,
        monitor_interval_s=None,
    )


@asynccontextmanager
async def started_engine(
    tmp: Path, **lanes: dict[str, Any]
) -> AsyncIterator[tuple[Engine, FakeWorkers, FakeClock]]:
    """A started engine on fake workers (none of them ready yet) and its fake clock."""
    clock, workers = FakeClock(), FakeWorkers()
    eng = engine(config(tmp, **lanes), clock, workers)
    await eng.start()
    try:
        yield eng, workers, clock
    finally:
        await eng.stop()


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """An async test body run to its end on a fresh event loop (pytest itself is sync here)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


async def settle() -> None:
    """Let the tasks the engine woke run until they wait again (a few loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


@asynccontextmanager
async def client_with_a_defect(eng: Engine) -> AsyncIterator[Any]:
    """An HTTP client of the real app over `eng`, with one more route, /defect, that raises:
    a defect's 500 as Starlette's outermost middleware sends it."""
    import httpx

    from ris.api.app import create_app

    app = create_app(eng.config, eng)

    async def defect() -> None:
        raise RuntimeError("a defect of the server's")

    app.add_api_route("/defect", defect)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client
