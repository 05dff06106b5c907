"""One server per data folder: an exclusive lock on <data_dir>/server.lock while a server lives.

Two servers on one folder would both resume the durable tasks in its store and both write and
sweep its result files. The lock is the operating system's (flock on POSIX, a byte-range lock
on Windows), so it ends with the process however the process ends: a SIGKILL leaves no stale
lock behind. The file holds the holder's pid and port, for the refusal a second server prints.

Within one process the lock is counted, not taken twice: `ris serve` takes it before it starts
anything (a clean message, nothing touched), and the engine, which owns the folder, takes it
again at start for embedders that skip the CLI. One engine at a time per folder all the same:
a second engine in the same process (an embedder starting a new one before the old one has
stopped) is refused as a second server is.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import IO

LOCK_FILE = "server.lock"
_WINDOWS_LOCK_BYTE = 1 << 20

_held: dict[Path, tuple[IO[str], int]] = {}  # folder -> (open lock file, holders in this process)
_engines: set[Path] = set()  # folders an engine of this process holds
_guard = threading.Lock()


class DataFolderInUse(Exception):
    """Another server holds the data folder; the message names it (pid, port) and what to do."""


def _try_lock(f: IO[str]) -> bool:
    if sys.platform == "win32":
        import msvcrt

        # A byte far past the pid and port: Windows enforces the lock against reads, and the
        # second server must still read who holds the folder.
        f.seek(_WINDOWS_LOCK_BYTE)
        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(f: IO[str]) -> None:
    if sys.platform == "win32":
        import msvcrt

        f.seek(_WINDOWS_LOCK_BYTE)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def holder(folder: Path) -> dict[str, object]:
    """What the lock file says about the server holding `folder` ({} when unreadable)."""
    try:
        data = json.loads((folder / LOCK_FILE).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def acquire(folder: Path, port: int, *, engine: bool = False) -> None:
    """Hold `folder` for this process, or raise DataFolderInUse at once (never waits).
    `engine`: the hold of the engine that serves from it, one at a time."""
    key = folder.resolve()
    with _guard:
        if engine and key in _engines:
            raise DataFolderInUse(
                f"data_dir {key} is in use by another engine of this process; stop it first, "
                "or give this one another data_dir"
            )
        if key in _held:
            f, count = _held[key]
            _held[key] = (f, count + 1)
            if engine:
                _engines.add(key)
            return
        key.mkdir(parents=True, exist_ok=True)
        # "a": opening must not truncate what the holder wrote before we know we hold it.
        f = (key / LOCK_FILE).open("a+", encoding="utf-8")
        if not _try_lock(f):
            f.close()
            who = holder(key)
            pid, at = who.get("pid", "?"), who.get("port", "?")
            raise DataFolderInUse(
                f"data_dir {key} is in use by another RIS server (pid {pid}, port {at}); "
                "stop that server, or give this one another data_dir (--data-dir)"
            )
        _write(f, port)
        _held[key] = (f, 1)
        if engine:  # held: a failed hold (a folder that cannot be made) leaves no engine behind
            _engines.add(key)


def held_elsewhere(folder: Path) -> str | None:
    """What acquire() would refuse `folder` with, asked without taking it (`ris config
    --check`): the holder, while another server holds it; None otherwise (no lock file made)."""
    lock = folder / LOCK_FILE
    if folder.resolve() in _held or not lock.is_file():
        return None
    try:
        with lock.open("a+", encoding="utf-8") as f:
            if _try_lock(f):
                _unlock(f)  # at once, not at the close (Windows lets go of it late)
                return None
    except OSError as e:
        return f"its lock file {str(lock)!r} cannot be opened: {e.strerror or e}"
    who = holder(folder)
    return (
        f"data_dir {folder.resolve()} is in use by another RIS server (pid {who.get('pid', '?')}, "
        f"port {who.get('port', '?')})"
    )


def still_held(folder: Path) -> bool:
    """Whether the lock this process holds on `folder` is still the folder's: the folder
    deleted (or moved, or replaced) while the server runs leaves the lock on a file no path
    names, and a second server could take the folder, and delete this one's new files as
    orphans of its own store. True where this process holds no lock on it (nothing to lose)."""
    key = folder.resolve()
    with _guard:
        held = _held.get(key)
        if held is None:
            return True
        try:
            mine = os.fstat(held[0].fileno())
        except OSError:
            return True  # cannot tell: never a reason to stop a server
    try:
        # Opened and asked as the held file is (fstat both): on some overlay filesystems a
        # path's stat and a descriptor's disagree on the inode.
        fd = os.open(key / LOCK_FILE, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # a network mount's hiccup, no rights: not a folder gone
    try:
        there = os.fstat(fd)
    finally:
        os.close(fd)
    return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino) and mine.st_nlink > 0


def record_port(folder: Path, port: int) -> None:
    """The port this process listens on, once bound, for the refusal a second server prints
    (with --port 0, acquire() was told 0: the OS chooses the port when it binds)."""
    key = folder.resolve()
    with _guard:
        if key in _held:
            _write(_held[key][0], port)


def _write(f: IO[str], port: int) -> None:
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "port": port}))
    f.flush()


def release(folder: Path, *, engine: bool = False) -> None:
    """Give back one hold; the last one unlocks (closing the file drops the OS lock)."""
    key = folder.resolve()
    with _guard:
        if engine:
            _engines.discard(key)
        if key not in _held:
            return
        f, count = _held.pop(key)
        if count > 1:
            _held[key] = (f, count - 1)
            return
        f.close()
