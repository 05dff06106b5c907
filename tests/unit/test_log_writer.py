"""ris.log_writer: a logger's records go to its handlers on a thread of their own, so a handler
whose stream blocks (a stalled log reader) never holds the caller; what overflows the queue is
dropped, counted, and said once the writer writes again."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from ris.log_writer import LogWriter


class Gate(logging.Handler):
    """A handler whose stream blocks until the gate opens; it keeps what it wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()
        self.lines: list[str] = []
        self.threads: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.open.wait(10)
        self.threads.add(threading.current_thread().name)
        self.lines.append(record.getMessage())


def test_a_blocked_handler_never_holds_the_caller_and_the_overflow_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("ris.test.log_writer")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    gate = Gate()
    logger.addHandler(gate)
    writer = LogWriter(["ris.test.log_writer"], max_queued=5)
    try:
        t0 = time.monotonic()
        for i in range(20):
            logger.info("line %d", i)
        assert time.monotonic() - t0 < 1.0  # the caller never waited for the stream
        # One record may be with the blocked handler, five wait in the queue: the rest dropped.
        assert writer.dropped() in (14, 15)
        with caplog.at_level(logging.WARNING, logger="ris.log_writer"):
            gate.open.set()
            writer.stop()
    finally:
        logger.removeHandler(gate)
    assert gate.lines == [f"line {i}" for i in range(20 - writer.dropped())]  # in order
    assert gate.threads == {"ris-log-writer"}
    notes = [r.getMessage() for r in caplog.records if r.name == "ris.log_writer"]
    assert notes == [f"{writer.dropped()} log records dropped: the log's reader did not keep up"]
    assert logger.handlers == []  # the handlers it moved are given back (here: removed since)


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
