"""What an open web console costs the server: its process's CPU with one browser on /ui (the
overview, which polls /api/console/state once a second) beside the same server with no
browser, in alternating windows (median and range over `--rounds`), plus the bytes each
console page loads on first visit (HTML, CSS, scripts, icon) and the server's own time per
state poll (its Server-Timing header).

CPU is the server process's own user+system time (psutil), not its lane workers': the
console's cost lands in the server. The browser is Debian's chromium driven by Playwright,
as in tests/integration/test_console.py. Goals: < 2% of one core more with the browser open
than without; first load < 300 KB.

    python bench/console_cost.py [--window 60] [--rounds 3] [--out bench/results/console_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from playwright.sync_api import Page, sync_playwright

from ris.launch import ServiceProcess

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
PAGES = ["/ui", "/ui/work", "/ui/playground", "/ui/models"]


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def window(proc: psutil.Process, seconds: float) -> float:
    """The process's CPU use over `seconds`, in percent of one core."""
    c0, t0 = cpu_seconds(proc), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(proc) - c0) / (time.monotonic() - t0)


def first_load_bytes(page: Page, url: str) -> dict[str, Any]:
    """Bytes of everything the page loads before its `load` event, the API's data aside."""
    responses: list[Any] = []

    def seen(r: Any) -> None:
        responses.append(r)

    page.on("response", seen)
    page.goto(url, wait_until="load")
    page.remove_listener("response", seen)
    assets = [r for r in responses if r.request.resource_type not in ("fetch", "xhr") and r.ok]
    files = {r.url.rsplit("/", 1)[-1]: len(r.body()) for r in assets}
    return {"bytes": sum(files.values()), "files": files}


def state_poll_ms(url: str, n: int = 50) -> list[float]:
    """The server's own time per GET /api/console/state (Server-Timing: app;dur=...)."""
    out = []
    with httpx.Client() as c:
        for _ in range(n):
            timing = c.get(url + "/api/console/state").headers["server-timing"]
            out.append(float(timing.split("dur=")[1]))
    return out


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=60.0, help="seconds per measured window")
    ap.add_argument("--rounds", type=int, default=3, help="windows of each kind, alternated")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "console_cost.json")
    args = ap.parse_args()

    config = json.loads((ROOT / "config.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        config["data_dir"] = str(Path(tmp) / "data")
        server = ServiceProcess(Path(tmp), config).start()
        try:
            assert server.proc is not None
            proc = psutil.Process(server.proc.pid)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                loads = {p: first_load_bytes(page, server.url + p) for p in PAGES}
                page.goto("about:blank")
                time.sleep(2)  # let the start-up settle
                runs: dict[str, list[float]] = {"no_browser": [], "browser": []}
                for r in range(args.rounds):
                    # Alternate which goes first, so a drift in the machine's load hits both.
                    order = ["no_browser", "browser"] if r % 2 == 0 else ["browser", "no_browser"]
                    for arm in order:
                        page.goto(server.url + "/ui" if arm == "browser" else "about:blank")
                        runs[arm].append(window(proc, args.window))
                        print(f"round {r + 1} {arm:>10}: {runs[arm][-1]:.2f}% of a core", flush=True)
                page.goto("about:blank")
                browser.close()
            poll_ms = state_poll_ms(server.url)
        finally:
            server.stop()

    diffs = [b - n for b, n in zip(runs["browser"], runs["no_browser"], strict=True)]
    result = {
        "what": "server process CPU, % of one core, one browser on /ui vs none, alternating windows",
        "window_s": args.window,
        "rounds": args.rounds,
        "no_browser_cpu_percent": summary(runs["no_browser"]),
        "browser_cpu_percent": summary(runs["browser"]),
        "console_cost_percent_of_core": summary(diffs),
        "goal_percent_of_core": 2.0,
        "state_poll_server_ms": summary(poll_ms),
        "first_load": loads,
        "first_load_goal_bytes": 300 * 1024,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "raw": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    cost = result["console_cost_percent_of_core"]
    print(
        f"console cost: {cost['median']:+.2f}% of one core (range {cost['min']:+.2f} .. {cost['max']:+.2f}); "
        f"server alone {result['no_browser_cpu_percent']['median']:.2f}%, "
        f"with the browser {result['browser_cpu_percent']['median']:.2f}%"
    )
    print(f"state poll: {result['state_poll_server_ms']['median']:.2f} ms of server time (median)")
    for p, load in loads.items():
        print(f"first load {p}: {load['bytes'] / 1024:.1f} KiB in {len(load['files'])} files")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
