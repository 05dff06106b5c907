"""The server's handle on one lane's worker process: spawn, pipe, reader thread, kill."""

from __future__ import annotations

import enum
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from ris import messages as m
from ris.runtime.activity import ActivityBoard
from ris.runtime.binding import spawn_environment
from ris.runtime.worker_main import WorkerSpec, worker_main

# Spawn everywhere: fork would copy the server's threads and event loop into the child, and
# spawn is the only method Windows has.
_CTX = mp.get_context("spawn")


class WorkerState(enum.StrEnum):
    STARTING = "starting"  # process spawned, models loading
    READY = "ready"
    FAILED = "failed"  # could not load its models; restarted after a back-off
    DEAD = "dead"


class WorkerHandle:
    """One worker process. Messages it sends are passed to `on_message` from a reader thread."""

    def __init__(
        self, spec: WorkerSpec, on_message: Callable[[WorkerHandle, Any], None], board: ActivityBoard
    ) -> None:
        self.spec = spec
        self._board = board
        self._on_message = on_message
        self._proc: Any = None
        self._conn: Any = None
        self._send_lock = threading.Lock()
        self.state = WorkerState.DEAD
        self.started_at = 0.0
        self.last_heartbeat = 0.0
        self.last_progress_events = 0
        self.ready_info: m.WorkerReady | None = None
        self.failure: m.WorkerFailed | None = None
        self.restarts = 0
        # The generation counter tells a stale reader thread's messages from the live one's.
        self.generation = 0
        self._ps: psutil.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def start(self) -> None:
        parent, child = _CTX.Pipe(duplex=True)
        proc = _CTX.Process(
            target=worker_main,
            args=(self.spec, child, self._board),
            name=f"ris-{self.spec.lane}-worker",
            daemon=True,
        )
        with spawn_environment(self.spec.binding):
            proc.start()
        child.close()
        self.generation += 1
        self._proc, self._conn = proc, parent
        self.state = WorkerState.STARTING
        self.started_at = self.last_heartbeat = time.monotonic()
        self.ready_info = None
        self._ps = None
        threading.Thread(
            target=self._read,
            args=(parent, self.generation),
            name=f"ris-{self.spec.lane}-reader",
            daemon=True,
        ).start()

    def _read(self, conn: Any, generation: int) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            except Exception:  # noqa: BLE001 - an unpicklable message must not kill the reader
                continue
            if generation != self.generation:
                return
            self._on_message(self, msg)

    def send(self, msg: object) -> bool:
        """Send a message; False when the pipe is already broken (the worker died)."""
        if self._conn is None:
            return False
        try:
            with self._send_lock:
                self._conn.send(msg)
            return True
        except (OSError, ValueError, BrokenPipeError):
            return False

    def kill(self) -> None:
        proc, conn = self._proc, self._conn
        self.generation += 1  # silence the old reader before the process goes
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=5)
        if conn is not None:
            conn.close()
        self._proc = self._conn = None
        self.state = WorkerState.DEAD

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit; kill it if it does not within `timeout`."""
        if self._proc is not None and self._proc.is_alive():
            self.send(m.Shutdown())
            self._proc.join(timeout)
        self.kill()

    def resource_usage(self) -> dict[str, float | None]:
        """CPU percent since the last call and resident memory, read from the OS."""
        if self.pid is None or not self.alive:
            return {"cpu_percent": None, "rss_bytes": None}
        try:
            if self._ps is None or self._ps.pid != self.pid:
                self._ps = psutil.Process(self.pid)
            with self._ps.oneshot():
                return {
                    "cpu_percent": self._ps.cpu_percent(None),
                    "rss_bytes": float(self._ps.memory_info().rss),
                }
        except psutil.Error:
            return {"cpu_percent": None, "rss_bytes": None}
