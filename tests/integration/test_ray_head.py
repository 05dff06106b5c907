"""Cluster mode: losing the Ray head does not stop the server, and it joins the head again.

A real head, started as an operator starts one (`ray start --head`, Ray's own defaults) with
token authentication on and its token in the environment (RAY_AUTH_TOKEN, as docs/CLUSTER.md
says: Ray 2.60's `ray start --head` turns authentication on only where a token already exists,
so a fresh machine's head would run without one), in a process group of its own so the test can
take it away whole (SIGKILL: the GCS, the raylet and the actors on it) and start it again on the
same port. Ray would end the server's driver ~60 s after the head went (its GCS reconnect
timeout); the test watches the server for longer than that.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from ris import Client
from ris.launch import free_ports

from .server import Server, kill_group, make_config
from .waiting import wait_for

pytest.importorskip("ray")

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


class Head:
    """`ray start --head --block` on fixed ports (a second cluster may run on this machine:
    nothing may fall back to Ray's default ports)."""

    def __init__(self, tmp: Path) -> None:
        names = (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "node-manager-port",
            "object-manager-port",
        )
        self.port, *ports = free_ports(1 + len(names))
        self.ports = [f"--{name}={port}" for name, port in zip(names, ports, strict=True)]
        self.log = tmp / "head.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # The cluster's token, for the head and every driver that joins it.
        self.auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            RAY,
            "start",
            "--head",
            f"--port={self.port}",
            *self.ports,
            "--num-cpus=3",
            '--resources={"ris_lane_llm": 1, "ris_lane_tts": 1}',
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--block",
        ]
        env = {**os.environ, **self.auth_env}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        wait_for(self._answers, 90)

    def _answers(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def kill(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None


@pytest.fixture
def head(tmp_path: Path) -> Iterator[Head]:
    h = Head(tmp_path)
    h.start()
    try:
        yield h
    finally:
        h.kill()


# Starts the rest of its command line in a session of its own and exits: that process's
# parent is then pid 1, as a systemd service's is (and a daemon's, and a container's child's).
_ORPHANING = """
import os, sys
pid = os.fork()
if pid == 0:
    os.setsid()
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
with open(sys.argv[1], "w") as f:
    f.write(str(pid))
"""


class Adopted:
    """ServiceProcess's handle on a process it did not start as its child (RunningProcess)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._process = psutil.Process(pid)
        self.returncode: int | None = None  # not ours to read: pid 1 reaps it

    def poll(self) -> int | None:
        try:
            if self._process.status() != psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            pass
        self.returncode = -1
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        try:
            self._process.wait(timeout)
        except psutil.TimeoutExpired:
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0) from None
        except psutil.NoSuchProcess:
            pass
        self.returncode = -1
        return -1

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class ServiceOfInit(Server):
    """`ris serve` whose parent is pid 1, as under systemd."""

    def launch(self, env: dict[str, str] | None = None) -> None:
        pid_file = self.log_path.with_suffix(".pid")
        with self.log_path.open("ab") as log:
            subprocess.run(
                [sys.executable, "-c", _ORPHANING, str(pid_file), *self.command()[1:]],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else {**os.environ, **env},
                check=True,
                timeout=30,
            )
        self.proc = Adopted(int(pid_file.read_text()))


def serving(srv: Server) -> bool:
    try:
        return httpx.get(f"{srv.url}/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_server_outlives_the_head_and_serves_again_when_it_returns(tmp_path: Path, head: Head) -> None:
    cfg = make_config(tmp_path, image={"enabled": False}, tts={"heartbeat_timeout_s": 3.0})
    cfg["cluster"] = {"engine": "ray", "address": head.address}
    # As docs/CLUSTER.md says: the server's driver needs RAY_AUTH_MODE=token and the token. Its
    # parent is pid 1, as a systemd service's: Ray judged its raylet dead by that, and ended the
    # server at the head's return (4 times in 5 in an operator's run; never under a shell).
    srv = ServiceOfInit(tmp_path, cfg).start(timeout=300, env=head.auth_env)
    assert srv.proc is not None
    print(f"the server's parent: pid {psutil.Process(srv.proc.pid).ppid()}")
    try:
        with Client(srv.url, timeout=60, max_retries=0) as c:
            assert c.synthesize("Before the head goes.").duration_s > 0.3
        head.kill()
        lost_at = time.monotonic()
        # Past Ray's 60 s: the server answers throughout, and says what its lanes wait for.
        said: dict[str, Any] = {}
        while time.monotonic() - lost_at < 75:
            assert httpx.get(f"{srv.url}/health", timeout=5).status_code == 200
            ready = httpx.get(f"{srv.url}/ready", timeout=5)
            if ready.status_code == 503 and "stopped answering" in str(ready.json().get("pending")):
                said = ready.json()
            time.sleep(3)
        assert set(said.get("pending", {})) == {"llm", "tts"}, said
        refused = httpx.post(f"{srv.url}/api/tts/synthesize", json={"text": "Anyone there?"}, timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "lane_pending", refused.text
        assert "Ray head" in refused.json()["error"]["message"]

        head.start()
        back_at = time.monotonic()
        wait_for(lambda: serving(srv), 180)
        print(f"lanes serving {time.monotonic() - back_at:.1f} s after the head returned")
        with Client(srv.url, timeout=60, max_retries=0) as c:
            assert c.synthesize("After the head came back.").duration_s > 0.3
            assert c.generate("Say hi.", max_tokens=4).text
        log = srv.log_path.read_text()
        assert "stopped answering" in log and "joined the Ray head" in log
    finally:
        srv.stop()
    # SIGTERM after the rejoin stopped it gracefully, not through the handler Ray's new driver
    # installs (a stack dump and an exit on the spot).
    assert "SIGTERM received" not in srv.log_path.read_text()


def test_a_server_whose_token_the_head_refuses_is_told_why_within_seconds(tmp_path: Path, head: Head) -> None:
    """ray.init asks a refusing head 20 times, a second apart, and then says "Failed to connect"
    (the reason only in Ray's log lines): `ris serve` said that after 21 s."""
    cfg = make_config(tmp_path, image={"enabled": False})
    cfg["cluster"] = {"engine": "ray", "address": head.address}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    # The test machine's own Ray settings (a token file in ~/.ray) must not count.
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(tmp_path)}
    cases = {
        "a different token": (
            {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)},
            "refused this server's token",
        ),
        "no token": ({}, "refused this server's token"),
        "token mode without a token": ({"RAY_AUTH_MODE": "token"}, "no authentication token was found"),
    }
    for case, (env, reason) in cases.items():
        start = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "ris", "serve", "--config", str(path)],
            env=base | env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        took = time.monotonic() - start
        print(f"{case}: exit {done.returncode} after {took:.1f} s")
        assert done.returncode == 2, (case, done.stderr[-3000:])
        assert reason in done.stderr and "RAY_AUTH_TOKEN" in done.stderr, (case, done.stderr[-3000:])
        assert took < 15, case  # the import and the config's checks; ray.init's retries took 21 s
