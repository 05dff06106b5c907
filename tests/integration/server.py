"""Helpers to start the real service for a test, with the repository's config as the base."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from ris.launch import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]


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


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    os.kill(pid, sig)
