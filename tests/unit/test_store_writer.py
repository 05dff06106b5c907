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


def test_a_write_the_disk_had_no_room_for_is_held_and_written_in_order_once_it_has(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A task's end the full disk refused was dropped: its row said "running", and the next
    start ran the task again after its client had been told it failed."""
    import ris.runtime.store_writer as store_writer

    monkeypatch.setattr(store_writer, "RETRY_HELD_S", 0.02)
    writer = StoreWriter()
    room = threading.Event()
    written: list[str] = []

    def row(name: str) -> None:
        if not room.is_set():
            raise sqlite3.OperationalError("database or disk is full")
        written.append(name)

    ended = writer.submit(partial(row, "end of a"), "finish a", hold=True)
    with pytest.raises(sqlite3.OperationalError):
        ended.result(5)  # the caller hears at once, and goes on
    started = writer.submit(partial(row, "start of b"), "mark b", hold=True)
    with pytest.raises(OSError, match="held until the disk has room"):
        started.result(5)  # behind the first, not tried before it
    accepted = writer.submit(partial(row, "accept c"), "add c")  # not held: refused, said
    with pytest.raises(sqlite3.OperationalError):
        accepted.result(5)
    assert writer.held == 2 and written == []
    room.set()
    for _ in range(500):
        if not writer.held:
            break
        threading.Event().wait(0.01)
    assert written == ["end of a", "start of b"]  # in the order asked, the refused one never
    writer.close()
    assert "held, and tried again" in caplog.text and "held finish a written" in caplog.text


def test_writes_still_held_at_the_close_are_named(caplog: pytest.LogCaptureFixture) -> None:
    writer = StoreWriter()

    def full() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        writer.submit(full, "finish a", hold=True).result(5)
    writer.close()
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1 and "1 write(s) never found room" in critical[0].getMessage()
    assert "finish a" in critical[0].getMessage()
