"""The retention policy on a real store and real files: records and files go together, by
age, by total size (oldest first) and as orphans; nothing else in data_dir is touched."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ris.config import RetentionConfig
from ris.runtime.retention import ORPHAN_GRACE_S, ORPHANS_FOLDER, Retention
from ris.runtime.store import StoredTask, TaskStore

NOW = time.time()
HOUR = 3600.0


def record(store: TaskStore, task_id: str, finished_h_ago: float | None, state: str = "succeeded") -> None:
    finished = None if finished_h_ago is None else NOW - finished_h_ago * HOUR
    store.keep(
        StoredTask(task_id, "tts", "e", state, 0, {}, NOW - 1000 * HOUR, None, finished, 1, None, None, None)
    ).result()  # on disk before the sweep reads it (writes run on the store's thread)


def result_file(root: Path, task_id: str, size: int, age_s: float, folder: str = "audio") -> Path:
    path = root / folder / f"{task_id}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def policy(root: Path, store: TaskStore, **kw: float) -> Retention:
    return Retention(store, root, ["audio", "images"], RetentionConfig(**kw), wall=lambda: NOW)  # type: ignore[arg-type]


def test_a_record_past_its_age_goes_with_its_files_and_a_recent_one_stays(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.db")
    record(store, "a" * 32, finished_h_ago=30)
    old = result_file(tmp_path, "a" * 32, 10, age_s=30 * HOUR)
    record(store, "b" * 32, finished_h_ago=1)
    new = result_file(tmp_path, "b" * 32, 10, age_s=HOUR)
    record(store, "c" * 32, finished_h_ago=None, state="running")  # unfinished: never swept
    report = policy(tmp_path, store, max_age_h=24).sweep()
    assert (report.expired, report.bytes_freed) == (1, 10)
    assert not old.exists() and new.exists()
    assert store.get("a" * 32) is None and store.get("b" * 32) and store.get("c" * 32)


def test_over_the_size_limit_the_oldest_results_go_first(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.db")
    mib = 2**20
    paths = []
    for i, task_id in enumerate(("1" * 32, "2" * 32, "3" * 32)):
        record(store, task_id, finished_h_ago=3 - i)
        paths.append(result_file(tmp_path, task_id, int(0.6 * mib), age_s=(3 - i) * HOUR))
    report = policy(tmp_path, store, max_total_mb=1).sweep()
    assert report.evicted == 2 and report.bytes_kept == int(0.6 * mib)
    assert [p.exists() for p in paths] == [False, False, True]
    assert store.get("1" * 32) is None and store.get("3" * 32) is not None


def test_files_no_task_names_are_set_aside_after_a_grace_period_and_other_folders_left_alone(
    tmp_path: Path,
) -> None:
    store = TaskStore(tmp_path / "tasks.db")
    orphan = result_file(tmp_path, "d" * 32, 10, age_s=ORPHAN_GRACE_S + 5, folder="images")
    half_written = result_file(tmp_path, "e" * 32, 10, age_s=ORPHAN_GRACE_S + 5)
    half_written.rename(half_written.with_name(half_written.name + ".tmp"))
    being_recorded = result_file(tmp_path, "f" * 32, 10, age_s=1)
    model_cache = result_file(tmp_path, "g" * 32, 10, age_s=1000 * HOUR, folder="models")
    report = policy(tmp_path, store).sweep()
    assert report.orphans == 1  # set aside; the half-written one deleted, not counted as set aside
    assert not orphan.exists() and not half_written.with_name(half_written.name + ".tmp").exists()
    assert being_recorded.exists() and model_cache.exists()
    # Set aside in their folder's orphaned/; a half-written one deleted, not kept.
    assert [p.name for p in (tmp_path / "images" / ORPHANS_FOLDER).iterdir()] == [orphan.name]
    assert not (tmp_path / "audio" / ORPHANS_FOLDER).exists() or not any(
        (tmp_path / "audio" / ORPHANS_FOLDER).iterdir()
    )


def test_a_store_restored_from_an_older_copy_loses_no_result_at_once(tmp_path: Path) -> None:
    """tasks.db copied while the server ran (its newest records in the WAL), restored: every
    picture and speech it did not list was deleted within a second of the start. They are set
    aside, kept max_age_h from then, and only then deleted."""
    store = TaskStore(tmp_path / "tasks.db")
    newer = result_file(tmp_path, "a" * 32, 10, age_s=30 * HOUR, folder="images")  # older than max_age_h
    sweeper = policy(tmp_path, store, max_age_h=24)
    assert sweeper.sweep().orphans == 1 and not newer.exists()
    aside = tmp_path / "images" / ORPHANS_FOLDER / newer.name
    assert aside.exists()  # not deleted for the age it had before
    assert sweeper.sweep().orphans_deleted == 0 and aside.exists()
    later = Retention(
        store, tmp_path, ["audio", "images"], RetentionConfig(max_age_h=24), wall=lambda: NOW + 25 * HOUR
    )
    assert later.sweep().orphans_deleted == 1 and not aside.exists()


def test_a_file_ris_did_not_name_is_never_deleted(tmp_path: Path) -> None:
    """An operator's holiday.jpg in images/, two hours old, went as an orphan: only files named
    as RIS names its results (a task id, then extensions) are RIS's to delete."""
    store = TaskStore(tmp_path / "tasks.db")
    theirs = [
        result_file(tmp_path, name, 10, age_s=2 * HOUR, folder="images")
        for name in ("holiday", "A" * 32, "d" * 31)
    ]
    ours = result_file(tmp_path, "d" * 32, 10, age_s=2 * HOUR, folder="images")
    assert policy(tmp_path, store).sweep().orphans == 1
    assert not ours.exists() and all(p.exists() for p in theirs)  # ours set aside


