"""The task store: durable lanes' tasks from acceptance on, and every finished task whose
result is a file (so the file stays reachable, across restarts, for as long as the retention
policy keeps both; ris.runtime.retention), in SQLite.

WAL journal with synchronous=FULL: a task acknowledged to a client (HTTP 202) has reached the
disk, and so has every state change after it, so a server killed with SIGKILL comes back
knowing every task it accepted. Progress within a running task is not stored: after a restart
a task that was running is run again from its start (or failed, past `max_attempts`).

Writes run on one thread of their own (ris.runtime.store_writer), in order, each returning a
future that says when it is on disk; reads use a second connection (WAL: a reader never waits
for a writer's fsync), so the event loop never waits for the disk to read either.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ris.runtime.store_writer import StoreWriter

log = logging.getLogger("ris.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id            TEXT PRIMARY KEY,
    lane          TEXT NOT NULL,
    model         TEXT NOT NULL,
    state         TEXT NOT NULL,
    priority      INTEGER NOT NULL,
    request       TEXT NOT NULL,
    submitted_at  REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    error_code    TEXT,
    error_message TEXT,
    result        TEXT,
    owner         TEXT,
    client        TEXT,
    deadline      REAL,
    on_restart    TEXT
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, submitted_at);
CREATE INDEX IF NOT EXISTS tasks_lane ON tasks (lane, submitted_at);
CREATE TABLE IF NOT EXISTS lane_starts (
    lane    TEXT PRIMARY KEY,
    seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS removed (
    id    TEXT PRIMARY KEY,
    owner TEXT,
    lane  TEXT NOT NULL,
    why   TEXT NOT NULL,
    at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS removed_at ON removed (at);
"""
# Columns added since the first schema, with the default older rows get: a data folder from an
# older version is brought up to date when opened (`_migrate`). A task from before owners has
# owner NULL: the anonymous owner, seen by admins only once keys are configured; one from
# before clients were kept, client NULL: resumed, it counts toward no client's share.
# A task from before deadlines were kept gets the lane's timeout anew when resumed.
_ADDED_COLUMNS = (
    ("owner", "TEXT DEFAULT NULL"),
    ("client", "TEXT DEFAULT NULL"),
    ("deadline", "REAL DEFAULT NULL"),
    ("on_restart", "TEXT DEFAULT NULL"),
    ("progress_done", "INTEGER DEFAULT NULL"),
    ("progress_total", "INTEGER DEFAULT NULL"),
)


# The store's layout, in SQLite's user_version: what an older RIS finds there tells it the
# store is newer than it reads (store_problem refuses it in words, before it could misread
# rows or fail on a table it lacks). Raise it with a change an older version cannot read
# (not with an added column: _ADDED_COLUMNS brings those up to date both ways).
STORE_VERSION = 1


# StoredTask.on_restart's values.
CANCELLED = "cancelled"
ABANDONED = "abandoned"


