"""One server per data folder: a second `ris serve` on a folder in use refuses at once, naming
the first, and touches none of its tasks (ris.runtime.data_lock)."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ris import Client
from ris.launch import free_port
from ris.runtime.store import STORE_VERSION

from .server import PLUGINS, refused_serve, with_plugins
from .waiting import wait_state

pytestmark = pytest.mark.slow

HELD = {"enabled": True, "cores": [0], "default_model": "held", "models": {"held": {"backend": "hold"}}}


def test_a_second_server_on_the_folder_refuses_and_touches_nothing(tmp_path: Path) -> None:
    first = with_plugins(tmp_path / "first", ["ris_hold"], {"image": HELD})
    try:
        with Client(first.url, timeout=60, max_retries=0) as c:
            held = c.generate_image("hold", width=64, height=64)["task_id"]
            queued = c.generate_image("quick", width=64, height=64)["task_id"]
            wait_state(c, held, ("running",))
            # The same config (the same data_dir) on another port.
            second = tmp_path / "second.json"
            second.write_text(
                json.dumps({**first.config, "server": {**first.config["server"], "port": free_port()}})
            )
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]),
            }
            done = refused_serve(second, env)
            assert done.returncode == 1
            assert first.proc is not None
            assert f"in use by another RIS server (pid {first.proc.pid}, port {first.port})" in done.stderr
            assert "resumed" not in done.stderr and "Traceback" not in done.stderr
            # The first server's tasks are where they were, and move on as before.
            assert c.progress(held)["status"] == "running"
            assert c.progress(queued)["queue_position"] == 0
            c.cancel(held)
            assert c.wait(queued)["status"] == "succeeded"
    finally:
        first.stop()


def test_a_store_sqlite_cannot_read_is_one_line_naming_it_and_what_to_do(tmp_path: Path) -> None:
    """A corrupt tasks.db (a disk that filled, a copy cut short) stopped `ris serve` with an
    80-line traceback that named no file and said nothing to do; a folder in its place, the
    same."""
    config = tmp_path / "config.json"
    data = tmp_path / "data"
    config.write_text(
        json.dumps(
            {
                "server": {"port": free_port()},
                "data_dir": str(data),
                "lanes": {
                    "tts": {"cores": [0], "default_model": "e", "models": {"e": {"backend": "espeak"}}}
                },
            }
        )
    )
    data.mkdir()
    store = data / "tasks.db"
    for broken in (b"not a database at all " * 300, None, "newer"):
        if broken is None:
            store.unlink()
            store.mkdir()
        elif isinstance(broken, str):  # a data folder a newer RIS wrote, served by this one
            store.rmdir()
            db = sqlite3.connect(str(store))
            db.execute(f"PRAGMA user_version={STORE_VERSION + 1}")
            db.execute("CREATE TABLE tasks (id TEXT)")
            db.commit()
            db.close()
        else:
            store.write_bytes(broken)
        done = refused_serve(config)
        assert done.returncode == 1, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line.startswith("ris serve: the task store") and str(store) in line, line
        if isinstance(broken, bytes):
            assert "move it aside to start with an empty one" in line
        if broken == "newer":
            assert "was written by a newer RIS" in line and "another data_dir" in line


@contextmanager
def small_disk(folder: Path, mib: int) -> Iterator[Path]:
    """A file system of `mib` MiB at `folder` (a tmpfs: root only), for a disk that fills."""
    folder.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small file system needs root to mount")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"no tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(path: Path, leave: int) -> None:
    """`path` grown until its file system has about `leave` bytes free."""
    with path.open("ab") as f:
        while (free := shutil.disk_usage(path.parent).free) > leave:
            try:
                f.write(b"\0" * min(free - leave, 1 << 20))
                f.flush()
            except OSError:
                return


def test_a_full_data_disk_holds_images_queued_and_still_speaks_what_is_only_streamed(tmp_path: Path) -> None:
    """A full data disk: every streamed sentence failed 507 (its WAV in the data folder was only
    a buffer) and queued images ran all their steps, then failed storage_full one after another."""
    lanes = {
        "image": HELD,
        "tts": {"cores": [0], "default_model": "e", "models": {"e": {"backend": "espeak"}}},
    }
    with small_disk(tmp_path / "data", 80) as data:
        server = with_plugins(tmp_path, ["ris_hold"], lanes)
        try:
            filler = data / "filler"
            fill(filler, 8 << 20)  # under the 64 MiB a durable lane wants: images wait
            with Client(server.url, timeout=60, max_retries=0) as c:
                deadline = time.monotonic() + 30
                while c.stats()["lanes"]["image"]["held"] != "disk_space":
                    assert time.monotonic() < deadline, "the full disk was not noticed"
                    time.sleep(0.5)
                picture = c.generate_image("a grey one", width=64, height=64)["task_id"]
                view = c.progress(picture)
                assert (view["status"], view["waiting_for"], view["eta_s"]) == ("queued", "disk_space", None)
                fill(filler, 0)  # nothing left at all
                said = httpx.post(
                    f"{server.url}/v1/audio/speech",
                    json={
                        "model": "tts-1",
                        "input": "Still here.",
                        "voice": "alloy",
                        "response_format": "wav",
                    },
                    timeout=60,
                )
                assert said.status_code == 200, said.text
                with wave.open(io.BytesIO(said.content)) as w:
                    assert w.getnframes() > 1000
                kept = httpx.post(f"{server.url}/api/tts/synthesize", json={"text": "Keep me."}, timeout=60)
                assert (kept.status_code, kept.json()["error"]["code"]) == (507, "storage_full"), kept.text
                assert c.progress(picture)["status"] == "queued"  # still waiting, not failed
                filler.unlink()  # room again: it runs
                assert c.wait(picture, timeout=60)["status"] == "succeeded"
                assert c.stats()["lanes"]["image"]["held"] is None
        finally:
            server.stop()
        assert "wait, queued, until it has room" in server.log_path.read_text()
