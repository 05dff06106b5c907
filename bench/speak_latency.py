"""Time to first audio: the speaking pipeline vs LLM-then-TTS done one after the other.

Same prompt, same seed, same real service and default models, in one run, alternating the two
ways R times. Sequential = the whole answer from /api/llm/generate, then /v1/audio/speech of
it (streamed, so its first chunk counts); pipeline = /api/chat/speak. Prints medians and the
ratio sequential / pipeline (how many times sooner the first sound comes).

    python bench/speak_latency.py [--repeats 5] [--config config.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ris.launch import ServiceProcess

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "user", "content": "Tell me a short story about a lighthouse keeper and a storm."}]


def first_audio_pipeline(http: httpx.Client, body: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    first = None
    with http.stream("POST", "/api/chat/speak", json={**body, "audio_format": "pcm"}) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes():  # read to the end, so runs do not overlap
            if chunk and first is None:
                first = time.perf_counter() - t0
    assert first is not None, "no audio"
    return first


def first_audio_sequential(http: httpx.Client, body: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    gen = http.post(
        "/api/llm/generate", json={k: body[k] for k in ("messages", "max_tokens", "seed", "temperature")}
    )
    gen.raise_for_status()
    text = gen.json()["text"]
    with http.stream(
        "POST",
        "/v1/audio/speech",
        json={"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"},
    ) as r:
        r.raise_for_status()
        first = None
        for chunk in r.iter_bytes():
            if chunk and first is None:
                first = time.perf_counter() - t0
    assert first is not None, "no audio"
    return first


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=120)
    p.add_argument("--config", default=str(ROOT / "config.json"))
    p.add_argument("--out", default=str(ROOT / "bench/results/speak_latency.json"))
    args = p.parse_args()
    cfg = json.loads(Path(args.config).read_text())
    body = {"messages": MESSAGES, "max_tokens": args.max_tokens, "seed": 7, "temperature": 0.0}
    with tempfile.TemporaryDirectory(prefix="ris-speak-") as tmp:
        cfg = {**cfg, "data_dir": str(Path(tmp) / "data"), "server": {"port": 0}}
        svc = ServiceProcess(Path(tmp), cfg).start()
        try:
            with httpx.Client(base_url=svc.url, timeout=600) as http:
                first_audio_pipeline(http, body)  # warm-up
                pipe, seq = [], []
                for i in range(args.repeats):
                    order = (first_audio_pipeline, first_audio_sequential)
                    for fn in order if i % 2 == 0 else order[::-1]:
                        (pipe if fn is first_audio_pipeline else seq).append(fn(http, body))
        finally:
            svc.stop()
    row = {
        "pipeline_first_audio_s_p50": statistics.median(pipe),
        "sequential_first_audio_s_p50": statistics.median(seq),
        "ratio_sequential_over_pipeline": statistics.median(seq) / statistics.median(pipe),
        "pipeline_s": pipe,
        "sequential_s": seq,
        "repeats": args.repeats,
        "max_tokens": args.max_tokens,
    }
    print(json.dumps(row, indent=1))
    print(
        f"\nfirst audio: pipeline {row['pipeline_first_audio_s_p50']:.2f} s, sequential "
        f"{row['sequential_first_audio_s_p50']:.2f} s -> {row['ratio_sequential_over_pipeline']:.1f}x sooner"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
