"""A TTS task's audio on the server: the PCM chunks its worker sends (AudioChunk), kept as
they arrive by the task's collector (AudioFile: in memory up to SPILL_BYTES, then in the task's
WAV file), and the events that say where each chunk lies (AudioWritten), read back by streams
at their own pace (AudioBuffer): a client that reads slowly, or not at all, holds at most
SPILL_BYTES of audio in the server's memory, and speech that is only streamed (a sentence, a
reply of seconds) never touches the disk."""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ris.lanes.base import Coalesces

# A task's audio held in memory before it goes to its file: 1 MiB is 24 s of 22.05 kHz speech
# (a spoken sentence is a few seconds). Bounds what a client that stops reading holds in the
# server; below it, streamed speech needs no disk (a full one included) and no file write for
# each chunk (the spill writes what was held at once, on the event loop, as the chunks' writes
# were: a megabyte to the page cache).
SPILL_BYTES = 1 << 20


@dataclass(frozen=True)
class AudioChunk:
    """16-bit little-endian mono PCM, streamed as it is synthesized."""

    pcm: bytes = field(repr=False)
    sample_rate: int = 0


class AudioBuffer:
    """A TTS task's WAV for its readers: its bytes in memory while they are few, then the file
    they were moved to, opened once: what they read stays readable after the file is deleted (a
    streamed result that is not kept goes as its task ends, while a slow reader is still
    behind), until the last reader lets go of it. A raw descriptor, closed when the last event
    and collector holding it are gone."""

    def __init__(self, head: bytes) -> None:
        self.memory: bytearray | None = bytearray(head)
        self.fd: int | None = None
        self.gone = False  # its task failed: what it wrote is not audio to hand out
        self._lock = threading.Lock()  # seek and read as one (readers may be threads)

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:  # `gone` read under the lock: a closed descriptor's number is reused
            if self.gone:
                return b""
            if self.fd is None:
                assert self.memory is not None
                return bytes(self.memory[offset : offset + size])
            os.lseek(self.fd, offset, os.SEEK_SET)
            return os.read(self.fd, size)

    def append(self, pcm: bytes) -> None:
        """More audio, while in memory."""
        with self._lock:
            assert self.memory is not None
            self.memory += pcm

    def moved_to(self, path: Path) -> None:
        """Its bytes are in `path` now (written and flushed): read from there, memory let go."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        with self._lock:
            self.fd, self.memory = fd, None

    def drop(self) -> None:
        """Its task failed: nothing more is read, and the descriptor is closed now. Left to
        the collector, a failed speech (a full disk) kept its deleted WAV open until a cycle
        collection ran, over a hundred requests later."""
        with self._lock:
            if not self.gone:
                self.gone = True
                self.memory = None
                if self.fd is not None:
                    os.close(self.fd)

    def __del__(self) -> None:
        if not getattr(self, "gone", True) and self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)


@dataclass(frozen=True, slots=True)
class AudioWritten(Coalesces):
    """What a TTS task's event stream carries for an AudioChunk: where the server wrote it."""

    path: Path
    offset: int
    length: int
    source: AudioBuffer | None = field(default=None, compare=False, repr=False)

    def followed_by(self, newer: object) -> AudioWritten | None:
        """One event for this chunk and the next, when it lies right after it in the file (an
        event stream's consumer that does not read holds one event however long the audio)."""
        if (
            isinstance(newer, AudioWritten)
            and newer.path == self.path
            and newer.offset == self.offset + self.length
        ):
            return AudioWritten(self.path, self.offset, self.length + newer.length, self.source)
        return None

    def read(self, start: int = 0, size: int | None = None) -> bytes:
        """The chunk's PCM (`size` bytes of it from `start`); b"" once its task failed and
        took the file along."""
        size = self.length - start if size is None else min(size, self.length - start)
        if self.source is not None:
            return self.source.read(self.offset + start, size)
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset + start)
                return f.read(size)
        except FileNotFoundError:
            return b""


WAV_HEADER_BYTES = 44


def wav_header(sample_rate: int, data_bytes: int = 0xFFFFFFFF - 36) -> bytes:
    """A 16-bit mono WAV header; the default sizes mark a stream of unknown length."""
    riff = min(0xFFFFFFFF, data_bytes + 36)
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


class AudioFile:
    """A TTS task's collector (a Collector): its WAV, under a header of unknown length that
    build_result makes exact, held in memory up to `spill_bytes`, then in its file, written
    chunk by chunk as the worker sends them. `keep=False` (Engine.submit's keep_files: only
    streamed): a WAV that stayed in memory is never written."""

    def __init__(self, path: Path, *, keep: bool = True, spill_bytes: int = SPILL_BYTES) -> None:
        self.outputs: list[Any] = []
        self.path = path
        self.keep = keep
        self._spill_bytes = spill_bytes
        self._file: IO[bytes] | None = None
        self._written = 0
        self._failed: OSError | None = None  # a write failed (disk full): no result
        self._buffer: AudioBuffer | None = None
        self._on_disk = False  # its file was made (release and discard delete it)

    def add(self, output: Any) -> Any:
        chunk: AudioChunk = output
        offset = WAV_HEADER_BYTES + self._written
        if self._failed is None:
            try:
                if self._buffer is None:
                    self._buffer = AudioBuffer(wav_header(chunk.sample_rate))
                if self._file is not None:
                    self._file.write(chunk.pcm)
                    self._file.flush()  # readers read the file: the bytes must be in it now
                elif offset + len(chunk.pcm) <= self._spill_bytes:
                    self._buffer.append(chunk.pcm)
                else:  # long speech: to its file, from here on
                    self._buffer.append(chunk.pcm)
                    self._spill(self._buffer)
            except OSError as e:
                self._failed = e
        if self._failed is not None:
            return AudioWritten(self.path, offset, 0)  # nothing to read; finish() fails the task
        self._written += len(chunk.pcm)
        return AudioWritten(self.path, offset, len(chunk.pcm), self._buffer)

    def _spill(self, buffer: AudioBuffer) -> None:
        assert buffer.memory is not None
        self._on_disk = True
        self._file = self.path.open("wb")
        self._file.write(buffer.memory)
        self._file.flush()
        buffer.moved_to(self.path)

    def finish(self) -> Path | None:
        if self._file is not None:
            self._file.close()
        if self._failed is not None:
            raise self._failed  # the task fails: result_not_stored, with the OS's words
        if self._file is None:
            if self._buffer is None or not self.keep:
                return None  # no chunk came; or it was only streamed, from memory
            assert self._buffer.memory is not None
            self._on_disk = True
            self.path.write_bytes(self._buffer.memory)  # a short speech asked for as a file
        return self.path

    def discard(self) -> None:
        if self._buffer is not None:
            self._buffer.drop()
        self.release()

    def release(self) -> None:
        # The audio goes with the last event that reads it (AudioWritten.source), not with
        # the handle: a spoken answer keeps its sentences' handles to the end, and held every
        # sentence's audio after it was heard.
        self._buffer = None
        if self._file is not None:
            self._file.close()
        if self._on_disk:
            try:
                self.path.unlink(missing_ok=True)
            except OSError:  # Windows, while a stream reads it: the retention sweep sets it aside
                pass
