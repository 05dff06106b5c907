"""Does Piper speak at the speed asked? The shipped backend (the voice at its own pace, then
FFmpeg's atempo to the factor asked: ris.backends.tempo) against what it did before (the
voice's length_scale divided by the speed), side by side in one process, the voice of
config.json's TTS lane, one sentence, `--n` syntheses per speed and way, taking turns. The pace
is the length at speed 1 over the length at the speed asked (1.0 = as asked); Piper's own
durations vary by about 5% between runs of one sentence.

    python bench/piper_speed.py [--n 5] [--out bench/results/piper_speed.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from piper import SynthesisConfig

from ris.backends import BackendContext
from ris.backends.tts_piper import MAX_PHONEMES, PiperTTS, phoneme_pieces, voice_length_scale
from ris.benchmark.run import machine_summary
from ris.lanes.tts import LANE, AudioOutput, TTSRequest

ROOT = Path(__file__).resolve().parents[1]
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the quiet forest."
SPEEDS = (0.5, 0.75, 1.25, 1.5, 2.0, 3.0, 4.0)


class Count(AudioOutput):
    def __init__(self) -> None:
        self.samples = 0

    def emit(self, pcm: bytes) -> None:
        self.samples += len(pcm) // 2

    def cancelled(self) -> bool:
        return False


def shipped(piper: PiperTTS, speed: float) -> int:
    out = Count()
    piper.synthesize(TTSRequest(text=TEXT, speed=speed), out)
    return out.samples


def length_scale(piper: PiperTTS, speed: float) -> int:
    """The way before: the voice's own length_scale / speed, nothing retimed."""
    syn = SynthesisConfig(length_scale=voice_length_scale(piper._config.length_scale) / speed)
    return sum(
        len(piper._spoken(p, syn)) // 2
        for sentence in piper._voice.phonemize(TEXT)
        for p in phoneme_pieces(sentence, MAX_PHONEMES)
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench/results/piper_speed.json"))
    args = p.parse_args()
    spec = LANE.embedded_models["piper"]
    piper = PiperTTS(spec, BackendContext("cpu", 1, Path("/tmp/ris-piper-speed")))
    ways = {"atempo (shipped)": shipped, "length_scale (before)": length_scale}
    own = statistics.median(shipped(piper, 1.0) for _ in range(args.n))
    paces: dict[str, dict[float, list[float]]] = {w: {s: [] for s in SPEEDS} for w in ways}
    for i in range(args.n):
        for speed in SPEEDS:
            for way in sorted(ways, reverse=bool(i % 2)):  # taking turns which goes first
                paces[way][speed].append(own / ways[way](piper, speed))
    row: dict[str, Any] = {
        "benchmark": "piper_speed",
        "machine": machine_summary(),
        "n": args.n,
        "text": TEXT,
    }
    for way, by_speed in paces.items():
        row[way] = {
            str(s): {
                "median": round(statistics.median(v), 3),
                "min": round(min(v), 3),
                "max": round(max(v), 3),
            }
            for s, v in by_speed.items()
        }
        print(way, {s: row[way][str(s)]["median"] for s in SPEEDS})
    Path(args.out).write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
