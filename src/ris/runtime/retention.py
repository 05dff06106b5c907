"""How long results stay: a finished task's record and its files live, and go, together.

Policy (config.json `retention`): a task record older than `max_age_h` is deleted with its
files; when the result folders hold more than `max_total_mb`, the oldest results go first
until they fit; a file no task record names (a crash between writing it and recording its
task, a store deleted by hand, or one restored from an older copy) is moved, once it is
`ORPHAN_GRACE_S` old, to its folder's `orphaned/` (`images/orphaned/<id>.png`), where it stays
`max_age_h` before it is deleted, and goes first when the folders are over `max_total_mb`: a
store restored from a backup made while the server ran (its newest records still in the WAL
file) had every newer picture and speech deleted within a second of the start. A half-written
file (`<id>.png.tmp`) is deleted, not kept. Only the lanes' result folders are swept, and in
them only files named as RIS names its results, never the rest of data_dir.

Result files are named `<task id>.<ext>` (ris.runtime.files), which is how a file is matched
to its record. A sweep reads the disk and the store and may run on a worker thread: the grace
period covers a result written a moment before its task is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ris.config import RetentionConfig
from ris.runtime.store import Removal, TaskStore

log = logging.getLogger("ris.engine")  # the engine schedules the sweeps

# A file with no record is left alone this long (its task may be being recorded right now).
ORPHAN_GRACE_S = 60.0
# Where such files are set aside (in their own folder: a move, never a copy across disks),
# and kept retention.max_age_h from then.
ORPHANS_FOLDER = "orphaned"
# How long a removed task's note is kept (its id then answers 410 task_expired, saying why; a
# client polling past that gets the 404 of an id never seen). A row of ~100 bytes a task.
REMOVALS_KEPT_S = 7 * 86400.0
# What RIS names the files it writes: a task id (32 hex digits), then its extensions
# (`<id>.wav`, `<id>.png.tmp`). Anything else in the folders is not RIS's, and is never
# deleted: an operator's `holiday.jpg` in images/ went as an orphan.
RESULT_NAME = re.compile(r"^[0-9a-f]{32}\.")


@dataclass(frozen=True)
class SweepReport:
    expired: int = 0  # task records deleted for their age (with their files)
    evicted: int = 0  # results deleted to bring the folders under the size limit
    orphans: int = 0  # results set aside in orphaned/ because no task record names them
    bytes_freed: int = 0
    bytes_kept: int = 0
    deleted: tuple[str, ...] = ()  # the task ids whose records went (expired and evicted)
    orphans_deleted: int = 0  # set-aside files deleted, max_age_h after they were set aside


@dataclass
class _Result:
    """The files of one task id, as found on disk."""

    paths: list[Path]
    size: int
    newest: float  # mtime of its newest file


class Retention:
    def __init__(
        self,
        store: TaskStore,
        root: Path,
        folders: Iterable[str],
        policy: RetentionConfig,
        wall: Callable[[], float],
    ) -> None:
        self.store = store
        self.folders = [Path(root) / f for f in folders]
        self.policy = policy
        self._wall = wall

    def sweep(self) -> SweepReport:
        now = self._wall()
        results = self._scan()
        freed = 0

        def remove(task_id: str) -> None:
            nonlocal freed
            found = results.pop(task_id, None)
            for path in found.paths if found else ():
                path.unlink(missing_ok=True)
            freed += found.size if found else 0

        expired = self.store.finished_before(now - self.policy.max_age_h * 3600)
        for task_id in expired:
            remove(task_id)
        self.store.delete(
            expired, Removal(f"older than retention.max_age_h ({self.policy.max_age_h:g} h)", now)
        )
        self.store.forget_removals(now - REMOVALS_KEPT_S)

        known = self.store.known(list(results))
        candidates = [i for i, r in results.items() if i not in known and r.newest < now - ORPHAN_GRACE_S]
        orphans = []
        for task_id in candidates:
            left, deleted_bytes, moved = self._set_aside(results[task_id], now)
            freed += deleted_bytes
            if left:  # not moved now (no rights, open elsewhere): counted where it is
                results[task_id] = _Result(
                    [p for p, _ in left], sum(size for _, size in left), results[task_id].newest
                )
            else:
                del results[task_id]
            if moved:  # a half-written file alone was deleted, not set aside
                orphans.append(task_id)
        # Set-aside files past max_age_h go; over the size limit, the rest go first (oldest
        # first), before any result.
        kept_until = now - self.policy.max_age_h * 3600
        aside = sorted(self._aside(), key=lambda a: a[2])
        gone = [a for a in aside if a[2] < kept_until]
        staying = [a for a in aside if a[2] >= kept_until]
        limit = self.policy.max_total_mb * 2**20
        total = sum(r.size for r in results.values()) + sum(size for _, size, _ in staying)
        while staying and total > limit:
            gone.append(staying.pop(0))
            total -= gone[-1][1]
        deleted = 0
        for path, size, when in gone:
            try:
                path.unlink()
            except OSError:  # not ours to delete now: still there, and counted
                if when >= kept_until:
                    total += size
                continue
            freed += size
            deleted += 1
        evicted: list[str] = []
        for task_id in sorted(results, key=lambda i: results[i].newest):  # oldest first
            if total <= limit:
                break
            total -= results[task_id].size
            remove(task_id)
            evicted.append(task_id)
        full = f"the results passed retention.max_total_mb ({self.policy.max_total_mb:g} MiB), oldest first"
        self.store.delete(evicted, Removal(full, now))
        return SweepReport(
            len(expired), len(evicted), len(orphans), freed, total, (*expired, *evicted), deleted
        )

    @staticmethod
    def _set_aside(found: _Result, now: float) -> tuple[list[tuple[Path, int]], int, int]:
        """A result no record names, moved to its folder's orphaned/ with its time set to now
        (kept from then); a half-written one deleted. Returns the files left where they were
        (no rights; on Windows, open in a stream), with their sizes, for the next sweep, the
        bytes deleted and how many files were moved."""
        left = []
        deleted = moved = 0
        for path in found.paths:
            try:
                size = path.stat().st_size
            except OSError:
                continue  # gone meanwhile
            try:
                if path.name.endswith(".tmp"):
                    path.unlink()
                    deleted += size
                    continue
                target = path.parent / ORPHANS_FOLDER / path.name
                target.parent.mkdir(exist_ok=True)
                path.replace(target)
                moved += 1
                os.utime(target, (now, now))
            except OSError:
                left.append((path, size))
        return left, deleted, moved

    def _aside(self) -> list[tuple[Path, int, float]]:
        """The set-aside files (as RIS names results): path, size, when set aside."""
        out = []
        for folder in self.folders:
            try:
                entries = list((folder / ORPHANS_FOLDER).iterdir())
            except OSError:
                continue
            for path in entries:
                try:
                    st = path.stat()
                except OSError:
                    continue
                if path.is_file() and RESULT_NAME.match(path.name):
                    out.append((path, st.st_size, st.st_mtime))
        return out

    def _scan(self) -> dict[str, _Result]:
        """Result files by task id; temporary files of an interrupted write count as their
        task's (`<id>.png.tmp`), so they go with it or as orphans."""
        results: dict[str, _Result] = defaultdict(lambda: _Result([], 0, 0.0))
        for folder in self.folders:
            try:
                entries = list(folder.iterdir())
            except FileNotFoundError:
                continue
            for path in entries:
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if not path.is_file() or not RESULT_NAME.match(path.name):
                    continue
                r = results[path.name.split(".", 1)[0]]
                r.paths.append(path)
                r.size += st.st_size
                r.newest = max(r.newest, st.st_mtime)
        return dict(results)


def log_sweep(done: asyncio.Future[SweepReport]) -> None:
    """Log a finished sweep (run on a thread) that did something, or why it failed."""
    if done.cancelled():
        return
    if done.exception() is not None:
        log.error("retention sweep failed: %r", done.exception())
        return
    r = done.result()
    if r.expired or r.evicted or r.orphans_deleted:
        log.info(
            "retention: %d expired, %d over the size limit, %d set-aside files past max_age_h; "
            "%.1f MiB freed, %.1f MiB kept",
            r.expired,
            r.evicted,
            r.orphans_deleted,
            r.bytes_freed / 2**20,
            r.bytes_kept / 2**20,
        )
    if r.orphans:
        log.warning(
            "retention: %d results that no task record names set aside in their folder's %s/ "
            "(kept retention.max_age_h, then deleted): a crash between a result and its record, "
            "or a task store restored from an older copy (docs/DEPLOYMENT_GUIDE.md, Backup)",
            r.orphans,
            ORPHANS_FOLDER,
        )
