"""What Ray's nice level for its workers costs a real-time lane's actor: the Ray path's added
latency (issue 25's goal: <= 2 ms) with the TTS actor at nice 0, as RIS now sets it, and at
Ray's own 15 (`RAY_worker_niceness`), where it ran before (2026-12-06).

One local Ray cluster (a head with no CPUs, two 1-CPU nodes advertising `ris_lane_tts`), a local
server (worker processes on pipes) and two Ray servers of one TTS replica each, one per node.
Each round, every thread of one Ray server's actor is put back to nice 15 from outside (this
process runs as root) and the other's to 0, the two swapping roles from round to round. Sequential
one-word espeak requests, the three servers taking turns request by request
(bench/ray_replicas.py's `latencies`), `--latency-n` per server per round; added p50 = a Ray
server's p50 minus the local server's, per round; median and range over rounds.

    python bench/ray_nice_ab.py [--rounds 5] [--latency-n 300] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import ray
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ray_replicas as rr  # noqa: E402

RAY_NICE = 15


def actor_pid(url: str) -> int:
    workers = httpx.get(f"{url}/api/stats", timeout=30).json()["lanes"]["tts"]["workers"]
    (w,) = workers
    return int(w["pid"])


def renice_all(pid: int, level: int) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), level)
        except ProcessLookupError:
            pass  # ended since the listing


def nice_levels(pid: int) -> list[int]:
    return sorted({os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{pid}/task")})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--latency-n", type=int, default=300)
    p.add_argument("--out", default=str(rr.ROOT / "bench/results/ray_nice_ab.json"))
    args = p.parse_args()
    rr.TTS_MODEL = "espeak"
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1, resources={"ris_lane_tts": 1})
    cluster.wait_for_nodes()
    added: dict[str, list[float]] = {"nice 0 (as RIS sets it)": [], f"nice {RAY_NICE} (Ray's)": []}
    levels: dict[str, list[int]] = {}  # as read back from the OS, every round
    with tempfile.TemporaryDirectory() as tmp:
        local = rr.start(Path(tmp) / "local", None, 1)
        servers = [rr.start(Path(tmp) / f"ray-{i}", cluster.address, 1) for i in range(2)]
        try:
            pids = [actor_pid(srv.url) for srv in servers]
            for rnd in range(args.rounds):
                # Which server's actor runs at Ray's level alternates: the two nodes and
                # servers are not quite alike.
                slow = rnd % 2
                for i, pid in enumerate(pids):
                    renice_all(pid, RAY_NICE if i == slow else 0)
                ordered = [servers[1 - slow], servers[slow]]  # nice 0, then Ray's
                for name, pid in zip(added, (pids[1 - slow], pids[slow]), strict=True):
                    levels.setdefault(name, []).extend(nice_levels(pid))
                lat = rr.latencies([local, *ordered], args.latency_n)
                base = statistics.median(lat[0])
                for name, ray_lat in zip(added, lat[1:], strict=True):
                    added[name].append((statistics.median(ray_lat) - base) * 1000)
                print(
                    f"round {rnd + 1}: local p50 {base * 1000:.2f} ms, added "
                    + ", ".join(f"{k} {v[-1]:.2f} ms" for k, v in added.items()),
                    flush=True,
                )
        finally:
            for srv in (*servers, local):
                srv.stop()
            ray.shutdown()
            cluster.shutdown()
    row = {
        "benchmark": "ray_nice_ab",
        "machine": f"{len(os.sched_getaffinity(0))} cores, {platform.processor() or platform.machine()}",
        "load_average": round(os.getloadavg()[0], 2),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "rounds": args.rounds,
        "latency_n": args.latency_n,
        "actor_nice_levels": {k: sorted(set(v)) for k, v in levels.items()},
        "added_latency_p50_ms": {
            k: rr.summary(v, 2) | {"rounds": [round(x, 2) for x in v]} for k, v in added.items()
        },
        "goal_added_ms": 2.0,
    }
    print(json.dumps(row, indent=1))
    Path(args.out).write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
