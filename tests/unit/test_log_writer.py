"""ris.log_writer: a logger's records go to its handlers on a thread of their own, so a handler
whose stream blocks (a stalled log reader) never holds the caller; what overflows the queue is
dropped, counted, and said once the writer writes again."""

from __future__ import annotations

import logging
import threading
import time

from ris.log_writer import LogWriter


class Gate(logging.Handler):
    """A handler whose stream blocks until the gate opens; it keeps what it wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()
        self.lines: list[str] = []
        self.threads: set[str] = set()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.open.wait(10)
        self.threads.add(threading.current_thread().name)
        self.lines.append(self.format(record))
        self.records.append(record)


def test_a_blocked_handler_never_holds_the_caller_and_the_overflow_is_said() -> None:
    logger = logging.getLogger("ris.test.log_writer")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    gate = Gate()
    logger.addHandler(gate)
    writer = LogWriter(["ris.test.log_writer"], max_queued=5, notes_to="ris.test.log_writer")
    try:
        t0 = time.monotonic()
        for i in range(20):
            logger.info("line %d", i)
        assert time.monotonic() - t0 < 1.0  # the caller never waited for the stream
        # One record may be with the blocked handler, five wait in the queue: the rest dropped.
        dropped = writer.dropped()
        assert dropped in (14, 15)
        gate.open.set()
        writer.stop()
    finally:
        logger.removeHandler(gate)
    kept = [f"line {i}" for i in range(20 - dropped)]  # in order
    note = f"{dropped} log records dropped: the log's reader did not keep up"
    assert gate.lines == [*kept[:1], note, *kept[1:]] or gate.lines == [*kept, note]
    assert gate.lines.count(note) == 1 and writer.dropped() == dropped  # the note is never dropped
    assert gate.threads == {"ris-log-writer"}
    assert logger.handlers == []  # the handlers it moved are given back (here: removed since)


class Failing(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise RecursionError("a handler that fails")  # not caught by Handler.handleError's caller

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.errors = getattr(self, "errors", 0) + 1


def test_a_failing_handler_does_not_stop_the_writer_and_tracebacks_wait_as_text() -> None:
    logger = logging.getLogger("ris.test.log_writer_failing")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    failing, gate = Failing(), Gate()
    gate.open.set()
    logger.addHandler(failing)
    logger.addHandler(gate)
    writer = LogWriter(["ris.test.log_writer_failing"])
    try:
        logger.info("first")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("second")
        writer.stop()
    finally:
        logger.removeHandler(failing)
        logger.removeHandler(gate)
    assert gate.lines[0] == "first" and failing.errors == 2
    # The traceback came as text: no frames were held in the queue.
    assert gate.lines[1].startswith("second\nTraceback") and "ValueError: boom" in gate.lines[1]
    assert gate.records[1].exc_info is None
    assert gate.threads == {"ris-log-writer"}


def test_the_loggers_get_their_handlers_back_and_levels_hold() -> None:
    logger = logging.getLogger("ris.test.log_writer_levels")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    gate = Gate()
    gate.open.set()
    gate.setLevel(logging.WARNING)
    logger.addHandler(gate)
    writer = LogWriter(["ris.test.log_writer_levels", "ris.test.no_handlers"])
    try:
        assert logger.handlers != [gate]
        logger.info("below the handler's level")
        logger.warning("kept")
        writer.stop()
        assert logger.handlers == [gate]
        assert gate.lines == ["kept"]
        assert logging.getLogger("ris.test.no_handlers").handlers == []
    finally:
        logger.removeHandler(gate)
