"""pyttsx3, the offline speech library the product description names, on its `espeak` driver.

On Linux pyttsx3 drives libespeak-ng through ctypes. Its driver looks the library up by the
name `libespeak-ng.so.1`; we load espeak-ng 1.52 from espeakng-loader first (that is its
soname, so the dynamic loader hands pyttsx3 the copy already loaded) and point espeak-ng at
that package's voice data, so no system package is needed and Chinese is read right.

pyttsx3 is not safe to call concurrently (one engine per process, one global espeak state), so
the worker keeps one engine, runs one synthesis at a time under a lock, and gives up on one
that does not finish within `options.timeout_s` seconds. The library's state is per process, so
a TTS lane has either this backend or the `espeak` one, not both (the second is refused).

pyttsx3 2.99's espeak driver has three timing faults, worked around below. Two were seen here
under CPU load: its `runAndWait` can return before the speech it started has ended, and a new
engine applies its first property changes after it starts speaking. The third is in its source:
the samples that arrive with the end-of-message event are left out of the file it writes.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path
from typing import Any

import espeakng_loader

from ris.backends import BackendContext, BackendError
from ris.backends.tts_espeak import LANGUAGE_ALIASES, claim_library
from ris.config import ModelSpec
from ris.lanes.tts import AudioOutput, TTSBackend, TTSOutcome, TTSRequest, espeak_wpm

_DEFAULT_TIMEOUT_S = 30.0  # for one piece of text: the lane cuts text at 200 characters
_CANCEL_GRACE_S = 2.0  # how long a cancelled synthesis may take to stop
_PCM_CHUNK_BYTES = 32768  # about 0.7 s of 22,050 Hz audio per chunk sent to the server


def _load_engine() -> Any:
    """pyttsx3's espeak engine, bound to espeakng-loader's library and data."""
    if not sys.platform.startswith("linux"):
        # Elsewhere the driver loads espeak-ng by full paths of a system install, not ours.
        raise BackendError(
            "backend_unavailable",
            f"the pyttsx3 backend runs on Linux only (this is {sys.platform}); use the 'espeak' backend",
        )
    claim_library("pyttsx3")
    # RTLD_GLOBAL is not needed: the loader matches the driver's name against loaded sonames.
    ctypes.CDLL(espeakng_loader.get_library_path())
    # pyttsx3 initialises espeak-ng with no data path: espeak-ng then reads this variable.
    os.environ["ESPEAK_DATA_PATH"] = espeakng_loader.get_data_path()
    try:
        import pyttsx3
    except ImportError as e:
        raise BackendError(
            "backend_unavailable", f"pyttsx3 is not installed ({e}); pip install 'ris[tts]'"
        ) from e
    try:
        return pyttsx3.init("espeak")
    except (RuntimeError, OSError) as e:
        raise BackendError("backend_unavailable", f"pyttsx3 could not start espeak-ng: {e}") from e


class Pyttsx3TTS(TTSBackend):
    def __init__(self, spec: ModelSpec, ctx: BackendContext) -> None:
        timeout = spec.options.get("timeout_s", _DEFAULT_TIMEOUT_S)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise BackendError(
                "bad_model",
                f"pyttsx3 option timeout_s must be a positive number, got {timeout!r}",
            )
        self._timeout_s = float(timeout)
        self._engine = _load_engine()
        # pyttsx3's driver object, reached through its proxy: a cancel or a timeout ends its loop.
        self._driver = self._engine.proxy._driver
        from pyttsx3.drivers import _espeak

        self._espeak = _espeak
        self._lock = threading.Lock()
        self._wedged = False
        # Set by pyttsx3 when an utterance ends, once its WAV file is written.
        self._finished = threading.Event()
        self._engine.connect("finished-utterance", self._on_finished)
        # A new engine holds property changes in its command queue until its first run, and
        # that run applied them after the speech had started (seen: the first answer at the
        # default rate). One empty run settles it, so later changes apply at once, in order.
        self._engine.runAndWait()
        _espeak.Synchronize()
        # The data folder is the server's path: a worker on another machine (a Ray node) may be
        # the first to use it there.
        ctx.data_dir.mkdir(parents=True, exist_ok=True)
        self._folder = Path(tempfile.mkdtemp(prefix="pyttsx3-", dir=ctx.data_dir))
        self.sample_rate = 22050  # espeak-ng's only output rate; each WAV's header is checked
        self._select = self._list_voices()
        preferred = ["en-US", "zh-CN"]
        aliases = {tag for tag, name in LANGUAGE_ALIASES.items() if name in self._select}
        answers_to = set(self._select) | aliases
        self.voices = tuple(preferred + sorted(answers_to - {v.lower() for v in preferred}))

    def _list_voices(self) -> dict[str, str]:
        """Voice names ("cmn", from the id "sit/cmn") and the language each lists, mapped to the
        name that selects it (espeak-ng selects voices by name)."""
        select: dict[str, str] = {}
        listed = [
            (str(v.id).split("/")[-1].lower(), [str(lang).lower() for lang in (v.languages or [])])
            for v in self._engine.getProperty("voices")
        ]
        for name, _ in listed:
            select[name] = name
        for name, languages in listed:
            for lang in languages:
                select.setdefault(lang, name)
        return select

    def espeak_voice(self, voice: str | None) -> str:
        """The espeak-ng voice name for a request's `voice`."""
        tag = (voice or "en-US").lower().replace("_", "-")
        name = self._select.get(LANGUAGE_ALIASES.get(tag, tag))
        if name is None:
            raise BackendError("unknown_voice", f"voice {voice!r} is not known to pyttsx3's espeak-ng")
        return name

    def synthesize(self, req: TTSRequest, out: AudioOutput) -> TTSOutcome:
        name = self.espeak_voice(req.voice)
        # The worker runs one task at a time; the lock keeps that true for any future caller.
        if not self._lock.acquire(timeout=self._timeout_s):
            raise BackendError("synthesis_timeout", "pyttsx3 is busy with another synthesis")
        try:
            pcm = self._synthesize_locked(req.text, name, req.speed, out)
            if not pcm and not out.cancelled():
                # The driver, under CPU load, now and then ends an utterance before its first
                # sample (eight requests at once in CI: a Chinese one came back silent, 422
                # synthesis_empty): once more before the silence is taken for the text's own.
                pcm = self._synthesize_locked(req.text, name, req.speed, out)
        finally:
            self._lock.release()
        for start in range(0, len(pcm), _PCM_CHUNK_BYTES):
            out.emit(pcm[start : start + _PCM_CHUNK_BYTES])
        return TTSOutcome(sample_rate=self.sample_rate, samples=len(pcm) // 2, voice=name)

    def _synthesize_locked(self, text: str, name: str, speed: float, out: AudioOutput) -> bytes:
        if self._wedged:
            raise BackendError(
                "backend_unavailable",
                "pyttsx3 did not finish an earlier synthesis; restart the server to use it again",
            )
        path = self._folder / "speech.wav"
        path.unlink(missing_ok=True)
        engine = self._engine
        # Voice and rate straight to espeak-ng, not through pyttsx3's command queue: that queue
        # holds commands while its busy flag is up and applied them after the speech had started
        # (seen once in the full suite: a 1.5x request spoken at the previous request's 0.75x).
        # espeak-ng queues a rate change itself: Synchronize waits until it has applied.
        self._espeak.Synchronize()
        self._driver.setProperty("voice", name)
        self._driver.setProperty("rate", espeak_wpm(speed))
        self._espeak.Synchronize()
        engine.save_to_file(text, str(path))
        self._finished.clear()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                engine.runAndWait()
            except BaseException as e:  # noqa: BLE001 - reported on the worker's thread
                failure.append(e)

        # The driver prints "Audio saved to ..." from espeak-ng's thread for every file; the
        # worker's log needs none of it (stdout is swapped process-wide while this runs).
        with contextlib.redirect_stdout(io.StringIO()):
            thread = threading.Thread(target=run, name="pyttsx3", daemon=True)
            thread.start()
            # Not runAndWait's return: when its command queue was not empty, pyttsx3's loop ends
            # before the synthesis it started does (seen here under load: no file, or half of
            # it). Its end-of-utterance event comes once the WAV is written.
            outcome = self._wait_for_end(out)
            if outcome != "finished":
                self._espeak.Cancel()
                self._driver.endLoop()
            thread.join(_CANCEL_GRACE_S)
            # The callback that announced the end may still hold its last samples, which the
            # driver adds to its buffer after writing the file: wait for it to return.
            self._espeak.Synchronize()
        if thread.is_alive():
            self._wedged = True
        if outcome == "timeout":
            raise BackendError(
                "synthesis_timeout",
                f"pyttsx3 did not finish within {self._timeout_s:g} s (options.timeout_s)",
            )
        if outcome == "cancelled":
            return b""
        if failure:
            raise BackendError("synthesis_failed", f"pyttsx3 failed: {failure[0]}")
        if not path.exists():
            raise BackendError("synthesis_failed", "pyttsx3 finished without writing its audio file")
        with wave.open(str(path), "rb") as wav:
            shape = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate())
            if shape != (1, 2, self.sample_rate):
                raise BackendError(
                    "synthesis_failed",
                    f"pyttsx3 wrote (channels, bytes per sample, rate) {shape}, "
                    f"not 16-bit mono at {self.sample_rate} Hz",
                )
            frames = wav.readframes(wav.getnframes())
        # pyttsx3 2.99 writes the file on the end-of-message event before adding the samples
        # that came with that event; they are left in its buffer until the next synthesis.
        return frames + bytes(self._driver._data_buffer)

    def _on_finished(self, **_details: Any) -> None:
        self._finished.set()

    def _wait_for_end(self, out: AudioOutput) -> str:
        """Wait for the end of the utterance: "finished", "cancelled" or "timeout"."""
        deadline = time.monotonic() + self._timeout_s
        while not self._finished.wait(0.05):
            if out.cancelled():
                return "cancelled"
            if time.monotonic() > deadline:
                return "timeout"
        return "finished"

    def close(self) -> None:
        for path in self._folder.glob("*"):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._folder.rmdir()
