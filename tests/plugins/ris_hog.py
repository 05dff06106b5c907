"""Test-only: a backend for the echo lane whose memory grows on request, to exercise the
worker memory ceiling (LaneConfig.memory_limit_mb) in a real worker process.

`{"text": "grow", "times": N}` holds N more blocks of 10 MiB, one every 0.1 s (the watchdog's
case); `{"text": "spike"}` asks for 4 GiB at once (the OS limit's case); any other text echoes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ris_echo import LANE, EchoBackend, EchoOutcome, EchoRequest

BLOCK = 10 * 2**20


class MemoryHog(EchoBackend):
    def echo(
        self, req: EchoRequest, emit: Callable[[str], None], cancelled: Callable[[], bool]
    ) -> EchoOutcome:
        held: list[bytes] = []
        if req.text == "spike":
            held.append(b"x" * (4 * 2**30))
        elif req.text == "grow":
            for i in range(req.times):
                held.append(bytes([i % 251]) * BLOCK)  # written, so resident
                emit(f"{len(held) * BLOCK >> 20} MiB")
                time.sleep(0.1)
        else:
            emit(req.text)
        return EchoOutcome(parts=len(held))


LANE.register_backend("hog", f"{__name__}:MemoryHog")
