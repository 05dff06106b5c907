"""The speech encoder on synthetic PCM: every format decodes back (with FFmpeg, through PyAV) to
about the duration and the rate it was given, bytes come out while the input is still arriving,
and the streamed form holds one piece at a time."""

from __future__ import annotations

import asyncio
import io
import multiprocessing as mp
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from ris.lanes.tts_audio import wav_header
from ris.services.speech_encoding import (
    MEDIA_TYPES,
    SPEECH_FORMATS,
    SpeechEncoder,
    SpeechFormat,
    encode_stream,
    wav_file_pcm,
)

RATE = 22050  # the default voices' rate (Piper, espeak-ng)
COMPRESSED: tuple[SpeechFormat, ...] = ("mp3", "opus", "aac", "flac")
# Encoders pad to whole frames and lead in (LAME's delay, Opus's pre-skip): decoded audio is
# longer by up to about three MP3 frames.
SLACK_SAMPLES = 3 * 1152


def slack(rate: int = RATE) -> float:
    return SLACK_SAMPLES / rate


def tone(seconds: float, rate: int = RATE) -> bytes:
    """A 440 Hz tone with a rising amplitude, as 16-bit mono PCM."""
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 440 * t) * 6000 * (0.5 + t / seconds / 2)).astype("<i2").tobytes()


