"""What the API and scheduler add: a BENCHMARK-ONLY no-op LLM backend behind the real server,
driven from another process, beside the same backend called directly, and beside the server's
cheapest route (GET /health: same middlewares, no body, no worker) with the same client.

Reports per-request latency p50/p99 over one connection, and requests/s with many connections
for no-op generations and for /health, alternated over `--rounds` rounds (median and range),
from a lean keep-alive HTTP/1.1 client (what wrk would do), so the client's own cost does not
hide the server's. Goals: API overhead p50 <= 1 ms; no-op generations >= 0.6x of /health's
requests/s in the same run.

Builds side by side: `--before REV` also runs the server of git revision REV (its src/), and
`--parsers` each build with each HTTP parser (server.http_parser; a REV older than that
setting gets h11 by hiding httptools from it, httptools as uvicorn's default picks it); each
build is started afresh `--repeats` times, the builds alternated in a rotating order, and
each figure is given as the median and range of its runs.

    python bench/api_overhead.py [--before REV] [--parsers h11,httptools] [--repeats 3]
                                 [--seconds 5] [--rounds 3] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

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


def _server_cpu_s(pid: int) -> float:
    """CPU seconds the API process has used (its workers are other processes)."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _load(port: int, pid: int, n_seq: int, seconds: float, rounds: int, concurrency: int, conn: Any) -> None:
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
    # The API process's CPU per request: on a machine shared with other work, requests/s
    # follow whoever else runs, while the CPU a request costs the server hardly does.
    cpu_us: dict[str, list[float]] = {"noop": [], "health": []}
    for r in range(rounds):  # alternate which goes first, so drift favours neither
        for kind in ("noop", "health") if r % 2 == 0 else ("health", "noop"):
            before = _server_cpu_s(pid)
            rps, err = asyncio.run(many(noop if kind == "noop" else HEALTH))
            cpu_us[kind].append(1e6 * (_server_cpu_s(pid) - before) / max(1.0, rps * seconds + err))
            (noop_rps if kind == "noop" else health_rps).append(rps)
            errors += err
    conn.send(
        {"latencies": lat, "noop_rps": noop_rps, "health_rps": health_rps, "errors": errors, "cpu_us": cpu_us}
    )


def _serve_and_load(
    tmp: Path, cfg: dict[str, Any], env: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    """One run: a fresh server, the load process against it, the server stopped."""
    svc = ServiceProcess(tmp, cfg).start(env=env)
    assert svc.proc is not None
    try:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_load,
            args=(svc.port, svc.proc.pid, args.requests, args.seconds, args.rounds, args.concurrency, child),
        )
        proc.start()
        res: dict[str, Any] = parent.recv()
        proc.join(30)
    finally:
        svc.stop()
    return res


def _row(res: dict[str, Any], base: list[float]) -> dict[str, Any]:
    lat = res["latencies"]
    return {
        "service_p50_ms": 1e3 * (percentile(lat, 50) or 0),
        "service_p99_ms": 1e3 * (percentile(lat, 99) or 0),
        "overhead_p50_ms": 1e3 * ((percentile(lat, 50) or 0) - (percentile(base, 50) or 0)),
        "requests_per_s": statistics.median(res["noop_rps"]),
        "health_requests_per_s": statistics.median(res["health_rps"]),
        # Per round, then the median: both measured in the same round, one after the other.
        "noop_vs_health": statistics.median(
            [n / h for n, h in zip(res["noop_rps"], res["health_rps"], strict=True)]
        ),
        "server_cpu_us_per_noop": statistics.median(res["cpu_us"]["noop"]),
        "server_cpu_us_per_health": statistics.median(res["cpu_us"]["health"]),
        # What the requests/s ratio is where the API process has a core to itself (it is the
        # bottleneck): /health's CPU per request over a no-op generation's, per round.
        "noop_vs_health_by_cpu": statistics.median(
            [h / n for n, h in zip(res["cpu_us"]["noop"], res["cpu_us"]["health"], strict=True)]
        ),
        "errors": res["errors"],
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def _export(rev: str, into: Path) -> Path:
    """src/ of git revision `rev`, and a folder that hides httptools from it (uvicorn's "auto"
    would take it where installed: that build ran h11)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    hide = into / "hide" / "httptools"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text('raise ImportError("hidden by bench/api_overhead.py")\n')
    return into


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000)
    # 5 s: with 3 s windows the same build read 490-790 us per request on a 2-core machine; 5 s kept
    # each build within ~10% (bench/results/api_overhead_epyc_2.json).
    p.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    p.add_argument("--rounds", type=int, default=3, help="alternated noop / health measurements")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--before", metavar="REV", help="also run the server of this git revision")
    has_httptools = importlib.util.find_spec("httptools") is not None
    p.add_argument(
        "--parsers",
        default="h11,httptools" if has_httptools else "h11",
        help="each build's server with each of these HTTP parsers (this tree's: server.http_parser)",
    )
    p.add_argument("--repeats", type=int, default=3, help="fresh servers per build, alternated")
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
    inherited = os.environ.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="ris-api-") as tmp:
        builds: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}
        if args.before:
            old = _export(args.before, Path(tmp) / "before")
            knows = any("http_parser" in f.read_text() for f in (old / "src").rglob("*.py"))
            for parser in args.parsers.split(","):
                # Its server.http_parser where it has one; before that, h11 with httptools
                # hidden from it, else httptools where uvicorn's "auto" picks it.
                hide = (str(old / "hide"),) if parser == "h11" and not knows else ()
                path = os.pathsep.join(x for x in (*hide, str(old / "src"), inherited) if x)
                server = {"http_parser": parser} if knows else {}
                builds[f"before ({args.before}, {parser})"] = (server, {"PYTHONPATH": path})
        for parser in args.parsers.split(","):
            path = os.pathsep.join(x for x in (str(ROOT / "src"), inherited) if x)
            builds[f"after, {parser}"] = ({"http_parser": parser}, {"PYTHONPATH": path})
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in builds}
        names = list(builds)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotated: drift favours none
                server, env = builds[name]
                folder = Path(tmp) / f"run-{r}-{names.index(name)}"
                folder.mkdir()
                run_cfg = {**cfg, "data_dir": str(folder / "data"), "server": {"port": 0, **server}}
                row = _row(_serve_and_load(folder, run_cfg, env, args), base)
                print(name, json.dumps(row), file=sys.stderr, flush=True)
                runs[name].append(row)
    result: dict[str, Any] = {
        "note": f"bench/api_overhead.py: {args.repeats} fresh servers per build, alternated in a "
        f"rotating order; {args.rounds} rounds of {args.seconds} s each per run (no-op generation "
        f"and GET /health alternated), {args.concurrency} connections; medians and ranges over runs",
        "machine": f"{len(os.sched_getaffinity(0))} cores, {platform.processor() or platform.machine()}",
        # Requests/s follow whatever else the machine runs; CPU per request hardly does.
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "direct_p50_us": round(1e6 * (percentile(base, 50) or 0), 3),
        "builds": {
            name: {"summary": {k: _spread([row[k] for row in rows]) for k in rows[0]}, "runs": rows}
            for name, rows in runs.items()
        },
    }
    print(json.dumps({n: b["summary"] for n, b in result["builds"].items()}, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
