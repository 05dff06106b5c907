"""One server per data folder: a second `ris serve` on a folder in use refuses at once, naming
the first, and touches none of its tasks (ris.runtime.data_lock)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ris import Client
from ris.launch import free_port

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
    for broken in (b"not a database at all " * 300, None):
        store = data / "tasks.db"
        if broken is None:
            store.unlink()
            store.mkdir()
        else:
            store.write_bytes(broken)
        done = refused_serve(config)
        assert done.returncode == 1, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line.startswith("ris serve: the task store") and str(store) in line, line
        if broken is not None:
            assert "move it aside to start with an empty one" in line