def decoded(data: bytes) -> tuple[float, int, np.ndarray]:
    """Seconds, sample rate and samples of an encoded file, decoded by FFmpeg."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        chunks = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
    samples = np.concatenate(chunks)
    return len(samples) / rate, rate, samples


def encode_all(fmt: SpeechFormat, pcm: bytes, piece: int = 4096, rate: int = RATE) -> list[bytes]:
    encoder = SpeechEncoder(fmt, rate)
    out = [encoder.start()]
    out += [encoder.encode(pcm[i : i + piece]) for i in range(0, len(pcm), piece)]
    out.append(encoder.finish())
    return out


@pytest.mark.parametrize("fmt", COMPRESSED)
def test_each_format_decodes_to_the_duration_it_was_given(fmt: SpeechFormat) -> None:
    seconds, rate, samples = decoded(b"".join(encode_all(fmt, tone(2.0))))
    assert abs(seconds - 2.0) < slack(), seconds
    assert rate == (48000 if fmt == "opus" else RATE)  # Opus decoders always give 48 kHz
    assert float(np.abs(samples.astype(np.float64)).max()) > 0.05 * (
        32768 if samples.dtype.kind == "i" else 1
    )


def test_flac_is_lossless() -> None:
    pcm = tone(1.0)
    _, _, samples = decoded(b"".join(encode_all("flac", pcm)))
    assert samples.astype("<i2").tobytes() == pcm


@pytest.mark.parametrize("fmt", COMPRESSED)
def test_bytes_come_out_before_the_input_ends(fmt: SpeechFormat) -> None:
    """The stream's first sound goes out with the first pieces, not at finish()."""
    parts = encode_all(fmt, tone(3.0))
    header, body = parts[0], parts[1:-1]
    assert bool(header) == (fmt != "aac")  # a container's header before any audio (ADTS has none)
    assert sum(map(len, body[: len(body) // 2])) > 0
    assert sum(map(len, body)) > len(parts[-1])  # most of it before the end, not held for finish()


def test_wav_and_pcm_pass_the_samples_through() -> None:
    pcm = tone(0.5)
    assert b"".join(encode_all("pcm", pcm)) == pcm
    wav = b"".join(encode_all("wav", pcm))
    assert wav[:44] == wav_header(RATE) and wav[44:] == pcm  # a header of unknown length


def test_every_format_has_openais_content_type() -> None:
    assert MEDIA_TYPES == {
        "mp3": "audio/mpeg",
        "opus": "audio/ogg",
        "aac": "audio/aac",
        "flac": "audio/flac",
        "wav": "audio/wav",
        "pcm": "audio/pcm",
    }
    assert SPEECH_FORMATS[0] == "mp3"  # OpenAI's default, first in every listing


def test_an_unknown_format_names_the_ones_there_are() -> None:
    with pytest.raises(ValueError, match="mp3, opus, aac, flac, wav, pcm"):
        SpeechEncoder("ogg", RATE)  # type: ignore[arg-type]  # what a caller might send


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_other_voice_rates(rate: int) -> None:
    for fmt in COMPRESSED:
        seconds, _, _ = decoded(b"".join(encode_all(fmt, tone(1.0, rate), rate=rate)))
        assert abs(seconds - 1.0) < slack(rate), (fmt, rate, seconds)


def test_a_closed_encoder_stays_closed() -> None:
    encoder = SpeechEncoder("mp3", RATE)
    encoder.start()
    encoder.encode(tone(0.2))
    encoder.close()  # a client left
    encoder.close()
    assert encoder.finish() == b""


def _threads_left_after_closing() -> tuple[int, int]:
    """(threads before, threads after) encoders of every format were used and closed."""
    before = len(os.listdir("/proc/self/task"))
    held = []
    for fmt in (*COMPRESSED, "pcm"):
        encoder = SpeechEncoder(fmt, RATE, pcm_rate=24000)
        encoder.start()
        encoder.encode(tone(0.2))
        encoder.close()
        held.append(encoder)  # still referenced, as a cut-off stream's generator holds it
    # A thread may take a moment to be gone from /proc after its join.
    deadline = time.monotonic() + 2.0
    while len(os.listdir("/proc/self/task")) > before and time.monotonic() < deadline:
        time.sleep(0.02)
    return before, len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_a_closed_encoder_lets_go_of_ffmpegs_threads_at_once() -> None:
    """A stream its client cut off kept its encoder, and FFmpeg's 2-4 threads with it, until a
    garbage collection: 81 threads in the API process during a soak with disconnects; under
    PyAV 18.1.1 the resampler's filter graph kept its pool past close() (10 threads where there had been 2).
    Counted in a process of its own: in the suite's, other tests' threads came and went."""
    with mp.get_context("spawn").Pool(1) as pool:
        before, after = pool.apply(_threads_left_after_closing)
    assert after <= before, (before, after)


def test_the_stream_takes_one_piece_at_a_time(tmp_path: Path) -> None:
    """encode_stream asks for the next piece only once the bytes of the last one are taken: a
    reader that stops stops the reading of the file behind it."""
    pcm = tone(2.0)
    path = tmp_path / "speech.wav"
    path.write_bytes(wav_header(RATE, len(pcm)) + pcm)
    asked: list[int] = []

    async def pieces() -> AsyncIterator[bytes]:
        async for piece in wav_file_pcm(path, 8192):
            asked.append(len(piece))
            yield piece

    async def main() -> bytes:
        stream = encode_stream(pieces(), "mp3", RATE)
        out = [await anext(stream)]  # the header, before any PCM is read
        assert asked == []
        while len(asked) < 2:
            out.append(await anext(stream))
        assert len(asked) == 2  # not the whole file ahead of the reader
        out += [b async for b in stream]
        return b"".join(out)

    seconds, _, _ = decoded(asyncio.run(main()))
    assert sum(asked) == len(pcm) and abs(seconds - 2.0) < slack()


def test_a_file_deleted_while_it_is_sent_is_sent_whole(tmp_path: Path) -> None:
    """A retention sweep deletes the oldest files first, those an old link fetches: the
    download that began goes on to its end (on POSIX an open file outlives its name)."""
    pcm = tone(1.0)
    path = tmp_path / "speech.wav"
    path.write_bytes(wav_header(RATE, len(pcm)) + pcm)

    async def main() -> bytes:
        got = []
        async for piece in wav_file_pcm(path, 8192):
            got.append(piece)
            path.unlink(missing_ok=True)  # swept after the first piece
        return b"".join(got)

    assert asyncio.run(main()) == pcm


def test_pcm_resampled_to_the_rate_asked_keeps_its_length() -> None:
    """OpenAI's pcm is 24 kHz: the voice's 22.05 kHz, passed through, played 9% fast."""
    from ris.services.speech_encoding import SpeechEncoder, stream_rate

    pcm = tone(1.0)  # at RATE
    encoder = SpeechEncoder("pcm", RATE, 24000)
    assert not encoder.passthrough and encoder.start() == b""
    out = encoder.encode(pcm[: len(pcm) // 2]) + encoder.encode(pcm[len(pcm) // 2 :]) + encoder.finish()
    assert abs(len(out) / 2 - 24000) < 50 and stream_rate("pcm", RATE, 24000) == 24000
    assert SpeechEncoder("pcm", 24000, 24000).passthrough and stream_rate("pcm", RATE) == RATE


def test_an_encoded_file_is_made_once_beside_its_wav_and_goes_with_its_task(tmp_path: Path) -> None:
    """A browser's <audio> asks for ranges of audio_url?format=mp3: the encoding is kept as a
    file beside the WAV, named for its task (the retention sweep counts and deletes it with
    the task's WAV), made again only if the WAV is newer."""
    import os

    from ris.runtime.retention import RESULT_NAME
    from ris.services.speech_encoding import encoded_file

    pcm = tone(1.0)
    wav = tmp_path / ("a" * 32 + ".wav")
    wav.write_bytes(wav_header(RATE, len(pcm)) + pcm)
    made = asyncio.run(encoded_file(wav, "mp3", RATE, 8192))
    assert made.name == "a" * 32 + ".mp3" and RESULT_NAME.match(made.name)
    assert abs(decoded(made.read_bytes())[0] - 1.0) < slack() + 0.05
    assert sorted(p.name for p in tmp_path.iterdir()) == [made.name, wav.name]  # no temporary left
    os.utime(made, (1, 1))  # older than its WAV: made again
    again = asyncio.run(encoded_file(wav, "mp3", RATE, 8192))
    assert again.stat().st_mtime > 1
    stamp = again.stat().st_mtime_ns
    assert asyncio.run(encoded_file(wav, "mp3", RATE, 8192)).stat().st_mtime_ns == stamp  # kept


def test_players_asking_at_once_get_one_encoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tabs opened audio_url?format=opus together: each encoded the WAV and replaced the
    file, and two Ogg encodings differ (their serials), so a player's later ranges came from
    the other. One encoding per file at a time; the second asker reads the first's."""
    from ris.services import speech_encoding
    from ris.services.speech_encoding import encoded_file

    pcm = tone(0.5)
    wav = tmp_path / ("b" * 32 + ".wav")
    wav.write_bytes(wav_header(RATE, len(pcm)) + pcm)
    calls = []
    real = speech_encoding.encode_stream

    def counted(*args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(speech_encoding, "encode_stream", counted)

    async def both() -> list[Path]:
        return list(await asyncio.gather(*(encoded_file(wav, "opus", RATE, 4096) for _ in range(3))))

    made = asyncio.run(both())
    assert len(set(made)) == 1 and calls == ["opus"], calls
    assert not speech_encoding._ENCODING  # noqa: SLF001 - no lock left behind