def _lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _damaged(text: object) -> bool:
    """Text read from a byte that is not UTF-8 (_lenient_text's surrogates)."""
    if not isinstance(text, str):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _request(raw: bytes) -> dict[str, Any]:
    """A stored request's JSON; {} for one that does not read (its run time still counts)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, AttributeError):  # JSON, UTF-8 (a byte >= 0x80 changed on disk)
        return {}
    return data if isinstance(data, dict) else {}


def _of_task(sql: str, args: tuple[Any, ...]) -> str:
    """ " of task <id>" for a write of one task's row (its label in the store writer's lines:
    a write held for want of room named no task, and the CRITICAL line at a stop none)."""
    if sql.startswith(("INSERT INTO tasks (id,", "INSERT OR REPLACE INTO tasks (id,")):
        return f" of task {args[0]}"
    if " WHERE id=?" in sql:
        return f" of task {args[sql.split(' WHERE id=?', 1)[0].count('?')]}"
    return ""


@dataclass(frozen=True)
class Removal:
    """Why and when (wall time) the retention policy removed a finished task."""

    why: str
    at: float


@dataclass(frozen=True)
class StoredTask:
    id: str
    lane: str
    model: str
    state: str
    priority: int
    request: dict[str, Any]
    # Wall-clock (Unix) times.
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    error_code: str | None
    error_message: str | None
    result: dict[str, Any] | None
    owner: str | None = None  # the key that created it (ris.runtime.tenancy)
    # Who sent it (TaskSpec.client: its share of the lane's slots), kept until it finishes,
    # for a resumption's fairness only.
    client: str | None = None
    # Wall-clock time its client's timeout ends (None: a row from before deadlines were kept).
    deadline: float | None = None
    # What becomes of it if the server stops before it ends (None: it runs again): CANCELLED,
    # a cancel was asked while it ran and the worker had not said it stopped; ABANDONED, its
    # client waited for it on the connection the stop closed, and nobody could fetch it.
    on_restart: str | None = None
    # How far it got, kept when it ends (an image that failed at step 12 of 20 reads so after
    # a restart too); None for a row from before, or one still unfinished.
    progress_done: int | None = None
    progress_total: int | None = None


def sync_files(paths: tuple[str, ...]) -> None:
    """Each file's bytes, then its folder's entry for it, on disk (fsync): what a rename of a
    freshly written file needs before anything may say the file exists. A file already gone
    (cancelled, swept) is skipped: the row says what became of it."""
    folders = set()
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        folders.add(os.path.dirname(os.path.abspath(path)))
    if os.name == "nt":
        return  # Windows opens no folder to fsync; its rename is written through
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pass_on(source: Future[None], target: Future[None]) -> None:
    error = source.exception()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(None)


def store_problem(path: Path) -> str | None:
    """Why the store at `path` cannot serve, in one line, or None: a file another user owns
    (a first run with sudo; the server then started, said ready and failed every durable
    request with "attempt to write a readonly database"), or one SQLite cannot read (a
    traceback of 80 lines, no path, no advice). Read whole (PRAGMA quick_check: linear in its
    size, a fraction of a second for the stores retention keeps). Only a damaged file is
    advised to be moved aside: a store another program holds locked is said as that."""
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists() and (not p.is_file() or not os.access(p, os.R_OK | os.W_OK)):
            what = "is not a file" if not p.is_file() else "cannot be read and written by this user"
            return f"the task store's {str(p)!r} {what}{owner_note(p)}"
    if not path.exists():
        return None
    version = 0
    try:
        db = sqlite3.connect(str(path), timeout=1.0)
        try:
            found = db.execute("PRAGMA quick_check").fetchone()
            version = db.execute("PRAGMA user_version").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError as e:  # locked, cannot be opened, an I/O error: not damage
        return f"the task store {str(path)!r} cannot be used now ({e}); is another program holding it?"
    except sqlite3.DatabaseError as e:  # not a database, malformed
        found = (str(e),)
    if found and found[0] != "ok":
        return (
            f"the task store {str(path)!r} is damaged ({found[0]}): move it aside to start "
            "with an empty one (the tasks it held, and their results, are then forgotten)"
        )
    return _too_new(path, version)


def _too_new(path: Path, version: int) -> str | None:
    if version <= STORE_VERSION:
        return None
    return (
        f"the task store {str(path)!r} was written by a newer RIS (store version {version}; "
        f"this one reads up to {STORE_VERSION}): serve with that version, or give this one "
        "another data_dir"
    )


class StoreTooNew(RuntimeError):
    """A store whose layout is newer than this code reads (store_problem's words)."""


def owner_note(path: Path) -> str:
    """Who owns `path`, where it is another user than this process's (the usual cause of a
    file or folder it cannot write: a first run with sudo); "" otherwise, and on Windows."""
    if os.name == "nt":
        return ""
    owner = path.stat().st_uid
    return f" (owned by uid {owner}; this server runs as uid {os.getuid()})" if owner != os.getuid() else ""


class TaskStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # The writer's connection, used only on the writer's thread.
        self._wdb = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        # Before anything writes to it (an app made without the CLI's store_problem check, a
        # test, an embedding program).
        too_new = _too_new(path, self._wdb.execute("PRAGMA user_version").fetchone()[0])
        if too_new:
            self._wdb.close()
            raise StoreTooNew(too_new)
        self._wdb.execute("PRAGMA journal_mode=WAL")
        self._wdb.execute("PRAGMA synchronous=FULL")
        self._wdb.executescript(_SCHEMA)
        self._migrate()
        if self._wdb.execute("PRAGMA user_version").fetchone()[0] < STORE_VERSION:
            self._wdb.execute(f"PRAGMA user_version={STORE_VERSION}")
        self._writer = StoreWriter()
        # Result files made durable before their rows are queued (_write).
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="ris-store-files")
        # Readers' connection: the event loop's, and a retention sweep's thread (the lock).
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        # A changed byte >= 0x80 in any text column made a fetch raise (not UTF-8) before any
        # row could be looked at: every list failed, and the start with a queued one. Read
        # leniently; a row holding such text is a damaged record (_select leaves it out).
        self._db.text_factory = _lenient_text
        self._lock = threading.Lock()
        self._said_unreadable: set[str] = set()  # records that failed to read, said once

    def _migrate(self) -> None:
        """Add the columns an older store lacks (on the writer's connection, before any use)."""
        have = {row[1] for row in self._wdb.execute("PRAGMA table_info(tasks)")}
        for name, decl in _ADDED_COLUMNS:
            if name not in have:
                self._wdb.execute(f"ALTER TABLE tasks ADD COLUMN {name} {decl}")

    def close(self) -> None:
        """Write what is queued, then close."""
        self._syncer.shutdown(wait=True)  # its rows queued to the writer first
        self._writer.close()
        with self._lock:
            self._db.close()
        self._wdb.close()

    @property
    def held_writes(self) -> int:
        """Writes the full disk refused, waiting to be written (StoreWriter.held)."""
        return self._writer.held

    def flush(self) -> None:
        """Return once every write asked for so far has run: on disk, failed and said, or held
        for want of room (held_writes; written once there is some)."""
        self._syncer.submit(lambda: None).result()  # rows waiting for their files: queued
        self._writer.flush()

    def _write(
        self, sql: str, args: tuple[Any, ...], files: tuple[str, ...] = (), hold: bool = True
    ) -> Future[None]:
        """`files`: the result files the row names, made durable before it, so a power loss
        never leaves a row saying 'succeeded' beside a missing or empty file. On a thread of
        their own, the row queued once they are: the writer's queue (an accepted image's
        insert, which the loop waits for) never waits behind a file's fsync. `hold`: a write
        the disk has no room for is tried again until it is (StoreWriter)."""
        label = sql.split(" (", 1)[0].split(" WHERE", 1)[0] + _of_task(sql, args)

        def write() -> None:
            self._wdb.execute(sql, args)

        if not files:
            return self._writer.submit(write, label, hold)
        done: Future[None] = Future()

        def synced() -> None:
            try:
                sync_files(files)
            except OSError as e:  # a file system without fsync for folders (some FUSE, NFS)
                log.warning("result files not made durable before their record (%s): %s", files, e)
            self._writer.submit(write, label, hold).add_done_callback(lambda f: _pass_on(f, done))

        self._syncer.submit(synced)
        return done

    def add(
        self,
        task_id: str,
        lane: str,
        model: str,
        priority: int,
        request: dict[str, Any],
        submitted_at: float,
        owner: str | None = None,
        client: str | None = None,
        deadline: float | None = None,
        on_restart: str | None = None,
    ) -> Future[None]:
        return self._write(
            "INSERT INTO tasks (id, lane, model, state, priority, request, submitted_at, owner, client, "
            "deadline, on_restart) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
            (
                task_id,
                lane,
                model,
                priority,
                json.dumps(request),
                submitted_at,
                owner,
                client,
                deadline,
                on_restart,
            ),
            # Its caller waits for it and refuses the request when it fails (507): never held.
            hold=False,
        )

    def flushed(self) -> Future[None]:
        """Done once every write asked for before it has run: on disk, failed and said, or held
        for want of room (written once there is some, before any later held write)."""
        return self._writer.flushed()

    def not_resumed(self, task_id: str, why: str) -> Future[None]:
        """The task is not run again after a restart; `why`: CANCELLED or ABANDONED."""
        return self._write(
            "UPDATE tasks SET on_restart=? WHERE id=? AND state IN ('queued', 'running')", (why, task_id)
        )

    def mark_running(self, task_id: str, started_at: float) -> Future[None]:
        return self._write(
            "UPDATE tasks SET state='running', started_at=?, attempts=attempts+1 WHERE id=? "
            "AND state IN ('queued', 'running')",
            (started_at, task_id),
        )

    def requeue(self, task_id: str) -> Future[None]:
        return self._write(
            "UPDATE tasks SET state='queued', started_at=NULL WHERE id=? AND state IN ('queued', 'running')",
            (task_id,),
        )

    def set_aside(self, task_id: str) -> Future[None]:
        """A running task the server stopped on purpose: queued again, its attempt not counted
        (attempts count the runs a crash may have cut, which a shutdown is not)."""
        return self._write(
            "UPDATE tasks SET state='queued', started_at=NULL, attempts=MAX(attempts-1, 0) "
            "WHERE id=? AND state='running'",
            (task_id,),
        )

    def finish(
        self,
        task_id: str,
        state: str,
        finished_at: float,
        error_code: str | None = None,
        error_message: str | None = None,
        result: dict[str, Any] | None = None,
        files: tuple[str, ...] = (),
        progress: tuple[int, int | None] | None = None,
    ) -> Future[None]:
        done, total = progress if progress is not None else (None, None)
        return self._write(
            # The client (an address, often) was kept for a resumption's fairness only.
            "UPDATE tasks SET state=?, finished_at=?, error_code=?, error_message=?, result=?, client=NULL, "
            "progress_done=?, progress_total=? WHERE id=? AND state IN ('queued', 'running')",
            (
                state,
                finished_at,
                error_code,
                error_message,
                None if result is None else json.dumps(result),
                done,
                total,
                task_id,
            ),
            files,
        )

    def keep(self, st: StoredTask, files: tuple[str, ...] = ()) -> Future[None]:
        """Record a finished task in full (a lane that is not durable, at its end)."""
        return self._write(
            "INSERT OR REPLACE INTO tasks (id, lane, model, state, priority, request, submitted_at, "
            "started_at, finished_at, attempts, error_code, error_message, result, owner, client) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                st.id,
                st.lane,
                st.model,
                st.state,
                st.priority,
                json.dumps(st.request),
                st.submitted_at,
                st.started_at,
                st.finished_at,
                st.attempts,
                st.error_code,
                st.error_message,
                None if st.result is None else json.dumps(st.result),
                st.owner,
                st.client,
            ),
            files,
        )

    def finished_before(self, t: float) -> list[str]:
        """Ids of tasks that ended before wall time `t`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM tasks WHERE state NOT IN ('queued', 'running') AND finished_at < ?", (t,)
            ).fetchall()
        return [r[0] for r in rows if not _damaged(r[0])]  # one not UTF-8 cannot be named back

    def known(self, ids: list[str]) -> set[str]:
        """Those of `ids` the store has a record of."""
        found: set[str] = set()
        for i in range(0, len(ids), 500):  # SQLite's bound on host parameters
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                found.update(
                    r[0] for r in self._db.execute(f"SELECT id FROM tasks WHERE id IN ({marks})", chunk)
                )
        return found

    def delete(self, ids: list[str], removal: Removal | None = None) -> None:
        """Forget finished tasks (never a queued or running one); returns once it is done (a
        retention sweep, on a thread of its own, deletes their files next). `removal`: why
        and when the retention policy removed them, kept for a while (`removed`), so that a
        client asking for one hears it is gone (410), not that it never was (404)."""
        written = []
        for i in range(0, len(ids), 500):
            chunk = tuple(ids[i : i + 500])
            marks = ",".join("?" * len(chunk))
            delete = f"DELETE FROM tasks WHERE id IN ({marks}) AND state NOT IN ('queued', 'running')"
            if removal is None:
                # Its sweep forgets the tasks once this returns: held, they would stay
                # listed with their files gone; refused, the next sweep finds them again.
                written.append(self._write(delete, chunk, hold=False))
                continue
            note = (
                f"INSERT OR REPLACE INTO removed (id, owner, lane, why, at) SELECT id, owner, lane, ?, ? "
                f"FROM tasks WHERE id IN ({marks}) AND state NOT IN ('queued', 'running')"
            )

            def both(note: str = note, delete: str = delete, chunk: tuple[str, ...] = chunk) -> None:
                self._wdb.execute("BEGIN")  # the note and the forgetting, or neither
                try:
                    self._wdb.execute(note, (removal.why, removal.at, *chunk))
                    self._wdb.execute(delete, chunk)
                    self._wdb.execute("COMMIT")
                except BaseException:
                    self._wdb.execute("ROLLBACK")
                    raise

            written.append(self._writer.submit(both, f"DELETE FROM tasks ({len(chunk)} removed)", hold=False))
        for w in written:
            w.result()

    def removal(self, task_id: str) -> tuple[str | None, Removal] | None:
        """The owner of a task the retention policy removed, and why and when; None where none
        was (or its note has itself been forgotten: forget_removals)."""
        with self._lock:
            row = self._db.execute("SELECT owner, why, at FROM removed WHERE id=?", (task_id,)).fetchone()
        return None if row is None else (row[0], Removal(str(row[1]), float(row[2])))

    def forget_removals(self, before: float) -> Future[None]:
        """Notes of removals made before wall time `before` go: the table stays bounded."""
        return self._write("DELETE FROM removed WHERE at < ?", (before,), hold=False)

    def get(self, task_id: str) -> StoredTask | None:
        rows = self._select("WHERE id=?", (task_id,))
        return rows[0] if rows else None

    def run_times(self, lane: str, limit: int = 20) -> list[tuple[float, str, dict[str, Any]]]:
        """How long the lane's last `limit` succeeded tasks ran (start to end of their last
        attempt, in seconds), with their model and request, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT finished_at - started_at, model, CAST(request AS BLOB) FROM tasks WHERE lane=? "
                "AND state='succeeded' AND started_at IS NOT NULL AND finished_at >= started_at "
                "ORDER BY finished_at DESC LIMIT ?",
                (lane, limit),
            ).fetchall()
        return [(float(r[0]), str(r[1]), _request(r[2])) for r in reversed(rows) if not _damaged(r[1])]

    def note_start(self, lane: str, seconds: float) -> Future[None]:
        """How long the lane's worker last took to start: after a restart the resumed tasks'
        ETAs count down what is left of the first start (they stood still for the whole start,
        a minute for an image worker, none having been seen by this server)."""
        return self._write(
            "INSERT INTO lane_starts (lane, seconds) VALUES (?, ?) "
            "ON CONFLICT(lane) DO UPDATE SET seconds = excluded.seconds",
            (lane, seconds),
            hold=False,
        )

    def start_times(self) -> dict[str, float]:
        """Each lane's last worker start in seconds, as note_start kept it."""
        with self._lock:
            rows = self._db.execute("SELECT lane, seconds FROM lane_starts").fetchall()
        return {str(lane): float(seconds) for lane, seconds in rows}

    def unfinished(self) -> list[StoredTask]:
        """Queued and running tasks, oldest first (the order they are resumed in)."""
        return self._select("WHERE state IN ('queued', 'running') ORDER BY submitted_at", ())

    def recent(
        self,
        lane: str | None = None,
        state: str | None = None,
        limit: int = 100,
        *,
        owner: str | None = None,
        all_owners: bool = True,
    ) -> list[StoredTask]:
        """Newest first; unless `all_owners`, only `owner`'s tasks (filtered before the limit,
        so a user's page is full of its own)."""
        where: list[str] = []
        args: list[Any] = []
        if not all_owners:
            where.append("owner IS ?")  # IS: NULL (the anonymous owner) matches NULL
            args.append(owner)
        if lane is not None:
            where.append("lane=?")
            args.append(lane)
        if state is not None:
            where.append("state=?")
            args.append(state)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        return self._select(f"{clause} ORDER BY submitted_at DESC LIMIT ?", (*args, limit))

    def _select(self, clause: str, args: tuple[Any, ...]) -> list[StoredTask]:
        with self._lock:
            rows = self._db.execute(
                # The JSON columns as bytes, decoded per row below: a changed byte >= 0x80 made
                # the whole fetch raise (not UTF-8) before any row could be left out.
                "SELECT id, lane, model, state, priority, CAST(request AS BLOB), submitted_at, "
                "started_at, finished_at, attempts, error_code, error_message, CAST(result AS BLOB), "
                "owner, client, deadline, on_restart, progress_done, progress_total "
                f"FROM tasks {clause}",
                args,
            ).fetchall()
        found = []
        for r in rows:
            try:
                if any(_damaged(v) for v in r):
                    raise ValueError("a text column is not UTF-8")
                request = json.loads(r[5].decode("utf-8"))
                result = None if r[12] is None else json.loads(r[12].decode("utf-8"))
            except (ValueError, TypeError, AttributeError) as e:  # JSON, UTF-8
                # One damaged record (a byte changed on disk, which SQLite's own check does not
                # read) made every list answer 500, and one queued or running failed the start:
                # left out, and said once.
                self._unreadable(r[0], r[3], e)
                continue
            found.append(StoredTask(
                r[0], r[1], r[2], r[3], r[4], request, r[6], r[7], r[8], r[9], r[10], r[11], result,
                r[13], r[14], r[15], r[16], r[17], r[18],
            ))  # fmt: skip
        return found

    def _unreadable(self, task_id: str, state: str, error: Exception) -> None:
        if task_id in self._said_unreadable:
            return
        self._said_unreadable.add(task_id)
        log.error(
            "task store %s: the record of task %s (%s) cannot be read (%s); it is left out of every "
            "list and lookup%s",
            self.path,
            task_id.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
            state.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
            error,
            ", and not run again" if state in ("queued", "running") else "",
        )
