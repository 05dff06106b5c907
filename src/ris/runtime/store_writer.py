"""One thread that runs the task store's writes, in the order they were asked for.

Each write to the store is a SQLite transaction fsync'd to disk (synchronous=FULL): a
millisecond or more on a good disk, far more on a busy one. Run on the event loop, every one
of them stalled the tokens streaming to every other client. Here they queue for one thread
instead: the loop hands a write over and goes on; the write's future says when it is on disk
(or why it is not), for the few callers that must wait (a task acknowledged only once it is
recorded). A failed write is logged with what it was; the writes after it still run.

A write the disk had no room for, of a state the server has already acted on (a task started,
ended, cancelled: `hold=True`), is held and tried again, in order, until it is on disk: dropped,
the task's row said "running" and the next start ran it again, after its client had been told
it had failed (then it succeeded: two results for one request, a run's CPU spent at every
restart while the disk stayed full, and its attempts never counted). Later held writes wait
behind the first (a task's start recorded after its end would make it run again). What is still
held when the writer closes is named in the log (CRITICAL): those tasks run again at the next
start. A write whose caller must know it is on disk (a task's acceptance) is never held: its
caller refuses the request instead.
"""

from __future__ import annotations

import errno
import logging
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

log = logging.getLogger("ris.store")

T = TypeVar("T")

# Writes waiting at most; past it, whoever asks waits for room (a disk this far behind is
# better felt than a queue that grows without bound).
MAX_PENDING = 10_000
# How often held writes are tried again while nothing else is written.
RETRY_HELD_S = 5.0
# SQLite's result codes for a full disk (SQLITE_FULL) and a failed write (SQLITE_IOERR, which
# a write into a WAL file on a full disk may be), in the primary code's byte.
_SQLITE_NO_ROOM = (13, 10)


def no_room(e: BaseException) -> bool:
    """Whether a write failed for want of disk space (worth trying again later)."""
    if isinstance(e, sqlite3.Error):
        code = getattr(e, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF in _SQLITE_NO_ROOM) or "full" in str(e)
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


class WriterClosed(RuntimeError):
    """A write asked for after close()."""


class StoreWriter:
    def __init__(self, name: str = "ris-store-writer", max_pending: int = MAX_PENDING) -> None:
        self._queue: queue.Queue[tuple[Callable[[], Any], Future[Any], str, bool] | None] = queue.Queue(
            max_pending
        )
        # Writes the disk had no room for, oldest first (tried again; see the module's doc).
        self._held: deque[tuple[Callable[[], Any], str]] = deque()
        self._closed = False
        self._lock = threading.Lock()  # submit against close: nothing is queued after the end
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, write: Callable[[], T], what: str = "write", hold: bool = False) -> Future[T]:
        """Queue `write` after every write asked for before it; its future holds its result
        or its exception. `what` names it in the log if it fails. `hold`: a write the disk has
        no room for is held and tried again until it is on disk (its future says the first
        failure at once: the caller goes on)."""
        done: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise WriterClosed(f"the store is closed: {what} not written")
            self._queue.put((write, done, what, hold))
        return done

    @property
    def held(self) -> int:
        """How many writes wait for room on the disk."""
        return len(self._held)

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
        while True:
            try:
                item = self._queue.get(timeout=RETRY_HELD_S if self._held else None)
            except queue.Empty:
                self._retry_held()
                continue
            if item is None:
                break
            write, done, what, hold = item
            if not done.set_running_or_notify_cancel():
                continue
            if hold and self._held and not self._retry_held():
                # Behind the writes still held, in their order: not tried before them.
                self._held.append((write, what))
                done.set_exception(OSError(errno.ENOSPC, f"held until the disk has room: {what}"))
                continue
            try:
                done.set_result(write())
            except BaseException as e:  # noqa: BLE001 - reported on its future and in the log
                if hold and no_room(e):
                    log.error(
                        "task store: %s failed: %s: %s; held, and tried again every %g s until "
                        "it passes (a full disk, or one refusing writes)",
                        what,
                        type(e).__name__,
                        e,
                        RETRY_HELD_S,
                    )
                    self._held.append((write, what))
                else:
                    log.error("task store: %s failed: %s: %s", what, type(e).__name__, e)
                done.set_exception(e)
        if self._held and not self._retry_held():
            log.critical(
                "task store: %d write(s) never found room on the disk, lost: %s. A queued or "
                "running task whose end they recorded runs again at the next start; a speech "
                "result whose record they were is gone (its file goes with the next sweep)",
                len(self._held),
                "; ".join(what for _, what in self._held),
            )

    def _retry_held(self) -> bool:
        """Try the held writes again, oldest first, up to the first that still fails; True
        once none is held."""
        while self._held:
            write, what = self._held[0]
            try:
                write()
            except BaseException as e:  # noqa: BLE001 - still no room (or worse): tried later
                if not no_room(e):
                    log.error("task store: held %s failed: %s: %s; dropped", what, type(e).__name__, e)
                    self._held.popleft()
                    continue
                return False
            self._held.popleft()
            log.warning("task store: held %s written (the disk has room again)", what)
        return True