def test_set_aside_files_go_first_when_the_folders_are_over_their_size(tmp_path: Path) -> None:
    """They counted toward no limit and stayed max_age_h: a full disk (the reason images wait
    for room) could not be relieved by the size limit."""
    store = TaskStore(tmp_path / "tasks.db")
    mib = 2**20
    record(store, "1" * 32, finished_h_ago=1)
    kept = result_file(tmp_path, "1" * 32, int(0.6 * mib), age_s=HOUR)
    stray = result_file(tmp_path, "2" * 32, int(0.6 * mib), age_s=2 * HOUR)
    assert policy(tmp_path, store).sweep().orphans == 1  # set aside: no limit reached
    theirs = tmp_path / "audio" / ORPHANS_FOLDER / "notes.txt"
    theirs.write_text("an operator's")
    report = policy(tmp_path, store, max_total_mb=1).sweep()
    assert (report.orphans_deleted, report.evicted) == (1, 0)
    assert kept.exists() and not (tmp_path / "audio" / ORPHANS_FOLDER / stray.name).exists()
    assert theirs.exists()  # only files named as RIS names them


def test_a_result_that_cannot_be_set_aside_stays_counted_where_it_is(tmp_path: Path) -> None:
    """A file that could not be moved was said to be set aside at every sweep, and left out of
    the size limit."""
    store = TaskStore(tmp_path / "tasks.db")
    stray = result_file(tmp_path, "3" * 32, 100, age_s=2 * HOUR, folder="images")
    (tmp_path / "images" / ORPHANS_FOLDER).write_text("a file where the folder would go")
    report = policy(tmp_path, store).sweep()
    assert (report.orphans, report.bytes_kept, report.bytes_freed) == (0, 100, 0)
    assert stray.exists()


def test_a_removed_task_is_noted_with_why_and_when_and_the_notes_go_in_time(tmp_path: Path) -> None:
    """A client polling a task the sweep removed got 404 not_found, as for an id never seen:
    the store notes why and when (the API answers 410 task_expired from it), for a week."""
    store = TaskStore(tmp_path / "tasks.db")
    record(store, "a" * 32, finished_h_ago=30)
    mib = 2**20
    for i, task_id in enumerate(("1" * 32, "2" * 32)):
        record(store, task_id, finished_h_ago=2 - i)
        result_file(tmp_path, task_id, int(0.6 * mib), age_s=(2 - i) * HOUR)
    report = policy(tmp_path, store, max_age_h=24, max_total_mb=1).sweep()
    assert (report.expired, report.evicted) == (1, 1)
    old, evicted = store.removal("a" * 32), store.removal("1" * 32)
    assert old is not None and old[1].at == NOW and "max_age_h (24 h)" in old[1].why
    assert evicted is not None and "max_total_mb (1 MiB)" in evicted[1].why
    assert store.removal("2" * 32) is None  # kept
    store.forget_removals(NOW + 1).result()
    assert store.removal("a" * 32) is None
