"""Room for durable results on the data folder's disk. Below DISK_ROOM_BYTES free (an eighth
of a volume smaller than 512 MiB), a durable lane's queue is held (Scheduler.hold,
"disk_space"): an image whose picture could not be written ran all its steps first, then
failed storage_full, one after another down the queue.
The lanes that need no room (chat, streamed speech) go on. Read on a thread: a hung network
mount must not hold the event loop."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger("ris.engine")

# Room for a few of the largest pictures and the store's journal.
DISK_ROOM_BYTES = 64 * 2**20
# On a small volume, this share of it instead: a 20 MiB data volume with 15 MiB free held
# every image for ever, under a floor it could never reach (an operator's run).
SMALL_VOLUME_SHARE = 8


def room_for(total: int) -> int:
    """The free bytes below which durable lanes are held, on a volume of `total` bytes."""
    return min(DISK_ROOM_BYTES, total // SMALL_VOLUME_SHARE)


def _room(folder: Path) -> int | None:
    try:
        return room_for(shutil.disk_usage(folder).total)
    except OSError:
        return None


def disk_free(folder: Path) -> int | None:
    """Free bytes for this user on the file system holding `folder` (None: cannot tell)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


class DiskRoom:
    """Holds `lanes` (the durable ones) while `folder`'s disk is short of room, and lets them go
    (`on_room`: the engine's dispatch) once it has room again. `read`: the free-bytes reader (a
    test's own)."""

    def __init__(
        self,
        folder: Path,
        lanes: Sequence[str],
        hold: Callable[[str, str | None], None],
        on_room: Callable[[], None],
        read: Callable[[Path], int | None] = disk_free,
    ) -> None:
        self.folder, self.lanes, self.read = folder, tuple(lanes), read
        self._hold, self._on_room = hold, on_room
        self.short = False
        self.closed = False  # the engine stops: a late answer changes nothing
        self._pending: asyncio.Future[int | None] | None = None
        self.room: int | None = None  # room_for(the volume's size), once read

    def check(self) -> None:
        """Read the free space on a thread, unless a read is still under way (a hung mount:
        one thread, not one more each pass)."""
        if not self.lanes or (self._pending is not None and not self._pending.done()):
            return
        self._pending = asyncio.ensure_future(asyncio.to_thread(self._read))
        self._pending.add_done_callback(self._checked)

    def _read(self) -> int | None:
        if self.room is None:  # the volume's size, once (the folder may not exist before)
            self.room = _room(self.folder)
        return self.read(self.folder)

    async def wait(self) -> None:
        if self._pending is not None:
            await asyncio.wait([self._pending])

    def _checked(self, done: asyncio.Future[int | None]) -> None:
        if done.cancelled() or done.exception() is not None or self.closed:
            return
        free = done.result()
        room = DISK_ROOM_BYTES if self.room is None else self.room
        short = free is not None and free < room
        if short == self.short:
            return
        self.short = short
        for lane in self.lanes:
            self._hold(lane, "disk_space" if short else None)
        names = " and ".join(self.lanes)
        if short:
            log.error(
                "the data folder's disk has %.1f MiB free (under %.1f): %s tasks wait, queued, "
                "until it has room for their results (free some space in %s)",
                (free or 0) / 2**20,
                room / 2**20,
                names,
                self.folder,
            )
        else:
            log.warning("the data folder's disk has room again: %s tasks start", names)
            self._on_room()
