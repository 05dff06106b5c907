"""One server per data folder (ris.runtime.data_lock): the OS lock, across real processes."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ris import messages as m
from ris.lanes import Lane
from ris.lanes.image import LANE as IMAGE
from ris.lanes.image import ImageRequest
from ris.runtime import data_lock
from ris.runtime.disk_room import DISK_ROOM_BYTES
from ris.runtime.engine import DATA_FOLDER_CHECK_S

from .fakes import IMAGE_ON, run, started_engine

HOLD = """
import sys, time
from pathlib import Path
from ris.runtime import data_lock
data_lock.acquire(Path(sys.argv[1]), 8123)
print("held", flush=True)
time.sleep(600)
"""


@contextmanager
def holding_process(folder: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds `folder`'s lock until the block ends, killed (SIGKILL)."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "held"
            yield proc
        finally:
            proc.kill()


def test_a_second_process_is_refused_with_the_holders_pid_and_port(tmp_path: Path) -> None:
    with holding_process(tmp_path) as proc:
        with pytest.raises(data_lock.DataFolderInUse, match=rf"pid {proc.pid}, port 8123"):
            data_lock.acquire(tmp_path, 9000)
        # The refusal changed nothing the holder wrote.
        assert data_lock.holder(tmp_path) == {"pid": proc.pid, "port": 8123}


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    with holding_process(tmp_path):
        pass  # SIGKILLed on leaving: no clean-up of its own ran
    data_lock.acquire(tmp_path, 9000)
    try:
        assert data_lock.holder(tmp_path)["port"] == 9000
    finally:
        data_lock.release(tmp_path)


def test_one_process_may_hold_its_folder_twice(tmp_path: Path) -> None:
    """`ris serve` takes the lock, then its engine does: counted, released by the last."""
    data_lock.acquire(tmp_path, 1)
    data_lock.acquire(tmp_path / ".", 1)  # the same folder, spelled otherwise
    data_lock.release(tmp_path)
    once = HOLD.replace("time.sleep(600)", "")
    proc = subprocess.run([sys.executable, "-c", once, str(tmp_path)], capture_output=True, text=True)
    assert "DataFolderInUse" in proc.stderr  # still held by us after one release
    data_lock.release(tmp_path)
    proc = subprocess.run([sys.executable, "-c", once, str(tmp_path)], capture_output=True, text=True)
    assert proc.stdout.strip() == "held"  # free now: another process takes it


def test_a_failed_engine_hold_leaves_no_engine_behind(tmp_path: Path) -> None:
    """A data folder that cannot be made (a file in its path) refused one engine's start;
    every later engine of the process was then refused as 'another engine'."""
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("x")
    with pytest.raises(OSError):
        data_lock.acquire(not_a_dir / "data", 8123, engine=True)
    not_a_dir.unlink()  # the operator mends the path, and starts again
    folder = not_a_dir / "data"
    data_lock.acquire(folder, 8123, engine=True)
    try:
        with pytest.raises(data_lock.DataFolderInUse, match="another engine of this process"):
            data_lock.acquire(folder, 8123, engine=True)
    finally:
        data_lock.release(folder, engine=True)
    data_lock.acquire(folder, 8123, engine=True)  # given back: a new engine may hold it
    data_lock.release(folder, engine=True)


@run
async def test_a_data_folder_deleted_under_a_running_engine_stops_it_before_any_sweep(tmp_path: Path) -> None:
    """rm -rf of the data folder while a server ran: nothing was said, /ready stayed true, every
    record it wrote went with the deleted store, and a second server took the folder and swept
    the first one's new results away as orphans."""
    async with started_engine(tmp_path) as (eng, workers, clock):
        stops: list[bool] = []
        eng.on_folder_lost = lambda: stops.append(True)
        folder = Path(eng.config.data_dir)
        assert data_lock.still_held(folder)

        async def look() -> None:  # a supervision pass after the check's interval, and its thread
            clock.advance(DATA_FOLDER_CHECK_S + 1)
            eng.check()
            for _ in range(200):
                await asyncio.sleep(0.01)
                if eng.folder_lost:
                    return

        await look()
        assert stops == [] and not eng.folder_lost
        shutil.rmtree(folder)
        folder.mkdir()  # made again by a write, as the server's result folders were
        assert not data_lock.still_held(folder)
        await look()
        assert stops == [True] and eng.folder_lost
        await look()
        assert stops == [True]  # said once


@run
async def test_queued_images_wait_while_the_data_disk_has_no_room_and_start_when_it_has(
    tmp_path: Path,
) -> None:
    """A full data disk: every queued image ran all its steps, then failed storage_full, one
    after another, while the speech and chat lanes (which need no room) served on."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, clock):
        image = workers[Lane.IMAGE]
        image.ready()
        free: list[int | None] = [DISK_ROOM_BYTES - 1]
        eng.disk_room.read = lambda _folder: free[0]

        async def look() -> None:  # a supervision pass after the check's interval, and its thread
            clock.advance(DATA_FOLDER_CHECK_S + 1)
            image.deliver(m.Heartbeat(0))  # the idle worker is alive meanwhile
            eng.check()
            for _ in range(20):
                await asyncio.sleep(0.01)

        await look()
        assert eng.disk_room.short
        picture = eng.submit(IMAGE, "i", ImageRequest(prompt="a"))  # accepted: it waits
        eng.check()
        view = eng.lookup(picture.task_id)
        assert view is not None and (view.state, view.waiting_for, view.eta_s) == (
            "queued",
            "disk_space",
            None,
        )
        assert image.runs == []
        lanes = {lane.lane: lane for lane in eng.snapshot().lanes}
        assert lanes[Lane.IMAGE].stats.held == "disk_space"  # in /api/stats
        free[0] = None  # cannot tell: not a reason to hold anything
        await look()
        assert not eng.disk_room.short and [t.task_id for t in image.runs] == [picture.task_id]


@run
async def test_a_disk_that_does_not_answer_holds_one_thread_not_one_per_pass(tmp_path: Path) -> None:
    import threading

    from ris.runtime.disk_room import DiskRoom

    stuck, calls = threading.Event(), []

    def read(_folder: Path) -> int | None:
        calls.append(1)
        stuck.wait(5)
        return None

    room = DiskRoom(tmp_path, ["image"], lambda _lane, _why: None, lambda: None, read)
    for _ in range(5):  # supervision passes while the mount hangs
        room.check()
        await asyncio.sleep(0.01)
    stuck.set()
    await room.wait()
    assert len(calls) == 1


def test_a_small_data_volume_holds_images_under_an_eighth_of_it_not_64_mib() -> None:
    """A 20 MiB volume with 15 MiB free held every image for ever (an operator's run)."""
    from ris.runtime.disk_room import DISK_ROOM_BYTES, room_for

    assert room_for(20 * 2**20) == 2.5 * 2**20
    assert room_for(100 * 2**30) == DISK_ROOM_BYTES
