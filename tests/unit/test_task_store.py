"""The task store's durability order: a result file reaches the disk before the row that says
the task succeeded (a power loss left 'succeeded' rows beside missing or empty files)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from ris.runtime.store import TaskStore


def test_a_result_file_is_on_disk_before_its_row_says_succeeded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "tasks.db"
    png = tmp_path / "images" / "t.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG")
    synced: list[tuple[str, str | None]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        # What the row said when the file (or its folder) was made durable.
        with sqlite3.connect(db) as look:
            row = look.execute("SELECT state FROM tasks WHERE id='t'").fetchone()
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), row[0] if row else None))
        real_fsync(fd)

    store = TaskStore(db)
    try:
        store.add("t", "image", "i", 0, {}, 1.0).result()
        monkeypatch.setattr(os, "fsync", fsync)
        store.finish("t", "succeeded", 2.0, result={"path": str(png)}, files=(str(png),)).result()
        gone = str(tmp_path / "images" / "swept.png")
        store.finish("t", "succeeded", 2.0, files=(gone,)).result()  # a file already gone: no error
    finally:
        store.close()
    assert synced == [(str(png), "queued"), (str(png.parent), "queued")]


def test_a_file_system_that_cannot_fsync_still_gets_the_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some FUSE and network file systems refuse fsync on a folder (EINVAL): the row saying
    the task succeeded is written all the same (it stayed 'running', the task run again)."""
    db = tmp_path / "tasks.db"
    png = tmp_path / "t.png"
    png.write_bytes(b"\x89PNG")

    def refuse(fd: int) -> None:
        raise OSError(22, "Invalid argument")

    store = TaskStore(db)
    try:
        store.add("t", "image", "i", 0, {}, 1.0).result()
        monkeypatch.setattr(os, "fsync", refuse)
        store.finish("t", "succeeded", 2.0, files=(str(png),)).result()
        monkeypatch.undo()
        row = store.get("t")
        assert row is not None and row.state == "succeeded"
    finally:
        store.close()


def test_a_record_that_cannot_be_read_is_left_out_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One byte changed in a row's JSON (SQLite's quick_check reads no JSON): every task list
    answered 500, and a queued one failed the server's start, a crash loop under systemd (an
    outside durability test)."""
    db = tmp_path / "tasks.db"
    store = TaskStore(db)
    try:
        for task_id in ("good", "bad-done", "bad-queued", "bad-message"):
            store.add(task_id, "image", "i", 0, {"prompt": task_id}, 1.0).result()
        store.finish("good", "succeeded", 2.0, result={"path": "p"}).result()
        store.finish("bad-done", "succeeded", 2.0, result={"path": "p"}).result()
    finally:
        store.close()
    with sqlite3.connect(db) as damage:
        damage.execute("UPDATE tasks SET result='X\"path\": \"p\"}' WHERE id='bad-done'")
        damage.execute("UPDATE tasks SET started_at=1.5 WHERE id IN ('good', 'bad-done')")
        damage.execute("UPDATE tasks SET request=CAST(X'7bfb7d' AS TEXT) WHERE id='bad-done'")
        # Any text column (a free-text error message), not only the JSON ones.
        damage.execute("UPDATE tasks SET error_message=CAST(X'6ffb6b' AS TEXT) WHERE id='bad-message'")
        # A byte >= 0x80: not UTF-8 (the whole fetch raised before any row was looked at).
        damage.execute("UPDATE tasks SET request=CAST(X'7bfb7d' AS TEXT) WHERE id='bad-queued'")
    store = TaskStore(db)
    try:
        assert [t.id for t in store.recent()] == ["good"]
        assert store.unfinished() == []  # the start goes on without it
        assert store.get("bad-done") is None and store.get("good") is not None
        # Read at every start (run times learned): the damaged one's request as {}, no raise.
        assert sorted(str(r[2]) for r in store.run_times("image")) == ["{'prompt': 'good'}", "{}"]
        store.recent()
    finally:
        store.close()
    said = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(said) == 3 and any("bad-queued (queued)" in s and "not run again" in s for s in said), said


def test_a_held_write_is_named_by_its_task() -> None:
    """A write held for want of room said 'INSERT OR REPLACE INTO tasks', and the CRITICAL line
    at a stop named no task an operator could look for (an outside durability test)."""
    from ris.runtime.store import _of_task

    assert _of_task("INSERT OR REPLACE INTO tasks (id, lane) VALUES (?, ?)", ("t1", "tts")) == " of task t1"
    assert _of_task("UPDATE tasks SET on_restart=? WHERE id=? AND state IN ('queued')", ("x", "t2")) == (
        " of task t2"
    )
    assert _of_task("DELETE FROM tasks WHERE id IN (?, ?)", ("a", "b")) == ""


def test_a_store_says_its_version_and_one_newer_than_this_code_is_refused_in_words(tmp_path: Path) -> None:
    """A downgrade (an older RIS on a data folder a newer one wrote) is refused before it
    could misread rows, with what to do; an unversioned store from before is brought up."""
    from ris.runtime.store import STORE_VERSION, StoreTooNew, store_problem

    path = tmp_path / "tasks.db"
    older = sqlite3.connect(str(path))
    older.execute(
        "CREATE TABLE tasks (id TEXT PRIMARY KEY, lane TEXT, model TEXT, state TEXT, priority INTEGER, "
        "request TEXT, submitted_at REAL, started_at REAL, finished_at REAL, attempts INTEGER, "
        "error_code TEXT, error_message TEXT, result TEXT)"
    )
    older.commit()
    older.close()
    assert store_problem(path) is None  # user_version 0: a store from before versions
    TaskStore(path).close()
    db = sqlite3.connect(str(path))
    assert db.execute("PRAGMA user_version").fetchone()[0] == STORE_VERSION
    db.execute(f"PRAGMA user_version={STORE_VERSION + 1}")
    db.commit()
    db.close()
    problem = store_problem(path)
    assert problem is not None and "written by a newer RIS" in problem and str(path) in problem
    assert f"store version {STORE_VERSION + 1}; this one reads up to {STORE_VERSION}" in problem
    # Opened without the command's check (an app made in a program): refused the same, untouched.
    with pytest.raises(StoreTooNew, match="written by a newer RIS"):
        TaskStore(path)
    db = sqlite3.connect(str(path))
    assert db.execute("PRAGMA user_version").fetchone()[0] == STORE_VERSION + 1
    assert "owner" in {row[1] for row in db.execute("PRAGMA table_info(tasks)")}  # from the first open
    assert db.execute("SELECT name FROM sqlite_master WHERE name='removed'").fetchone() is not None
    db.close()
