"""Test-only: an image backend that holds the image lane for as long as a test needs.

A task prompted "hold" runs until it is cancelled, and only then ends (as cancelled); any other
prompt is a plain grey picture made at once. So a test can keep tasks queued behind a running
one, and move them on one at a time, with no timing in it (tests/integration/test_image.py).
config.json loads it with `"plugins": ["ris_hold"]`: `"models": {"held": {"backend": "hold"}}`.
"""

from __future__ import annotations

import struct
import time
import zlib

from ris.lanes import image
from ris.lanes.image import GeneratedImage, ImageBackend, ImageRequest, ImageRun


def grey_png(width: int, height: int) -> bytes:
    """A valid PNG of the size asked for, every pixel mid grey."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))  # each row: filter 0, pixels
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class HoldingImage(ImageBackend):
    def generate(self, req: ImageRequest, run: ImageRun) -> GeneratedImage:
        while req.prompt == "hold":
            run.checkpoint()  # raises Cancelled once the task is cancelled: the only way out
            time.sleep(0.01)
        run.step(1, 1)
        return GeneratedImage(grey_png(req.width, req.height), req.width, req.height, 1, req.seed or 0)


# The one registration: the image lane now accepts "backend": "hold".
image.LANE.register_backend("hold", f"{__name__}:HoldingImage")
