"""Recipe: a new TTS engine. One backend file, one registration (docs/DEVELOPER_GUIDE.md).

A test-only engine that speaks every character as a 100 ms tone, so its output is exactly
predictable. config.json loads it with `"plugins": ["ris_tone"]` and names it as a model's
backend: `"models": {"beep": {"backend": "tone"}}`.
"""

from __future__ import annotations

import math
import struct

from ris.lanes import tts
from ris.lanes.tts import AudioOutput, TTSBackend, TTSOutcome, TTSRequest

RATE = 16_000
SAMPLES_PER_CHAR = RATE // 10


class ToneTTS(TTSBackend):
    sample_rate = RATE
    voices = ("tone", "en-US")

    def synthesize(self, req: TTSRequest, out: AudioOutput) -> TTSOutcome:
        samples = 0
        for ch in req.text:
            if out.cancelled():
                break
            freq = 200 + 10 * (ord(ch) % 64)
            pcm = b"".join(
                struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * (samples + n) / RATE)))
                for n in range(SAMPLES_PER_CHAR)
            )
            out.emit(pcm)
            samples += SAMPLES_PER_CHAR
        return TTSOutcome(sample_rate=RATE, samples=samples, voice=self.voices[0])


# The one registration: the TTS lane now accepts "backend": "tone".
tts.LANE.register_backend("tone", f"{__name__}:ToneTTS")
