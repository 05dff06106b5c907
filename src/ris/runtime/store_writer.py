"""One thread that runs the task store's writes, in the order they were asked for.

Each write to the store is a SQLite transaction fsync'd to disk (synchronous=FULL): a
millisecond or more on a good disk, far more on a busy one. Run on the event loop, every one
of them stalled the tokens streaming to every other client. Here they queue for one thread
instead: the loop hands a write over and goes on; the write's future says when it is on disk
(or why it is not), for the few callers that must wait (a task acknowledged only once it is
recorded). A failed write is logged with what it was; the writes after it still run.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

log = logging.getLogger("ris.store")

T = TypeVar("T")

# Writes waiting at most; past it, whoever asks waits for room (a disk this far behind is
# better felt than a queue that grows without bound).
MAX_PENDING = 10_000


class WriterClosed(RuntimeError):
    """A write asked for after close()."""


class StoreWriter:
    def __init__(self, name: str = "ris-store-writer", max_pending: int = MAX_PENDING) -> None:
        self._queue: queue.Queue[tuple[Callable[[], Any], Future[Any], str] | None] = queue.Queue(max_pending)
        self._closed = False
        self._lock = threading.Lock()  # submit against close: nothing is queued after the end
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, write: Callable[[], T], what: str = "write") -> Future[T]:
        """Queue `write` after every write asked for before it; its future holds its result
        or its exception. `what` names it in the log if it fails."""
        done: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise WriterClosed(f"the store is closed: {what} not written")
            self._queue.put((write, done, what))
        return done

    def flushed(self) -> Future[None]:
        """Done once every write asked for before it has run (each one is on disk or has failed,
        and said so)."""
        return self.submit(lambda: None, "flush")

    def flush(self) -> None:
        """Return once every write asked for so far has run."""
        self.flushed().result()

    def close(self) -> None:
        """Run what is queued, then stop the thread (later writes raise WriterClosed)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            write, done, what = item
            if not done.set_running_or_notify_cancel():
                continue
            try:
                done.set_result(write())
            except BaseException as e:  # noqa: BLE001 - reported on its future and in the log
                log.error("task store: %s failed: %s: %s", what, type(e).__name__, e)
                done.set_exception(e)
