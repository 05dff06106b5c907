"""The async SDK (`ris.AsyncClient`): text, speech and an image asked for at the same time.

    python examples/async_sdk.py [--url http://127.0.0.1:8080] [--out-dir .]

Each lane is its own worker process on its own cores (or GPU), so the three run side by side:
the LLM answer and the speech come back while the image is still rendering. Timings printed are
this run's, on this machine.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from _common import api_key, parser, run_script

from ris import AsyncClient, RISError


async def run(url: str, out_dir: Path) -> None:
    started = time.monotonic()

    def stamp(what: str) -> None:
        print(f"{time.monotonic() - started:6.2f} s  {what}")

    async with AsyncClient(url, api_key=api_key(), timeout=300) as client:

        async def chat() -> None:
            pieces = [
                piece async for piece in client.generate_stream("Name a colour of the sky.", max_tokens=24)
            ]
            stamp(f"LLM: {''.join(pieces).strip()!r}")

        async def speech() -> None:
            result = await client.synthesize(
                "Speech runs on its own cores.", voice="en-US", path=out_dir / "async_speech.wav"
            )
            stamp(f"TTS: {result.duration_s:.2f} s of audio from {result.model}")

        async def image() -> None:
            png = await client.image(
                "a paper boat on a pond", width=128, height=128, steps=4, path=out_dir / "async_image.png"
            )
            stamp(f"image: {len(png)} bytes of PNG")

        await asyncio.gather(chat(), speech(), image())


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--out-dir", type=Path, default=Path("."))
    args = p.parse_args()
    try:
        asyncio.run(run(args.url, args.out_dir))
    except RISError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    run_script(main)
