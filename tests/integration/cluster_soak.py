"""A cluster soak: mixed load on a local multi-node Ray cluster of real `ray start` processes,
with a worker node killed, the head killed and started again, and the RIS server killed and
started again on the same data folder.

The cluster is what an operator runs: a head hosting no lanes (`ray start --head --num-cpus=0`)
and two nodes (`ray start --address`), each `--block` in a process group of its own, every port
explicit (other clusters may run on this machine), supervised as systemd's Restart=always
would (a node that exits, as nodes do once their head is gone, is started again 2 s later).
  node-a  ris_lane_llm, ris_lane_image, ris_lane_tts (4 CPUs)
  node-b  ris_lane_tts (1 CPU)
so TTS runs two replicas and losing node-b leaves one serving.

Accounting: every request either succeeded or was refused/failed with an error code during a
fault window (from the fault until the lanes serve again, plus GRACE_S for answers already on
their way); a connection refused counts only while the server itself is down. Every durable
image task a client was given must end, after all the restarts, as succeeded or failed with a
code (the definition of lost of soak.py). Per fault: seconds until /ready answers 200 and until
every replica is ready; for the head, seconds from its port answering again to lanes serving.
Used by test_cluster_soak.py (short) and runnable alone (long):

    PYTHONPATH=src .venv/bin/python -m tests.integration.cluster_soak --duration 600
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

from ris.launch import free_ports

from .server import ROOT, Server, kill_group, make_config
from .soak import FINAL, SENTENCES, _image

RAY = str(Path(sys.executable).with_name("ray"))
RESTART_DELAY_S = 2.0  # systemd's RestartSec
GRACE_S = 15.0  # answers already on their way when the lanes came back
RECOVERY_LIMIT_S = 240.0  # a fault whose lanes are not back by then is a failure
CALM_S = 15.0  # plain load between one fault's recovery and the next fault
FAULTS = ("node", "head", "server")


class RayNode:
    """`ray start ... --block` in its own process group, restarted when it exits."""

    # The ports each node is given (none may fall back to Ray's defaults: other clusters run
    # on this machine).
    PORTS = (
        "node-manager-port",
        "object-manager-port",
        "metrics-export-port",
        "runtime-env-agent-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
    )

    def __init__(
        self, name: str, args: list[str], folder: Path, env: dict[str, str], port_numbers: list[int]
    ) -> None:
        self.name = name
        ports = [f"--{n}={p}" for n, p in zip(self.PORTS, port_numbers, strict=True)]
        self.cmd = [RAY, "start", *args, *ports, "--disable-usage-stats", "--block"]
        self.log = folder / f"{name}.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.down = False  # held down by the soak (the head while it is away)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._supervise, daemon=True).start()

    def start(self) -> None:
        with self._lock, self.log.open("ab") as log:
            if self._stop.is_set():  # the supervisor decided to restart just as stop() ran
                return
            self.down = False
            self.starts += 1
            self.proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )

    def kill(self, hold: bool = False) -> None:
        """SIGKILL the whole group (the raylet, its workers, the GCS on the head); `hold`: it
        stays down until start() (a head's machine that is off)."""
        with self._lock:
            self.down = hold
            if self.proc is not None:
                kill_group(self.proc)

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                exited = self.proc is not None and self.proc.poll() is not None and not self.down
            if exited and not self._stop.wait(RESTART_DELAY_S):
                self.start()

    def stop(self) -> None:
        self._stop.set()
        self.kill(hold=True)


def port_answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class ClusterSoak:
    def __init__(self, folder: Path, duration_s: float, head_down_s: float, clients: int, seed: int) -> None:
        self.folder = folder
        self.duration_s = duration_s
        self.head_down_s = head_down_s
        self.clients = clients
        self.rng = random.Random(seed)
        # Every process shares one token: Ray's default file (~/.ray/auth_token) is shared
        # with any other cluster on this machine. The worktree's code in every process.
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        # Every port of the three nodes chosen together: one at a time, two could be the same.
        ports = free_ports(1 + 3 * len(RayNode.PORTS))
        self.head_port = ports[0]
        per_node = [ports[1 + i * len(RayNode.PORTS) : 1 + (i + 1) * len(RayNode.PORTS)] for i in range(3)]
        # Ray's session files apart from other clusters' (/tmp/ray); a short path, since it
        # holds Unix sockets.
        self.ray_tmp = folder / "r"
        temp = f"--temp-dir={self.ray_tmp}"
        self.head = RayNode(
            "head",
            ["--head", f"--port={self.head_port}", "--num-cpus=0", temp, "--include-dashboard=false"],
            folder,
            self.env,
            per_node[0],
        )
        join = f"--address=127.0.0.1:{self.head_port}"
        self.nodes = {
            "node-a": RayNode(
                "node-a",
                [
                    join,
                    "--num-cpus=4",
                    temp,
                    '--resources={"ris_lane_llm": 1, "ris_lane_image": 1, "ris_lane_tts": 1}',
                ],
                folder,
                self.env,
                per_node[1],
            ),
            "node-b": RayNode(
                "node-b",
                [join, "--num-cpus=1", temp, '--resources={"ris_lane_tts": 1}'],
                folder,
                self.env,
                per_node[2],
            ),
        }
        fast = {"heartbeat_timeout_s": 3.0, "max_queue": 16}
        cfg = make_config(
            folder, llm=dict(fast), tts={**fast, "replicas": 2}, image={**fast, "busy_timeout_s": 60.0}
        )
        cfg["cluster"] = {"engine": "ray", "address": f"127.0.0.1:{self.head_port}"}
        self.srv = Server(folder, cfg)
        self.server_down = False
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.requests: Counter[str] = Counter()
        self.problems: list[str] = []
        self.windows: list[tuple[float, float]] = []  # (fault, recovered + GRACE_S)
        self.open_fault: float | None = None
        self.faults: list[dict[str, Any]] = []
        self.image_ids: set[str] = set()
        self.health_failures_head_lost = 0
        self.health_probes_head_lost = 0
        self.head_lost = False
        self.t0 = time.monotonic()

    # ----- the run -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        load_start = os.getloadavg()
        started = time.monotonic()
        self.head.start()
        wait(lambda: port_answers(self.head_port), 90, "the head answering")
        for node in self.nodes.values():  # one after the other: a port race costs a restart
            since = time.time()
            node.start()
            wait(lambda n=node, t=since: log_times(n.log, JOINED, t), 120, f"{node.name} joining")
        self._start_server()
        setup_s = time.monotonic() - started
        threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)]
        threads.append(threading.Thread(target=self._monitor, daemon=True))
        self.t0 = time.monotonic()
        for t in threads:
            t.start()
        self._faults()
        self.stop.set()
        for t in threads:
            t.join(120)
        traffic_s = time.monotonic() - self.t0
        tasks = self._settle()
        return {
            "machine": {
                "cores": os.cpu_count(),
                "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                "cpu": platform.processor() or platform.machine(),
                "load_average_start": [round(x, 2) for x in load_start],
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
            },
            "setup_s": round(setup_s, 1),
            "traffic_s": round(traffic_s, 1),
            "head_down_s": self.head_down_s,
            "requests": dict(sorted(self.requests.items())),
            "faults": self.faults,
            "node_starts": {n.name: n.starts for n in (self.head, *self.nodes.values())},
            "health_during_head_loss": {
                "probes": self.health_probes_head_lost,
                "failed": self.health_failures_head_lost,
            },
            **tasks,
            "problems": self.problems,
        }

    def close(self) -> None:
        self.stop.set()
        if self.srv.proc is not None:
            self.srv.proc.kill()
            self.srv.proc.wait()
        for node in (*self.nodes.values(), self.head):
            node.stop()

    def _start_server(self) -> None:
        """`ris serve`, as systemd would restart it: refused (exit 2) while the nodes have not
        joined yet, so tried again until it serves."""
        deadline = time.monotonic() + 300
        while True:
            try:
                self.srv.start(timeout=300, env=self.env)
                return
            except RuntimeError:
                if time.monotonic() > deadline or self.srv.proc is None or self.srv.proc.returncode != 2:
                    raise
                time.sleep(RESTART_DELAY_S)

    # ----- load ----------------------------------------------------------------------------

    def _client(self, n: int) -> None:
        rng = random.Random(self.rng.random() + n)
        actions = [self._chat_stream, self._speech, self._image]
        with httpx.Client(base_url=self.srv.url, timeout=60) as http:
            while not self.stop.is_set():
                action = rng.choice(actions)
                began = time.monotonic()
                try:
                    outcome = action(http, rng)
                except httpx.TimeoutException:
                    outcome = "client_timeout"
                except httpx.TransportError:
                    outcome = "transport"
                    self.stop.wait(0.5)  # the server is away: not a spin
                self._count(action.__name__.lstrip("_"), outcome, began)

    def _count(self, what: str, outcome: str, began: float) -> None:
        ended = time.monotonic()
        with self.lock:
            self.requests[f"{what} {outcome}"] += 1
            if outcome == "ok":
                return
            in_window = self.open_fault is not None or any(a <= ended and began <= b for a, b in self.windows)
            coded = outcome not in ("client_timeout", "transport", "no_code") or (
                outcome == "transport" and self.server_down
            )
            if not (in_window and coded) and len(self.problems) < 50:
                why = "without a code" if in_window else "outside a fault window"
                self.problems.append(f"{what}: {outcome} at {ended - self.t0:.1f} s, {why}")

    def _chat_stream(self, http: httpx.Client, rng: random.Random) -> str:
        body = {
            "model": "smollm2",
            "stream": True,
            "max_tokens": rng.randint(8, 32),
            "messages": [{"role": "user", "content": "Count to five."}],
        }
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                return _coded(r)
            last = ""
            for line in r.iter_lines():
                if line.startswith("data: {") and '"error"' in line:
                    return f"stream {json.loads(line[6:])['error'].get('code') or 'no_code'}"
                last = line or last
            return "ok" if last == "data: [DONE]" else "no_code"  # cut short without a word

    def _speech(self, http: httpx.Client, rng: random.Random) -> str:
        r = http.post("/api/tts/synthesize", json={"text": rng.choice(SENTENCES)})
        return "ok" if r.status_code == 200 else _coded(r)

    def _image(self, http: httpx.Client, rng: random.Random) -> str:
        r = http.post("/api/image/generate", json=_image(rng.randint(0, 1000)))
        if r.status_code == 202:
            with self.lock:
                self.image_ids.add(r.json()["task_id"])
        self.stop.wait(2.0)  # the slow lane: do not flood its queue
        return "ok" if r.status_code == 202 else _coded(r)

    # ----- faults --------------------------------------------------------------------------

    def _faults(self) -> None:
        """The faults in turn, each after CALM_S of plain load, until the duration is over and
        each kind has happened once."""
        plan: list[str] = []
        done: set[str] = set()
        while time.monotonic() - self.t0 < self.duration_s or done != set(FAULTS):
            self.stop.wait(CALM_S)
            if not plan:
                plan = list(FAULTS)
            kind = plan.pop(0)
            done.add(kind)
            self.faults.append(getattr(self, f"_fault_{kind}")())

    def _begin(self) -> float:
        with self.lock:
            self.open_fault = time.monotonic()
        return self.open_fault

    def _recovered(self, kind: str, since: float, record: dict[str, Any]) -> dict[str, Any]:
        """Wait for /ready 200 and then every replica ready; close the fault's window."""
        record["ready_s"] = self._wait_serving(since, all_replicas=False)
        record["all_replicas_s"] = self._wait_serving(since, all_replicas=True)
        with self.lock:
            self.windows.append((since, time.monotonic() + GRACE_S))
            self.open_fault = None
        if record["all_replicas_s"] is None:
            self.problems.append(f"{kind}: lanes not serving {RECOVERY_LIMIT_S:g} s after the fault")
        return {"fault": kind, "at_s": round(since - self.t0, 1), **record}

    def _wait_serving(self, since: float, all_replicas: bool) -> float | None:
        while time.monotonic() - since < RECOVERY_LIMIT_S:
            if self._serving(all_replicas):
                return round(time.monotonic() - since, 1)
            time.sleep(0.25)
        return None

    def _serving(self, all_replicas: bool) -> bool:
        try:
            if httpx.get(f"{self.srv.url}/ready", timeout=5).status_code != 200:
                return False
            return (
                not all_replicas
                or all(w["state"] == "ready" for lane in self.srv.stats().values() for w in lane["workers"])
                and len(self.srv.stats()["tts"]["workers"]) == 2
            )
        except httpx.HTTPError:
            return False

    def _await_unready(self, timeout: float) -> float | None:
        """Seconds until the server sees the fault (its /ready turns 503); None if it never did."""
        since = time.monotonic()
        while time.monotonic() - since < timeout:
            if not self._serving(all_replicas=True):
                return round(time.monotonic() - since, 1)
            time.sleep(0.25)
        return None

    def _fault_node(self) -> dict[str, Any]:
        since = self._begin()
        self.nodes["node-b"].kill()  # the supervisor starts it again
        seen = self._await_unready(30)
        return self._recovered("node", since, {"node": "node-b", "seen_s": seen})

    def _fault_head(self) -> dict[str, Any]:
        since = self._begin()
        with self.lock:
            self.head_lost = True
        self.head.kill(hold=True)
        seen = self._await_unready(30)
        self.stop.wait(self.head_down_s)
        # `ray start --head` refuses a port that a local process names as its GCS address (it
        # greps ps): the nodes' raylets here, which wait up to 60 s for the head they lost. On
        # the head's own machine none would, so the soak starts it as there: the file that
        # marks "the cluster of this machine" goes, and the check passes.
        (self.ray_tmp / "ray_current_cluster").unlink(missing_ok=True)
        wall = time.time() - (time.monotonic() - since)  # the fault, on the logs' clock
        self.head.start()
        wait(lambda: port_answers(self.head_port), 90, "the head answering again")
        back = time.monotonic()
        with self.lock:
            self.head_lost = False
        record = self._recovered("head", since, {"seen_s": seen, "head_back_at_s": round(back - since, 1)})
        if record["ready_s"] is not None:
            record["ready_after_head_back_s"] = round(since + record["ready_s"] - back, 1)
        # Where the time after the head's return goes: the server joining it again, the nodes
        # (they exit once their raylet gives up on the lost head, and are started again).
        record["server_rejoined_s"] = first(log_times(self.srv.log_path, "joined the Ray head", wall), wall)
        for node in self.nodes.values():
            record[f"{node.name}_exited_s"] = first(log_times(node.log, "exited unexpectedly", wall), wall)
            record[f"{node.name}_joined_s"] = first(log_times(node.log, JOINED, wall), wall)
        return record

    def _fault_server(self) -> dict[str, Any]:
        since = self._begin()
        assert self.srv.proc is not None
        with self.lock:
            self.server_down = True
        self.srv.proc.kill()  # SIGKILL: no shutdown, its actors go with its Ray driver
        self.srv.proc.wait()
        time.sleep(RESTART_DELAY_S)
        self.srv.launch(self.env)
        record = self._recovered("server", since, {})
        with self.lock:
            self.server_down = False
        return record

    def _monitor(self) -> None:
        """/health while the head is lost: the HTTP server must answer throughout."""
        while not self.stop.wait(1.0):
            if not self.head_lost:
                continue
            try:
                ok = httpx.get(f"{self.srv.url}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                ok = False
            with self.lock:
                self.health_probes_head_lost += 1
                self.health_failures_head_lost += not ok

    # ----- the end -------------------------------------------------------------------------

    def _settle(self) -> dict[str, Any]:
        ids = sorted(self.image_ids)
        states: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 300
        with httpx.Client(base_url=self.srv.url, timeout=30) as http:
            while time.monotonic() < deadline:
                for task_id in ids:
                    if states.get(task_id, {}).get("state") not in FINAL:
                        r = http.get(f"/api/tasks/{task_id}")
                        states[task_id] = (
                            r.json() if r.status_code == 200 else {"state": f"http {r.status_code}"}
                        )
                if all(s["state"] in FINAL for s in states.values()):
                    break
                time.sleep(1.0)
            ready_at_end = http.get("/ready").status_code == 200
        lost = [
            i
            for i, s in states.items()
            if s["state"] not in FINAL or (s["state"] == "failed" and not (s.get("error") or {}).get("code"))
        ]
        if lost:
            self.problems.append(f"{len(lost)} durable image tasks lost: {lost[:5]}")
        if not ready_at_end:
            self.problems.append("/ready is not 200 at the end")
        if self.health_failures_head_lost:
            self.problems.append(
                f"/health failed {self.health_failures_head_lost} times while the head was lost"
            )
        return {
            "image_tasks": len(ids),
            "image_tasks_final": dict(Counter(s["state"] for s in states.values() if s["state"] in FINAL)),
            "image_tasks_failed_codes": dict(
                Counter(
                    s["error"]["code"] for s in states.values() if s["state"] == "failed" and s.get("error")
                )
            ),
            "tasks_lost": lost,
            "ready_at_end": ready_at_end,
        }


JOINED = "Ray runtime started"


def log_times(path: Path, marker: str, since: float) -> list[float]:
    """The wall-clock times of the log lines holding `marker` at or after `since` (Ray's and
    RIS's logs both start a line with "2026-12-03 14:24:12,494")."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if marker in line:
            try:
                t = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
            except ValueError:
                continue
            if t >= since:
                out.append(t)
    return out


def first(times: list[float], origin: float) -> float | None:
    return round(times[0] - origin, 1) if times else None


def _coded(r: httpx.Response) -> str:
    try:
        code = r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "no_code"
    return f"{r.status_code} {code}"


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.2)


def cluster_soak(
    duration_s: float, head_down_s: float = 20.0, clients: int = 3, seed: int = 1, keep: Path | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rcs-") as tmp:
        soak = ClusterSoak(keep or Path(tmp), duration_s, head_down_s, clients, seed)
        try:
            return soak.run()
        finally:
            soak.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--duration", type=float, default=600.0, help="seconds of load and faults (at least one of each)"
    )
    ap.add_argument("--head-down", type=float, default=70.0, help="seconds without a head (past Ray's 60 s)")
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, help="default: bench/results/cluster_soak_<duration>s.json")
    ap.add_argument("--keep", type=Path, help="keep the logs and data folder here")
    args = ap.parse_args()
    report = cluster_soak(args.duration, args.head_down, args.clients, args.seed, args.keep)
    text = json.dumps(report, indent=2)
    print(text)
    out = args.out or ROOT / "bench" / "results" / f"cluster_soak_{args.duration:g}s.json"
    out.write_text(text + "\n")
    if report["problems"]:
        raise SystemExit("cluster soak failed: " + "; ".join(report["problems"]))


if __name__ == "__main__":
    main()
