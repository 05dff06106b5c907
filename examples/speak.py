"""The speaking pipeline: ask the LLM a question and hear the answer, saved as a WAV file.

    python examples/speak.py [--url http://127.0.0.1:8080] [--prompt TEXT] [--out answer.wav]

`POST /api/chat/speak` streams a WAV while the answer is still being written: each sentence goes
to the TTS lane as soon as the LLM finishes it, so the first sound comes long before the last
word. A streamed WAV cannot know its length up front, so its header says "unknown" (the
largest size); this script writes the real sizes once the stream has ended.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import httpx
from _common import fail, headers, parser, run_script


def fix_wav_sizes(path: Path) -> None:
    """Write the real RIFF and data sizes into a WAV streamed with an open-ended header."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        head = f.read(44)
        if head[:4] != b"RIFF" or head[36:40] != b"data":
            raise SystemExit(f"error: {path} is not the 44-byte-header WAV the server streams")
        f.seek(4)
        f.write(struct.pack("<I", size - 8))
        f.seek(40)
        f.write(struct.pack("<I", size - 44))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--prompt", default="Say hello and tell me one fact about the sea.")
    p.add_argument("--voice", default="en-US")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("answer.wav"))
    args = p.parse_args()
    request = {
        # Chat turns go through the model's chat template: an instruct model answers them.
        "messages": [
            {"role": "system", "content": "You are a friendly assistant. Answer in two short sentences."},
            {"role": "user", "content": args.prompt},
        ],
        "voice": args.voice,
        "max_tokens": args.max_tokens,
    }
    started = time.monotonic()
    first_sound = None
    with httpx.stream(
        "POST", f"{args.url}/api/chat/speak", json=request, headers=headers(), timeout=600
    ) as resp:
        if resp.status_code != 200:
            resp.read()
            fail(resp)
        with args.out.open("wb") as f:
            for chunk in resp.iter_bytes():
                if first_sound is None and f.tell() + len(chunk) > 44:
                    first_sound = time.monotonic() - started
                f.write(chunk)
    fix_wav_sizes(args.out)
    rate = struct.unpack("<I", args.out.read_bytes()[24:28])[0]
    seconds = (args.out.stat().st_size - 44) / 2 / rate
    print(f"{args.out}: {seconds:.2f} s of speech at {rate} Hz; first sound after {first_sound or 0:.2f} s")


if __name__ == "__main__":
    run_script(main)
