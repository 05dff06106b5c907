"""Time to first byte of /v1/audio/speech in each format, against wav for the same text.

One real service with the default voices (Piper, 22.05 kHz); each round sends the same text as
wav and as each other format, the pair in alternating order (wav first in even rounds, second
in odd ones), and reads every answer to its end so that requests never overlap. Per format it
prints the median of the per-round ratios format/wav of the time to first byte, with their
range, and the same for the first sound (the first byte past the container's header, whose
size the encoder itself reports) and for the last byte. Goal: mp3's first byte within 1.2x of
wav's.

    python bench/speech_formats.py [--repeats 10] [--config config.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from ris.launch import ServiceProcess
from ris.services.speech_encoding import SpeechEncoder, SpeechFormat

ROOT = Path(__file__).resolve().parents[1]
TEXT = (
    "The lighthouse keeper climbed the stairs as the storm came in. "
    "He lit the lamp, and the ships found their way home."
)
FORMATS: tuple[SpeechFormat, ...] = ("mp3", "opus", "aac", "flac", "pcm")
GOAL_MP3 = 1.2


def header_bytes(fmt: SpeechFormat, rate: int = 22050) -> int:
    """What the container writes before any audio (wav 44, mp3's ID3 tag, Ogg's two header
    pages, FLAC's STREAMINFO and padding; aac and pcm nothing)."""
    encoder = SpeechEncoder(fmt, rate)
    try:
        return len(encoder.start())
    finally:
        encoder.close()


def timed(http: httpx.Client, fmt: str, header: int) -> tuple[float, float, float, int]:
    """Seconds to the first byte, to the first byte of sound and to the last; the body's size."""
    body = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": fmt}
    t0 = time.perf_counter()
    first = sound = None
    size = 0
    with http.stream("POST", "/v1/audio/speech", json=body) as r:
        r.raise_for_status()
        for chunk in r.iter_raw():
            now = time.perf_counter() - t0
            size += len(chunk)
            if chunk and first is None:
                first = now
            if size > header and sound is None:
                sound = now
    assert first is not None and sound is not None, f"{fmt}: no sound"
    return first, sound, time.perf_counter() - t0, size


def machine() -> str:
    """The cores, CPU model and memory this ran on, and what else was running (load average:
    a shared machine's noise shows in the ranges, and in pcm vs wav, which do the same work)."""
    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "unknown CPU",
        )
        if Path("/proc/cpuinfo").exists()
        else "unknown CPU"
    )
    gib = psutil.virtual_memory().total / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores {model}, {gib:.0f} GiB, no GPU used; load average {load}"


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--config", default=str(ROOT / "config.json"))
    p.add_argument("--out", default=str(ROOT / "bench/results/speech_formats.json"))
    args = p.parse_args()
    cfg = json.loads(Path(args.config).read_text())
    headers = {f: header_bytes(f) for f in ("wav", *FORMATS)}
    first: dict[str, list[float]] = {f: [] for f in ("wav", *FORMATS)}
    sound: dict[str, list[float]] = {f: [] for f in ("wav", *FORMATS)}
    last: dict[str, list[float]] = {f: [] for f in ("wav", *FORMATS)}
    ratio_first: dict[str, list[float]] = {f: [] for f in FORMATS}
    ratio_sound: dict[str, list[float]] = {f: [] for f in FORMATS}
    ratio_last: dict[str, list[float]] = {f: [] for f in FORMATS}
    sizes: dict[str, int] = {}
    machine_before = machine()
    with tempfile.TemporaryDirectory(prefix="ris-speech-formats-") as tmp:
        cfg = {**cfg, "data_dir": str(Path(tmp) / "data"), "server": {"port": 0}}
        svc = ServiceProcess(Path(tmp), cfg).start()
        try:
            with httpx.Client(base_url=svc.url, timeout=600) as http:
                for fmt in ("wav", *FORMATS):  # warm-up: each encoder's first use
                    timed(http, fmt, headers[fmt])
                for i in range(args.repeats):
                    for fmt in FORMATS:
                        pair: tuple[SpeechFormat, SpeechFormat] = ("wav", fmt) if i % 2 == 0 else (fmt, "wav")
                        got = {f: timed(http, f, headers[f]) for f in pair}
                        for f, (t_first, t_sound, t_last, size) in got.items():
                            first[f].append(t_first)
                            sound[f].append(t_sound)
                            last[f].append(t_last)
                            sizes[f] = size
                        ratio_first[fmt].append(got[fmt][0] / got["wav"][0])
                        ratio_sound[fmt].append(got[fmt][1] / got["wav"][1])
                        ratio_last[fmt].append(got[fmt][2] / got["wav"][2])
        finally:
            svc.stop()
    report = {
        "machine": machine_before,
        "load_average_after": machine().rsplit("load average ", 1)[1],
        "text_chars": len(TEXT),
        "repeats": args.repeats,
        "first_byte_s": {f: spread(v) for f, v in first.items()},
        "first_sound_s": {f: spread(v) for f, v in sound.items()},
        "last_byte_s": {f: spread(v) for f, v in last.items()},
        "first_byte_ratio_vs_wav": {f: spread(v) for f, v in ratio_first.items()},
        "first_sound_ratio_vs_wav": {f: spread(v) for f, v in ratio_sound.items()},
        "last_byte_ratio_vs_wav": {f: spread(v) for f, v in ratio_last.items()},
        "body_bytes": sizes,
        "header_bytes": headers,
        "goal_mp3_first_byte_ratio": GOAL_MP3,
        "goal_met": statistics.median(ratio_first["mp3"]) <= GOAL_MP3,
    }
    print(json.dumps(report, indent=1))
    for what in ("first_byte", "first_sound", "last_byte"):
        print(f"\n{what.replace('_', ' ')} vs wav ({args.repeats} rounds, ratio median [range]):")
        wav_ms = report[f"{what}_s"]["wav"]["median"] * 1000
        for f in FORMATS:
            r, t = report[f"{what}_ratio_vs_wav"][f], report[f"{what}_s"][f]
            print(
                f"  {f:5s} {r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]  "
                f"({t['median'] * 1000:.0f} ms vs wav {wav_ms:.0f} ms; {sizes[f]} bytes vs {sizes['wav']})"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
