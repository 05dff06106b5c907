"""Start the real `ris serve` as a subprocess on a free port, with a config written for the test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_config(tmp: Path, **lane_overrides: dict[str, Any]) -> dict[str, Any]:
    """The repository's config.json with the data folder in `tmp` and per-lane overrides."""
    cfg: dict[str, Any] = json.loads((ROOT / "config.json").read_text())
    cfg["data_dir"] = str(tmp / "data")
    for lane, override in lane_overrides.items():
        cfg["lanes"][lane].update(override)
    return cfg


class Server:
    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        config = {**config, "server": {**config.get("server", {}), "port": self.port}}
        self.config = config
        self.config_path = tmp / "config.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = tmp / "server.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 240.0) -> Server:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ris",
                    "serve",
                    "--config",
                    str(self.config_path),
                    "--log-level",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.proc.kill()  # never leave a half-started server behind a failed fixture
            self.proc.wait()
            raise
        return self

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(f"{self.url}/ready", timeout=2)
                last = r.json()
                if r.status_code == 200:
                    return dict(last)
            except httpx.HTTPError as e:
                last = e
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout}s: {last}\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/api/stats", timeout=10).json()["lanes"])

    def worker_pid(self, lane: str) -> int:
        pid = self.stats()[lane]["worker"]["pid"]
        assert pid is not None, f"{lane} worker has no pid"
        return int(pid)

    def stop(self) -> None:
        """Stop the server and check that no worker process outlives it."""
        if self.proc is None:
            return
        children = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server did not stop on SIGTERM\n{self.log()}") from None
        _, alive = psutil.wait_procs(children, timeout=10)
        for p in alive:
            p.kill()
        assert not alive, f"worker processes outlived the server: {[p.pid for p in alive]}"
        self.proc = None


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    os.kill(pid, sig)
