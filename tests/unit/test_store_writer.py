"""The store's writer thread: writes run in the order asked, a failed one is logged and does
not stop the rest, and closing writes what is queued first."""

from __future__ import annotations

import logging
import sqlite3
import threading
from contextlib import closing
from functools import partial
from pathlib import Path

import pytest

from ris.runtime.store import StoredTask, TaskStore
from ris.runtime.store_writer import StoreWriter, WriterClosed


def test_writes_run_one_at_a_time_in_the_order_they_were_asked_for() -> None:
    writer = StoreWriter()
    seen: list[int] = []
    threads: set[str] = set()

    def write(i: int) -> int:
        seen.append(i)
        threads.add(threading.current_thread().name)
        return i * 2

    futures = [writer.submit(partial(write, i)) for i in range(500)]
    assert [f.result() for f in futures] == [i * 2 for i in range(500)]
    assert seen == list(range(500))
    assert threads == {"ris-store-writer"}  # never the caller's thread
    writer.close()


def test_a_failed_write_is_logged_and_the_next_ones_still_run(caplog: pytest.LogCaptureFixture) -> None:
    writer = StoreWriter()
    seen: list[str] = []

    def boom() -> None:
        raise OSError("disk full")

    with caplog.at_level(logging.ERROR, logger="ris.store"):
        failed = writer.submit(boom, "UPDATE tasks")
        after = writer.submit(lambda: seen.append("after"))
        after.result()
    assert isinstance(failed.exception(), OSError)
    assert seen == ["after"]
    assert "UPDATE tasks failed: OSError: disk full" in caplog.text
    writer.close()


def test_close_writes_everything_queued_then_refuses_more() -> None:
    writer = StoreWriter()
    gate = threading.Event()
    seen: list[int] = []
    writer.submit(gate.wait)  # holds the thread while the rest queue up
    futures = [writer.submit(partial(seen.append, i)) for i in range(100)]
    gate.set()
    writer.close()
    assert all(f.done() for f in futures) and seen == list(range(100))
    with pytest.raises(WriterClosed):
        writer.submit(lambda: None)


def test_flush_returns_once_earlier_writes_are_done() -> None:
    writer = StoreWriter()
    gate = threading.Event()
    seen: list[str] = []
    writer.submit(gate.wait)
    writer.submit(lambda: seen.append("queued"))
    threading.Timer(0.01, gate.set).start()  # released from another thread, not by flush
    writer.flush()
    assert seen == ["queued"]
    writer.close()


def test_the_store_writes_on_its_thread_and_a_closed_store_has_every_row(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.db")
    for i in range(50):
        store.keep(
            StoredTask(f"{i:032x}", "tts", "e", "succeeded", 0, {}, float(i), None, 1.0, 1, None, None, None)
        )
    store.close()  # no wait in between: close writes what is queued
    with closing(sqlite3.connect(str(tmp_path / "tasks.db"))) as db:
        assert db.execute("SELECT COUNT(*) FROM tasks").fetchone() == (50,)
