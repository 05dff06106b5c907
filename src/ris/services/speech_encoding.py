"""Speech in OpenAI's response formats (mp3, opus, aac, flac, wav, pcm), encoded piece by piece
as the PCM arrives, through PyAV (FFmpeg's encoders and muxers): nothing waits for the whole
answer, and each piece's bytes are handed on as soon as the muxer writes them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import anyio.to_thread
import numpy as np

from ris.lanes.tts_audio import WAV_HEADER_BYTES, wav_header

if TYPE_CHECKING:
    import av

# PyAV (FFmpeg, a 34 MB wheel) is imported where it is used, not with the API, so the server
# starts without it; `preload` imports it beside the event loop at start, so the first mp3
# request does not stall the loop for the import (a tenth of a second).


def preload() -> None:
    """Import PyAV now (from a thread at the server's start); absent, the formats that need it
    fail when asked for, not the server."""
    try:
        import av  # noqa: F401
    except ImportError:
        pass


SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
SPEECH_FORMATS: tuple[SpeechFormat, ...] = get_args(SpeechFormat)


@dataclass(frozen=True)
class _Codec:
    media_type: str
    container: str  # FFmpeg's muxer
    codec: str  # FFmpeg's encoder
    bit_rate: int
    options: dict[str, str]


# OpenAI's content types. Opus comes in an Ogg container (RFC 7845: audio/ogg); aac as ADTS
# frames, which a player can start on from any frame (no index at the end, unlike MP4).
# Bit rates suit mono speech. The Ogg muxer holds packets until a page is a second long by
# default: a tenth of a second puts the first sound on the wire early.
_CODECS: dict[SpeechFormat, _Codec] = {
    "mp3": _Codec("audio/mpeg", "mp3", "libmp3lame", 64_000, {}),
    "opus": _Codec("audio/ogg", "ogg", "libopus", 32_000, {"page_duration": "100000"}),
    "aac": _Codec("audio/aac", "adts", "aac", 64_000, {}),
    "flac": _Codec("audio/flac", "flac", "flac", 0, {}),
}
MEDIA_TYPES: dict[SpeechFormat, str] = {
    **{f: c.media_type for f, c in _CODECS.items()},
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}

# What one call into the encoder takes: about 0.37 s of 22 kHz speech, a few milliseconds of
# encoding, so the bytes of a long piece go out as they are made rather than all at its end.
ENCODE_SLICE_BYTES = 16 * 1024


class _Sink:
    """The muxer's output: a write-only file (so no muxer seeks back to patch a header) whose
    bytes are taken after every call, never accumulated."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def _encoder_rate(codec: str, rate: int) -> int:
    """The source rate when the encoder takes it, else the nearest rate above it that it
    takes (opus: 8, 12, 16, 24 or 48 kHz), else its highest."""
    import av

    rates = av.codec.Codec(codec, "w").audio_rates
    if not rates or rate in rates:
        return rate
    above = [r for r in rates if r > rate]
    return min(above) if above else max(rates)


def stream_rate(fmt: SpeechFormat, rate: int, pcm_rate: int | None = None) -> int:
    """The sample rate of `fmt`'s stream made from `rate` PCM (opus resamples 22.05 kHz to 24;
    pcm is resampled to `pcm_rate` where one is asked for)."""
    if fmt == "pcm" and pcm_rate is not None:
        return pcm_rate
    codec = _CODECS.get(fmt)
    return rate if codec is None else _encoder_rate(codec.codec, rate)


class SpeechEncoder:
    """16-bit mono PCM in, a format's bytes out, incrementally. Not thread-safe: one caller at
    a time (the stream calls it from a worker thread, one piece after the other).

    `start()` returns the container's header, `encode(pcm)` what the muxer wrote for that PCM
    (possibly b"": encoders hold a frame or two), `finish()` the rest and the trailer.
    wav and pcm pass the PCM through (wav behind a header of unknown length); pcm is resampled
    to `pcm_rate` where it is given and differs (OpenAI's pcm is 24 kHz, and its clients play
    it at that rate: 22.05 kHz speech played 9% fast and high)."""

    def __init__(self, fmt: SpeechFormat, sample_rate: int, pcm_rate: int | None = None) -> None:
        if fmt not in SPEECH_FORMATS:
            raise ValueError(f"format {fmt!r}: one of {', '.join(SPEECH_FORMATS)}")
        self.format = fmt
        self.sample_rate = sample_rate
        self.media_type = MEDIA_TYPES[fmt]
        self._sink = _Sink()
        self._container: av.container.OutputContainer | None = None
        self._stream: av.audio.stream.AudioStream | None = None
        self._resampler: av.AudioResampler | None = None
        self._closed = False
        self._pcm_rate = pcm_rate if fmt == "pcm" and pcm_rate not in (None, sample_rate) else None

    @property
    def passthrough(self) -> bool:
        """wav and pcm at its own rate: no encoding work, nothing worth a thread."""
        return self.format == "wav" or (self.format == "pcm" and self._pcm_rate is None)

    def start(self) -> bytes:
        if self.format == "wav":
            return wav_header(self.sample_rate)
        if self.format == "pcm":
            if self._pcm_rate is not None:
                import av

                self._resampler = av.AudioResampler(
                    format="s16", layout="mono", rate=self._pcm_rate, threads=1
                )
            return b""
        import av

        spec = _CODECS[self.format]
        # flush_packets: the muxer hands each packet to the sink at once, not when its
        # 32 KiB I/O buffer fills (seconds of compressed speech).
        options = {"flush_packets": "1", **spec.options}
        container = av.open(self._sink, mode="w", format=spec.container, options=options)
        rate = _encoder_rate(spec.codec, self.sample_rate)
        stream = container.add_stream(spec.codec, rate=rate, layout="mono")
        assert isinstance(stream, av.audio.stream.AudioStream)  # an audio codec's stream
        if spec.bit_rate:
            stream.bit_rate = spec.bit_rate
        fmt = stream.codec_context.format.name
        # One thread: resampling mono speech is microseconds of work a piece, and the filter
        # graph's own pool (2-4 threads by default) outlived close() under PyAV 18.1.1, its
        # graph kept by a reference cycle until a garbage collection.
        self._resampler = av.AudioResampler(format=fmt, layout="mono", rate=rate, threads=1)
        self._container, self._stream = container, stream
        container.start_encoding()  # the header, written now: the first bytes need no audio
        return self._sink.take()

    def encode(self, pcm: bytes) -> bytes:
        if self.passthrough:
            return pcm
        samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").reshape(1, -1)
        if samples.shape[1] == 0:
            return b""
        import av

        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        if self._pcm_rate is not None:
            return self._resampled(frame)
        self._push(frame)
        return self._sink.take()

    def _resampled(self, frame: av.AudioFrame | None) -> bytes:
        assert self._resampler is not None
        return b"".join(f.to_ndarray().astype("<i2").tobytes() for f in self._resampler.resample(frame))

    def finish(self) -> bytes:
        """The samples the encoder still holds, then the container's end; the encoder closes."""
        if self.passthrough or self._closed:
            return b""
        if self._pcm_rate is not None:
            rest = self._resampled(None)
            self.close()
            return rest
        self._push(None)
        self.close()
        return self._sink.take()

    def close(self) -> None:
        """Release FFmpeg's state (the stream ended early: a client left) now: a stream cut off
        by its client kept its encoder, and the threads it then had, until a garbage collection
        (81 threads in the API process in a soak with disconnects). Idempotent."""
        if self._container is not None and not self._closed:
            self._container.close()
        self._closed = True
        self._container = self._stream = self._resampler = None

    def _push(self, frame: av.AudioFrame | None) -> None:
        assert self._container is not None and self._stream is not None and self._resampler is not None
        frames = self._resampler.resample(frame)
        for f in frames:
            self._container.mux(self._stream.encode(f))
        if frame is None:  # the end: the resampler is drained, now the encoder
            self._container.mux(self._stream.encode(None))


async def encode_stream(
    pieces: AsyncIterator[bytes], fmt: SpeechFormat, sample_rate: int, pcm_rate: int | None = None
) -> AsyncIterator[bytes]:
    """`pieces` of PCM, re-encoded as they come. Encoding runs in a worker thread, a slice at a
    time (the event loop only moves bytes); one piece is in hand at once, so a slow reader
    holds a piece and what the encoder made of it, not the answer."""
    encoder = SpeechEncoder(fmt, sample_rate, pcm_rate)
    try:
        header = encoder.start() if encoder.passthrough else await anyio.to_thread.run_sync(encoder.start)
        if header:
            yield header
        async for pcm in pieces:
            if encoder.passthrough:
                yield pcm
                continue
            for at in range(0, len(pcm), ENCODE_SLICE_BYTES):
                out = await anyio.to_thread.run_sync(encoder.encode, pcm[at : at + ENCODE_SLICE_BYTES])
                if out:
                    yield out
        tail = await anyio.to_thread.run_sync(encoder.finish)
        if tail:
            yield tail
    finally:
        encoder.close()


async def wav_file_pcm(path: Path, piece_bytes: int) -> AsyncIterator[bytes]:
    """A finished task's WAV file (ris.lanes.tts_audio.AudioFile: a 44-byte header, then 16-bit mono
    PCM) as PCM pieces, each read in a worker thread. Opened once: a retention sweep that
    deletes the file meanwhile (its oldest files first: those old links fetch) does not cut
    the download short."""
    f = await anyio.to_thread.run_sync(path.open, "rb")
    try:
        await anyio.to_thread.run_sync(f.seek, WAV_HEADER_BYTES)
        while pcm := await anyio.to_thread.run_sync(f.read, piece_bytes):
            yield pcm
    finally:
        f.close()


async def encoded_file(wav: Path, fmt: SpeechFormat, sample_rate: int, piece_bytes: int) -> Path:
    """A finished task's WAV encoded in `fmt` once, as a file beside it (`<id>.mp3`: the
    retention sweep keeps and deletes it with its task, as the WAV), for a player that seeks
    (a browser's <audio> asks for byte ranges, which a stream encoded as it is read cannot
    answer: its length unknown, no seeking, Safari plays none). Written under a temporary name
    and moved into place, one encoding at a time per file: two players asking at once read the
    same one (an Ogg stream's serial differs between two encodings of the same audio, and a
    player's later ranges came from the other)."""
    target = wav.with_name(f"{wav.name.split('.', 1)[0]}.{fmt}")
    lock = _ENCODING.setdefault(target, asyncio.Lock())
    try:
        async with lock:
            return await _encode_once(wav, target, fmt, sample_rate, piece_bytes)
    finally:
        if not lock.locked() and _ENCODING.get(target) is lock:
            del _ENCODING[target]


# The encodings being written, by target: one at a time each (encoded_file).
_ENCODING: dict[Path, asyncio.Lock] = {}


async def _encode_once(
    wav: Path, target: Path, fmt: SpeechFormat, sample_rate: int, piece_bytes: int
) -> Path:
    with contextlib.suppress(FileNotFoundError):
        if target.stat().st_mtime >= wav.stat().st_mtime:
            return target
    part = target.with_name(f"{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        f = await anyio.to_thread.run_sync(part.open, "wb")
        try:
            async for data in encode_stream(wav_file_pcm(wav, piece_bytes), fmt, sample_rate):
                await anyio.to_thread.run_sync(f.write, data)
        finally:
            await anyio.to_thread.run_sync(f.close)
        await anyio.to_thread.run_sync(os.replace, part, target)
        if not wav.exists():  # its task deleted while this encoded it: not left behind
            target.unlink(missing_ok=True)
    finally:
        part.unlink(missing_ok=True)
    return target
