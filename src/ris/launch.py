"""Run the real service as a child process: for integration tests, benchmarks and scripts."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol, Self

import httpx
import psutil


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports. All sockets stay bound until every port is chosen: bound
    and closed one at a time, the kernel may hand one port out twice (a clean-clone run gave
    Ray's object manager and runtime-env agent the same port, and `ray start` refused it)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def client_host(listen: str) -> str:
    """Where a client on this machine reaches a server listening on `listen` (a wildcard
    address: through loopback)."""
    try:
        ip = ipaddress.ip_address(listen.strip("[]"))
    except ValueError:
        return listen  # a host name
    if ip.is_unspecified:
        return "127.0.0.1" if ip.version == 4 else "[::1]"
    return f"[{ip.compressed}]" if ip.version == 6 else ip.compressed


class RunningProcess(Protocol):
    """What ServiceProcess uses of its process: a Popen, or a test's handle on a process it
    did not start as its child."""

    pid: int

    @property
    def returncode(self) -> int | Any: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class ServiceProcess:
    """`ris serve` with a given config, on a free port unless the config names one; `url`
    reaches it at the address it listens on."""

    def __init__(
        self, folder: Path, config: dict[str, Any], log_level: str = "warning", api_key: str | None = None
    ) -> None:
        server = dict(config.get("server", {}))
        server.setdefault("port", 0)
        if not server["port"]:
            server["port"] = free_port()
        self.port = int(server["port"])
        self.config = {**config, "server": server}
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "config.json"
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.log_path = folder / "server.log"
        self.url = f"http://{client_host(str(server.get('host', '127.0.0.1')))}:{self.port}"
        self.log_level = log_level
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.proc: RunningProcess | None = None

    def start(self, timeout: float = 300.0, env: dict[str, str] | None = None) -> Self:
        """Start it and wait until every lane is ready; `env` adds environment variables."""
        self.launch(env)
        assert self.proc is not None
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.proc.kill()  # never leave a half-started server behind
            self.proc.wait()
            raise
        return self

    def command(self) -> list[str]:
        """The command line that starts it."""
        return [
            sys.executable,
            "-m",
            "ris",
            "serve",
            "--config",
            str(self.config_path),
            "--log-level",
            self.log_level,
        ]

    def launch(self, env: dict[str, str] | None = None) -> None:
        """Start the process and return at once (the caller waits for what it expects)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else {**os.environ, **env},
            )

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(f"{self.url}/ready", timeout=2, headers=self.headers)
                last = r.json()
                if r.status_code == 200:
                    return dict(last)
                if r.status_code != 503:  # refused (a key, a Host): waiting will not change it
                    raise RuntimeError(f"{self.url}/ready answered {r.status_code}: {r.text}")
                failed = {
                    lane: s["worker"]["error"]
                    for lane, s in self.stats().items()
                    if s["worker"]["state"] == "failed"
                }
                if failed:  # a model that cannot load will not load on the next try either
                    raise RuntimeError(f"a lane's worker cannot start: {failed}\n{self.log()}")
            except httpx.HTTPError as e:
                last = e
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout}s: {last}\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/api/stats", timeout=10, headers=self.headers).json()["lanes"])

    def worker_pid(self, lane: str) -> int:
        pid = self.stats()[lane]["worker"]["pid"]
        assert pid is not None, f"{lane} worker has no pid"
        return int(pid)

    def stop(self) -> None:
        """Stop the server (SIGTERM) and check that no worker process outlives it."""
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
        finally:
            self.proc = None
        _, alive = psutil.wait_procs(children, timeout=10)
        for p in alive:
            p.kill()
        assert not alive, f"worker processes outlived the server: {[p.pid for p in alive]}"
