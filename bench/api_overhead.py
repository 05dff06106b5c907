"""What the API and scheduler add: a BENCHMARK-ONLY no-op LLM backend behind the real server,
driven from another process, beside the same backend called directly, and beside the server's
cheapest route (GET /health: same middlewares, no body, no worker) with the same client.

Reports per-request latency p50/p99 over one connection, and requests/s with many connections
for no-op generations and for /health, alternated over `--rounds` rounds (median and range),
from a lean keep-alive HTTP/1.1 client (what wrk would do), so the client's own cost does not
hide the server's. Goals: API overhead p50 <= 1 ms; no-op generations >= 0.6x of /health's
requests/s in the same run.

    python bench/api_overhead.py [--seconds 3] [--rounds 3] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ris.backends import BackendContext
from ris.backends.llm_noop import NoopLLM
from ris.config import ModelSpec
from ris.lanes.llm import LLMRequest, TextCollector
from ris.launch import ServiceProcess
from ris.scheduler import percentile

ROOT = Path(__file__).resolve().parents[1]
BODY = {"prompt": "x", "max_tokens": 1}


def direct(n: int) -> list[float]:
    backend = NoopLLM(ModelSpec(backend="noop"), BackendContext("cpu", 1, Path(".")))
    out = []
    for _ in range(n):
        t = time.perf_counter()
        backend.generate(LLMRequest(prompt="x", max_tokens=1), TextCollector())
        out.append(time.perf_counter() - t)
    return out


def _request_bytes(port: int) -> bytes:
    body = json.dumps(BODY).encode()
    head = (
        "POST /api/llm/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> int:
    """One request on a keep-alive connection; returns the status code."""
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = next(int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return status


def _load(port: int, n_seq: int, seconds: float, rounds: int, concurrency: int, conn: Any) -> None:
    """In its own process, with a lean HTTP/1.1 client (keep-alive, no parsing beyond the
    headers): a general-purpose client such as httpx costs more per request than the server
    does (1.6 ms of 2.5 ms measured here), and would be measuring itself."""
    noop = _request_bytes(port)

    async def sequential() -> list[float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lat = []
        for i in range(50 + n_seq):
            t = time.perf_counter()
            status = await _exchange(reader, writer, noop)
            if i >= 50:  # the first 50 warm up
                lat.append(time.perf_counter() - t)
            assert status == 200, status
        writer.close()
        return lat

    async def many(req: bytes) -> tuple[float, int]:
        ok = errors = 0
        end = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal ok, errors
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while time.perf_counter() < end:
                if await _exchange(reader, writer, req) == 200:
                    ok += 1
                else:
                    errors += 1
            writer.close()

        await asyncio.gather(*(client() for _ in range(concurrency)))
        return ok / seconds, errors

    lat = asyncio.run(sequential())
    noop_rps, health_rps, errors = [], [], 0
    for r in range(rounds):  # alternate which goes first, so drift favours neither
        for kind in ("noop", "health") if r % 2 == 0 else ("health", "noop"):
            rps, err = asyncio.run(many(noop if kind == "noop" else HEALTH))
            (noop_rps if kind == "noop" else health_rps).append(rps)
            errors += err
    conn.send({"latencies": lat, "noop_rps": noop_rps, "health_rps": health_rps, "errors": errors})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=3.0, help="per throughput measurement")
    p.add_argument("--rounds", type=int, default=3, help="alternated noop / health measurements")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--out", default=str(ROOT / "bench/results/api_overhead.json"))
    args = p.parse_args()
    base = direct(args.requests)
    cfg = json.loads((ROOT / "config.json").read_text())
    cfg["lanes"]["llm"].update(
        {
            "default_model": "noop",
            "max_queue": 10_000,
            "models": {"noop": {"backend": "noop", "description": "benchmark only"}},
        }
    )
    cfg["lanes"]["tts"]["enabled"] = False
    cfg["lanes"]["image"]["enabled"] = False
    with tempfile.TemporaryDirectory(prefix="ris-api-") as tmp:
        cfg = {**cfg, "data_dir": str(Path(tmp) / "data"), "server": {"port": 0}}
        svc = ServiceProcess(Path(tmp), cfg).start()
        try:
            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_load,
                args=(svc.port, args.requests, args.seconds, args.rounds, args.concurrency, child),
            )
            proc.start()
            res = parent.recv()
            proc.join(30)
        finally:
            svc.stop()
    lat = res["latencies"]
    row = {
        "direct_p50_us": 1e6 * (percentile(base, 50) or 0),
        "direct_p99_us": 1e6 * (percentile(base, 99) or 0),
        "service_p50_ms": 1e3 * (percentile(lat, 50) or 0),
        "service_p99_ms": 1e3 * (percentile(lat, 99) or 0),
        "overhead_p50_ms": 1e3 * ((percentile(lat, 50) or 0) - (percentile(base, 50) or 0)),
        "requests_per_s": statistics.median(res["noop_rps"]),
        "requests_per_s_range": [min(res["noop_rps"]), max(res["noop_rps"])],
        "health_requests_per_s": statistics.median(res["health_rps"]),
        "health_requests_per_s_range": [min(res["health_rps"]), max(res["health_rps"])],
        # Per round, then the median: both measured in the same round, one after the other.
        "noop_vs_health": statistics.median(
            [n / h for n, h in zip(res["noop_rps"], res["health_rps"], strict=True)]
        ),
        "rounds": args.rounds,
        "seconds_each": args.seconds,
        "errors": res["errors"],
        "concurrency": args.concurrency,
        "requests_sequential": args.requests,
        "machine": f"{len(os.sched_getaffinity(0))} cores, {platform.processor() or platform.machine()}",
    }
    print(json.dumps(row, indent=1))
    Path(args.out).write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
