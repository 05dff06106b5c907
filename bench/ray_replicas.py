"""Cluster mode on Ray: what a second TTS replica adds, and what the Ray path costs per task.

A local Ray cluster on this machine: a head with no lanes and two single-CPU "nodes", each
advertising `ris_lane_tts: 1`. The real server (`ris serve`, the TTS lane only, Piper, one
math thread per worker, not pinned: the two nodes share this machine's cores) runs against it
with 1 and then 2 TTS replicas, one server at a time (the two nodes host two workers in all);
a local server (worker processes on pipes, no Ray) runs beside them all along.

  throughput   `--clients` concurrent clients synthesise `--requests` sentences; requests/s
               with 2 replicas over 1 replica (goal >= 1.8x)
  added p50    sequential one-word espeak requests (`POST /api/tts/synthesize`), the Ray server
               (1 replica) and the local server taking turns request by request; p50 of Ray
               minus p50 of local (goal <= 2 ms)
Rounds alternate which replica count goes first; median and range over rounds.

`--links direct,ray` measures the added p50 for each way the messages can travel between the
server and its actors (config.json's `cluster.link`), a Ray server of one replica per way, all
taking turns with the local one request by request; the first is the one the throughput part
runs with (the default: `direct`, as shipped).

    python bench/ray_replicas.py [--rounds 3] [--requests 16] [--clients 4] [--latency-n 200]
                                 [--tts-model espeak] [--links direct,ray]

`--tts-model espeak` serves the throughput part with espeak-ng instead of Piper, for a machine
without the Piper voice's package (the GPU machine: bench/gpu_run.sh's `ray` part).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import ray
from ray.cluster_utils import Cluster

from ris.launch import ServiceProcess

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = "Two speech nodes share this work, one sentence at a time, as fast as they can."


TTS_MODEL = "piper"
WARM_REQUESTS = 20


def tts_config(tmp: Path, address: str | None, replicas: int, link: str = "direct") -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads((ROOT / "config.json").read_text())
    cfg["data_dir"] = str(tmp / "data")
    cfg["server"] = {**cfg.get("server", {}), "port": 0}  # a free one
    tts = cfg["lanes"]["tts"]
    tts.update({"cores": None, "threads": 1, "replicas": replicas, "max_queue": 1024})
    if TTS_MODEL != tts["default_model"]:  # only that model: another may not be installed here
        tts.update({"default_model": TTS_MODEL, "models": {TTS_MODEL: tts["models"][TTS_MODEL]}})
    cfg["lanes"] = {"tts": tts, "llm": {"enabled": False}, "image": {"enabled": False}}
    if address:
        cfg["cluster"] = {"engine": "ray", "address": address, "link": link}
    return cfg


def start(folder: Path, address: str | None, replicas: int, link: str = "direct") -> ServiceProcess:
    return ServiceProcess(folder, tts_config(folder, address, replicas, link)).start(timeout=300)


def throughput(srv: ServiceProcess, requests: int, clients: int) -> float:
    def one(_: int) -> None:
        r = httpx.post(f"{srv.url}/api/tts/synthesize", json={"text": SENTENCE}, timeout=300)
        r.raise_for_status()

    one(0)  # warm: the first synthesis loads what the model loads lazily
    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    return requests / (time.perf_counter() - t)


def latencies(servers: list[ServiceProcess], n: int) -> list[list[float]]:
    """`n` sequential one-word requests to each server, taking turns request by request (the
    first server changing each time): this machine's moods reach every server alike. Blocks
    of requests to one server, then the other, gave added p50s from 2.3 to 5.3 ms for one
    build; taking turns, three identical servers agreed within 0.05 ms."""
    body = {"text": "Hi.", "model": "espeak"}
    out: list[list[float]] = [[] for _ in servers]
    clients = [httpx.Client(base_url=s.url, timeout=60) for s in servers]
    try:
        for c in clients:
            for _ in range(WARM_REQUESTS):
                c.post("/api/tts/synthesize", json=body).raise_for_status()
        for i in range(n):
            for k in range(len(servers)):
                j = (i + k) % len(servers)
                t = time.perf_counter()
                clients[j].post("/api/tts/synthesize", json=body).raise_for_status()
                out[j].append(time.perf_counter() - t)
    finally:
        for c in clients:
            c.close()
    return out


def summary(values: list[float], digits: int = 3) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--latency-n", type=int, default=200)
    p.add_argument("--tts-model", choices=("piper", "espeak"), default="piper")
    p.add_argument("--links", default="direct", help="comma-separated, from direct, ray")
    p.add_argument("--out", default=str(ROOT / "bench/results/ray_replicas.json"))
    args = p.parse_args()
    links = args.links.split(",")
    if not links or any(x not in ("direct", "ray") for x in links) or len(set(links)) != len(links):
        p.error("--links: distinct names from direct, ray")
    global TTS_MODEL
    TTS_MODEL = args.tts_model

    t0 = time.monotonic()
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1, resources={"ris_lane_tts": 1})
    cluster.wait_for_nodes()
    cluster_start_s = time.monotonic() - t0
    ratios, rates = [], {1: [], 2: []}
    added: dict[str, list[float]] = {x: [] for x in links}
    ray_p50: dict[str, list[float]] = {x: [] for x in links}
    local_p50: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        local = start(Path(tmp) / "local", None, 1)
        try:
            for rnd in range(args.rounds):
                order = (1, 2) if rnd % 2 == 0 else (2, 1)
                rate: dict[int, float] = {}
                for replicas in order:
                    srv = start(Path(tmp) / f"ray-{rnd}-{replicas}", cluster.address, replicas, links[0])
                    try:
                        rate[replicas] = throughput(srv, args.requests, args.clients)
                        if replicas == 1:
                            # One more single-replica server per other way (the second node).
                            folder = Path(tmp) / f"ray-{rnd}-1"
                            others = [start(folder / x, cluster.address, 1, x) for x in links[1:]]
                            try:
                                *ray_lat, local_lat = latencies([srv, *others, local], args.latency_n)
                            finally:
                                for o in others:
                                    o.stop()
                            local_p50.append(statistics.median(local_lat))
                            for x, lat in zip(links, ray_lat, strict=True):
                                ray_p50[x].append(statistics.median(lat))
                                added[x].append((ray_p50[x][-1] - local_p50[-1]) * 1000)
                    finally:
                        srv.stop()
                for k, v in rate.items():
                    rates[k].append(v)
                ratios.append(rate[2] / rate[1])
                each = ", ".join(f"{x} {added[x][-1]:.2f}" for x in links)
                print(f"round {rnd + 1}: {rate[1]:.2f} -> {rate[2]:.2f} req/s, added p50 (ms): {each}")
        finally:
            local.stop()
            ray.shutdown()
            cluster.shutdown()
    row = {
        "benchmark": "ray_replicas",
        "machine": f"{len(os.sched_getaffinity(0))} cores, {platform.processor() or platform.machine()}",
        "note": "the two nodes are processes of this one machine, sharing its cores"
        + (": a 2-core machine, indicative only" if len(os.sched_getaffinity(0)) <= 2 else ""),
        "tts_model": TTS_MODEL,
        # How busy the machine was (1-minute load average) when the run ended.
        "load_average": round(os.getloadavg()[0], 2),
        "rounds": args.rounds,
        "requests": args.requests,
        "clients": args.clients,
        "cluster_start_s": round(cluster_start_s, 2),
        "tts_requests_per_s": {"1_replica": summary(rates[1], 2), "2_replicas": summary(rates[2], 2)},
        "throughput_ratio_2_over_1": summary(ratios, 2),
        "goal_ratio": 1.8,
        "link": links[0],
        "latency_p50_s": {"ray": summary(ray_p50[links[0]], 4), "local": summary(local_p50, 4)},
        "added_latency_p50_ms": summary(added[links[0]], 2),
        "added_latency_p50_ms_by_link": {x: summary(added[x], 2) for x in links},
        "goal_added_ms": 2.0,
    }
    print(json.dumps(row, indent=1))
    Path(args.out).write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
