"""The server's log lines written by a thread of their own, never by the event loop.

A log handler writes to its stream where it is called: for uvicorn's access log that is the
event loop, once per request. When the stream's reader stalls (a terminal paused, a log
collector that stopped reading the pipe), the write blocks once the pipe's buffer is full, and
with it the loop: every lane's requests and streams stop (measured: /health froze after 1,118
requests with stderr a pipe nobody read). Here each logger's handlers move behind a bounded
queue: the caller only makes the record and queues it (no formatting, no system call), a
writer thread hands it to the original handlers. A full queue drops records and counts them;
the writer says how many once it writes again.

uvicorn ends a process stopped by SIGTERM by raising the signal again once it has shut down,
past any `finally` of its caller: `ris serve` stops the writer before that (cli._Server), or the
last lines ("Finished server process") would be lost with the queue.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable

# Records waiting for a stalled reader at most (a few MB: a traceback waits as text), then
# dropped.
MAX_QUEUED = 10_000
_STOP = None

Queued = tuple[logging.LogRecord, tuple[logging.Handler, ...]]


_TRACEBACKS = logging.Formatter()


class _Drops:
    """Records dropped because the queue was full (callers on several threads)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.count += 1


class _Queueing(logging.Handler):
    """Stands in for a logger's handlers: queues each record with the handlers it is for."""

    def __init__(
        self, q: queue.Queue[Queued | None], targets: tuple[logging.Handler, ...], drops: _Drops
    ) -> None:
        super().__init__()
        self._queue = q
        self._targets = targets
        self._drops = drops

    def emit(self, record: logging.LogRecord) -> None:
        # The record as it is: formatting waits for the writer (its arguments are the caller's
        # values at the time of the call, as for any handler that formats late). A traceback
        # is made text now: its frames (and all they hold) must not wait in the queue.
        if record.exc_info:
            record.exc_text = record.exc_text or _TRACEBACKS.formatException(record.exc_info)
            record.exc_info = None
        try:
            self._queue.put_nowait((record, self._targets))
        except queue.Full:
            self._drops.add()


class LogWriter:
    """Moves the handlers of `loggers` (names; "" is the root) behind one queue and a thread.
    The note of dropped records goes to the handlers of `notes_to` (one of `loggers`)."""

    def __init__(self, loggers: Iterable[str], max_queued: int = MAX_QUEUED, notes_to: str = "") -> None:
        self._queue: queue.Queue[Queued | None] = queue.Queue(max_queued)
        self._drops = _Drops()
        self._reported = 0
        self._moved: list[tuple[logging.Logger, list[logging.Handler]]] = []
        self._notes_to: tuple[logging.Handler, ...] = ()
        for name in loggers:
            logger = logging.getLogger(name)
            if not logger.handlers:
                continue
            handlers = list(logger.handlers)
            self._moved.append((logger, handlers))
            logger.handlers = [_Queueing(self._queue, tuple(handlers), self._drops)]
            if name == notes_to:
                self._notes_to = tuple(handlers)
        self._stopped = False
        self._thread = threading.Thread(target=self._write, name="ris-log-writer", daemon=True)
        self._thread.start()

    def dropped(self) -> int:
        """Records dropped so far because the queue was full."""
        return self._drops.count

    def stop(self, timeout: float = 2.0) -> None:
        """Write what is queued, waiting `timeout` at most for a stalled reader (the process's
        exit may still wait for it: logging's own shutdown flushes every handler, as it did
        when the event loop wrote), then give the loggers their handlers back. Once."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        for logger, handlers in self._moved:
            logger.handlers = handlers

    def _write(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            record, targets = item
            for handler in targets:
                _handle(handler, record)
            dropped = self._drops.count
            if dropped != self._reported:
                note = logging.LogRecord(
                    __name__, logging.WARNING, __file__, 0,
                    "%d log records dropped: the log's reader did not keep up",
                    (dropped - self._reported,), None,
                )  # fmt: skip
                self._reported = dropped
                for handler in self._notes_to:  # straight to them: a full queue would drop it
                    _handle(handler, note)


def _handle(handler: logging.Handler, record: logging.LogRecord) -> None:
    """One record to one handler at its level; whatever goes wrong there is the handler's to
    report (handleError), and the writer lives on."""
    if record.levelno < handler.level:
        return
    try:
        handler.handle(record)
    except Exception:  # noqa: BLE001 - a filter or an emit that raised: the next record still goes
        handler.handleError(record)
