"""The TTS lane borrowing the LLM's idle core (`lanes.tts.borrow_idle_cores`, opt-in): what
speech gains while the LLM is idle, and what a chat arriving during a long reading pays.

The real server with the repository's config.json (LLM core 0, TTS core 1, Piper), the image
lane off, once as shipped and once with `borrow_idle_cores: true` on the TTS lane; the two
servers take turns, the order alternating each round. Per round and server:
  speech  a six-sentence paragraph synthesized `--speech-n` times in a row, the LLM idle:
          wall time per request (Piper runs its sentences on 1 thread, or on 2 when it borrows)
  chat    while a long reading is synthesized, `--chat-n` streamed chats of 16 tokens one after
          another: time to the first token (the LLM takes core 0 back from a borrowing TTS)
Ratios borrowing / as shipped per round; median and range.

    python bench/tts_lending.py [--rounds 3] [--speech-n 5] [--chat-n 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ris import Client  # noqa: E402
from ris.benchmark.run import machine_summary  # noqa: E402
from ris.launch import ServiceProcess  # noqa: E402

PARAGRAPH = (
    "The lighthouse keeper climbed the stairs at dusk. He lit the lamp and wound the clock. "
    "Ships passed the rocks all night without a sound. At dawn he wrote down every one of them. "
    "Then he slept until the gulls woke him at noon. The sea was calm and grey that day."
)
READING = " ".join([PARAGRAPH] * 15)  # under the 5,000 characters a request may hold
VARIANTS = {"as shipped": False, "tts borrows": True}


def config(tmp: Path, borrow: bool) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads((ROOT / "config.json").read_text())
    cfg["data_dir"] = str(tmp / "data")
    cfg["server"] = {**cfg.get("server", {}), "port": 0}
    cfg["lanes"]["image"]["enabled"] = False
    cfg["lanes"]["tts"]["borrow_idle_cores"] = borrow
    return cfg


def speech(url: str, n: int) -> list[float]:
    out = []
    with Client(url, timeout=120, max_retries=0) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            c.synthesize(PARAGRAPH)
            out.append(time.perf_counter() - t0)
    return out


def chats_during_reading(url: str, n: int) -> list[float]:
    stop, failed = threading.Event(), list[BaseException]()

    def read() -> None:  # one long reading after another until the chats are done
        try:
            with Client(url, timeout=300, max_retries=0) as c:
                while not stop.is_set():
                    c.synthesize(READING)
        except BaseException as e:  # noqa: BLE001 - said below, the figures would mean nothing
            failed.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(3.0)  # past the LLM's 2 s idle grace: a borrowing TTS has widened by now
    ttfts = []
    try:
        with Client(url, timeout=120, max_retries=0) as c:
            for i in range(n):
                t0 = time.perf_counter()
                for _piece in c.generate_stream(f"Say something about the number {i}.", max_tokens=16):
                    ttfts.append(time.perf_counter() - t0)
                    break
                time.sleep(2.5)  # the LLM idle again past its grace, the TTS widened again
    finally:
        stop.set()
        reader.join(300)
    if failed:
        raise SystemExit(f"the reading failed: {failed[0]!r}")
    return ttfts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--speech-n", type=int, default=5)
    p.add_argument("--chat-n", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench/results/tts_lending.json"))
    args = p.parse_args()
    names = list(VARIANTS)
    per_round: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        servers = {}
        for name, borrow in VARIANTS.items():
            folder = Path(tmp) / name.replace(" ", "_")
            folder.mkdir()
            servers[name] = ServiceProcess(folder, config(folder, borrow))
            servers[name].start(timeout=300)
        try:
            for r in range(args.rounds):
                order = names if r % 2 == 0 else names[::-1]
                figures: dict[str, dict[str, float]] = {}
                for name in order:
                    url = servers[name].url
                    s = speech(url, args.speech_n)
                    t = chats_during_reading(url, args.chat_n)
                    figures[name] = {
                        "speech_s_p50": statistics.median(s),
                        "chat_ttft_ms_p50": statistics.median(t) * 1e3,
                    }
                    print(f"round {r + 1} {name}: {figures[name]}", flush=True)
                per_round.append(figures)
        finally:
            for svc in servers.values():
                svc.stop()

    def summary(key: str) -> dict[str, Any]:
        ratios = [f["tts borrows"][key] / f["as shipped"][key] for f in per_round]
        return {
            "as shipped": statistics.median(f["as shipped"][key] for f in per_round),
            "tts borrows": statistics.median(f["tts borrows"][key] for f in per_round),
            "ratio_median": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3),
        }

    result = {
        "benchmark": "tts_lending",
        "machine": machine_summary()["summary"],
        "load_average": round(os.getloadavg()[0], 2),
        "args": vars(args),
        "rounds": per_round,
        "speech_s_p50": summary("speech_s_p50"),
        "chat_ttft_ms_p50": summary("chat_ttft_ms_p50"),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("speech_s_p50", "chat_ttft_ms_p50")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
