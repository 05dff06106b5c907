"""Pieces shared by LLM backends: incremental detokenising and stop-string handling."""

from __future__ import annotations

import codecs
from collections.abc import Callable


class StopScanner:
    """Feeds decoded text through, holding back what might be the start of a stop string."""

    def __init__(self, stops: tuple[str, ...], emit: Callable[[str], None]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._emit = emit
        self._held = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stopped = False

    def feed_bytes(self, data: bytes) -> None:
        self.feed(self._decoder.decode(data))

    def feed(self, text: str) -> None:
        if self.stopped or not text:
            return
        buf = self._held + text
        # The earliest stop in the text, whichever of the stops it is (OpenAI's rule): with
        # ["END", "\n"] and "a\nbEND", the answer ends at the newline.
        found = [at for at in (buf.find(stop) for stop in self._stops) if at >= 0]
        if found:
            at = min(found)
            self._held = ""
            self.stopped = True
            if at:
                self._emit(buf[:at])
            return
        keep = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), 0, -1):
                if buf.endswith(stop[:n]):
                    keep = max(keep, n)
                    break
        self._held = buf[len(buf) - keep :] if keep else ""
        out = buf[: len(buf) - keep]
        if out:
            self._emit(out)

    def flush(self) -> None:
        """The end of the answer: what was held back goes out. The bytes of a character the
        answer stopped in the middle of (a token limit cutting a multi-byte character, as
        Chinese or emoji take) are dropped, not sent as U+FFFD."""
        self._decoder.reset()
        if not self.stopped:
            tail, self._held = self._held, ""
            if tail:
                self._emit(tail)
