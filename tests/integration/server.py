"""Helpers to start the real service for a test, with the repository's config as the base."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ris.launch import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "tests" / "plugins"  # the test-only lanes and backends, loaded by config.json


def make_config(tmp: Path, **lane_overrides: dict[str, Any]) -> dict[str, Any]:
    """The repository's config.json with the data folder in `tmp` and per-lane overrides."""
    cfg: dict[str, Any] = json.loads((ROOT / "config.json").read_text())
    cfg["data_dir"] = str(tmp / "data")
    for lane, override in lane_overrides.items():
        cfg["lanes"][lane].update(override)
    return cfg


class Server(ServiceProcess):
    def __init__(self, tmp: Path, config: dict[str, Any], api_key: str | None = None) -> None:
        config = {**config, "server": {**config.get("server", {}), "port": 0}}
        super().__init__(tmp, config, api_key=api_key)


def with_plugins(
    tmp: Path, plugins: list[str], lanes: dict[str, Any], settings: dict[str, Any] | None = None
) -> Server:
    """The service started with the test plugins named (modules in tests/plugins) and only the
    lanes given: a lane the config does not mention stays off. `settings`: its "server" section."""
    config = {"data_dir": str(tmp / "data"), "plugins": plugins, "lanes": lanes, "server": settings or {}}
    path = os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])
    key = (settings or {}).get("api_keys", [None])[0]
    server = Server(tmp, config, api_key=key)
    server.start(timeout=120, env={"PYTHONPATH": path})
    return server


def ris_status(url: str) -> str:
    """What `ris status` prints for the service at `url` (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-m", "ris", "status", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    os.kill(pid, sig)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process started in a session of its own and everything it started (a `ray
    start --block` and its raylet, GCS and workers), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def refused_serve(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`ris serve` with a config it must refuse before it starts anything (bounded: one that
    starts after all would run until the timeout): its exit status and what it said."""
    return subprocess.run(
        [sys.executable, "-m", "ris", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
