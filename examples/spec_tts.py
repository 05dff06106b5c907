"""The product description's TTS example, verbatim, saving the speech as a WAV file.

    python examples/spec_tts.py [--url http://127.0.0.1:8080] [--out spec_tts.wav]

The server answers with the task's metadata and an `audio_url`; the WAV is fetched from there.
"zh-CN" is spoken by espeak-ng 1.52 in the default config.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from _common import fail, headers, parser, run_script


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, default=Path("spec_tts.wav"), help="where to write the WAV")
    args = p.parse_args()
    request = {"text": "这是一段测试文本", "voice": "zh-CN", "speed": 1.0}
    resp = httpx.post(f"{args.url}/api/tts/synthesize", json=request, headers=headers(), timeout=300)
    if resp.status_code != 200:
        fail(resp)
    speech = resp.json()
    audio = httpx.get(f"{args.url}{speech['audio_url']}", headers=headers(), timeout=60)
    if audio.status_code != 200:
        fail(audio)
    args.out.write_bytes(audio.content)
    print(
        f"{args.out}: {speech['duration_s']:.2f} s at {speech['sample_rate']} Hz, "
        f"model {speech['model']}, voice {speech['voice']}"
    )


if __name__ == "__main__":
    run_script(main)
