"""The body of a lane's worker process: bind, load models, then run tasks one at a time.

Threads inside the worker, each with one job:
  main       runs tasks from the inbox, one at a time (models are not re-entrant)
  receiver   reads the pipe: queues RunTask, flags CancelTask, ends on Shutdown or EOF
  heartbeat  tells the supervisor every `interval` seconds that the process is alive
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# Only the standard library lies behind these imports: safe before the binding is applied.
from ris import messages as m
from ris.runtime.activity import ActivityBoard
from ris.runtime.binding import Binding, apply_binding, observed_affinity
from ris.scheduler import Lane
from ris.scheduler.preemption import Activity, PreemptionPolicy, Yielder

HEARTBEAT_INTERVAL_S = 0.5


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, picklable for the spawn start method."""

    lane: str
    binding: Binding
    device: str
    # The lane's LaneConfig as JSON: the config model is rebuilt inside the worker.
    lane_config_json: str
    data_dir: str
    # Image lane only: how to yield, and to which real-time lanes (those sharing its hardware).
    preemption: PreemptionPolicy | None = None
    yield_to: tuple[str, ...] = ()


class _Outbox:
    """Pipe writes from several threads, serialised."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, msg: object) -> None:
        with self._lock:
            self._conn.send(msg)


def worker_main(spec: WorkerSpec, conn: Connection, board: ActivityBoard) -> None:
    apply_binding(spec.binding)  # before any model library is imported
    # Imports below may pull numpy and friends: only now that the thread variables are set.
    from ris.backends import BackendContext, backend_class
    from ris.backends.base import BackendError
    from ris.config import LaneConfig

    out = _Outbox(conn)
    lane = Lane(spec.lane)
    cfg = LaneConfig.model_validate_json(spec.lane_config_json)
    # The image worker always has a Yielder: even with nothing to yield to (policy "none"),
    # its preemption points are where a cancelled task stops.
    yielder: Yielder | None = None
    if lane is Lane.IMAGE:
        yielder = Yielder(
            spec.preemption or PreemptionPolicy(mode="none"),
            board.reader([Lane(x) for x in spec.yield_to]),
            time.monotonic,
            time.sleep,
        )
    ctx = BackendContext(
        device=spec.device, threads=spec.binding.threads, data_dir=Path(spec.data_dir), yielder=yielder
    )
    models: dict[str, Any] = {}
    infos: list[m.ModelInfo] = []

    def load(name: str) -> Any:
        if name not in models:
            mspec = cfg.models[name]
            models[name] = backend_class(lane, mspec.backend)(mspec, ctx)
        return models[name]

    try:
        # LLMs and image models are large: load the default now, others on first use. Speech
        # models are small and the server needs their voices to route requests: load them all.
        eager = list(cfg.models) if lane is Lane.TTS else [cfg.default_model] if cfg.default_model else []
        for name in eager:
            backend = load(name)
            infos.append(
                m.ModelInfo(
                    name=name,
                    backend=cfg.models[name].backend,
                    voices=tuple(getattr(backend, "voices", ())),
                    sample_rate=getattr(backend, "sample_rate", None),
                )
            )
    except BackendError as e:
        out.send(m.WorkerFailed(code=e.code, message=e.message))
        return
    except Exception as e:  # noqa: BLE001 - report any load failure, then exit
        traceback.print_exc()
        out.send(m.WorkerFailed(code="model_load_failed", message=f"{type(e).__name__}: {e}"))
        return

    inbox: queue.Queue[Any] = queue.Queue()
    cancel_ids: set[str] = set()
    progress_events = [0]

    def receive() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the server is gone: nothing left to serve
            if isinstance(msg, m.CancelTask):
                cancel_ids.add(msg.task_id)
            else:
                inbox.put(msg)
                if isinstance(msg, m.Shutdown):
                    return

    def heartbeat() -> None:
        stop = threading.Event()
        while not stop.wait(HEARTBEAT_INTERVAL_S):
            try:
                out.send(m.Heartbeat(progress_events=progress_events[0]))
            except (OSError, ValueError):
                return

    threading.Thread(target=receive, name="ris-receiver", daemon=True).start()
    threading.Thread(target=heartbeat, name="ris-heartbeat", daemon=True).start()
    out.send(
        m.WorkerReady(
            pid=os.getpid(),
            models=tuple(infos),
            cpu_affinity=observed_affinity(),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            threads=spec.binding.threads,
        )
    )

    runner = _TaskRunner(lane, out, board, progress_events, Path(spec.data_dir), yielder)
    while True:
        msg = inbox.get()
        if isinstance(msg, m.Shutdown):
            for backend in models.values():
                backend.close()
            return
        if not isinstance(msg, m.RunTask):
            continue
        task_id = msg.task_id

        def cancelled(task_id: str = task_id) -> bool:
            return task_id in cancel_ids

        if yielder is not None:
            yielder.cancelled = cancelled
        try:
            outcome = runner.run(load(msg.model), msg, cancelled)
            out.send(m.TaskCancelled(task_id) if cancelled() else m.TaskDone(task_id, outcome))
        except BackendError as e:
            out.send(m.TaskCancelled(task_id) if cancelled() else m.TaskError(task_id, e.code, e.message))
        except Exception as e:  # noqa: BLE001 - a failed task must not take the worker down
            traceback.print_exc()
            out.send(m.TaskError(task_id, "backend_error", f"{type(e).__name__}: {e}"))
        finally:
            cancel_ids.discard(task_id)


class _TaskRunner:
    """Runs one task on a backend of the worker's lane, streaming its output to the server."""

    def __init__(
        self,
        lane: Lane,
        out: _Outbox,
        board: ActivityBoard,
        progress: list[int],
        data_dir: Path,
        yielder: Yielder | None,
    ) -> None:
        self.lane = lane
        self.out = out
        self.board = board
        self.progress = progress
        self.images = data_dir / "images"
        self.yielder = yielder

    def run(self, backend: Any, msg: m.RunTask, cancelled: Callable[[], bool]) -> Any:
        task_id = msg.task_id
        out = self.out

        def tick() -> None:
            self.progress[0] += 1

        if self.lane is Lane.LLM:

            def emit_text(text: str) -> None:
                tick()
                out.send(m.TextDelta(task_id, text))

            # Published for the image worker: prefill is when sharing a GPU hurts the most.
            self.board.set(Lane.LLM, Activity.PREFILL)
            try:
                return backend.generate(
                    msg.request, emit_text, cancelled, lambda: self.board.set(Lane.LLM, Activity.DECODE)
                )
            finally:
                self.board.set(Lane.LLM, Activity.IDLE)
        if self.lane is Lane.TTS:
            rate = int(backend.sample_rate)

            def emit_audio(pcm: bytes) -> None:
                tick()
                out.send(m.AudioChunk(task_id, bytes(pcm), rate))

            self.board.set(Lane.TTS, Activity.BUSY)
            try:
                return backend.synthesize(msg.request, emit_audio, cancelled)
            finally:
                self.board.set(Lane.TTS, Activity.IDLE)

        def on_step(done: int, total: int) -> None:
            tick()
            out.send(m.Progress(task_id, done, total))

        yielder = self.yielder
        before = (yielder.stats.paused_s, yielder.stats.pauses) if yielder else (0.0, 0)
        image = backend.generate(msg.request, on_step)
        self.images.mkdir(parents=True, exist_ok=True)
        path = self.images / f"{task_id}.png"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(image.png)
        os.replace(tmp, path)
        after = (yielder.stats.paused_s, yielder.stats.pauses) if yielder else (0.0, 0)
        return m.ImageOutcome(
            width=image.width,
            height=image.height,
            steps=image.steps,
            seed=image.seed,
            path=str(path),
            paused_s=after[0] - before[0],
            pauses=after[1] - before[1],
        )
