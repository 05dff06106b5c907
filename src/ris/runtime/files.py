"""The server's result files: <data_dir>/<folder>/<task id>.<ext>, written atomically.

The one place where results touch a disk. Workers never write here: their results travel to
the server as values (ris.lanes), so a worker on another machine needs no shared disk, and
the server serves files only from inside these folders.
"""

from __future__ import annotations

import os
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ResultFiles:
    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)

    def folder(self, name: str) -> Path:
        return self.root / name

    def write(self, folder: str, name: str, data: bytes) -> Path:
        path = self._target(folder, name)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with _removed_on_failure(tmp):
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return path

    def write_wav(self, folder: str, name: str, pcm: bytes, sample_rate: int) -> Path:
        """16-bit mono PCM as a WAV file."""
        path = self._target(folder, name)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with _removed_on_failure(tmp):
            with wave.open(str(tmp), "wb") as wf:
                wf.setnchannels(1)
                wf.setsampwidth(2)
                wf.setframerate(sample_rate)
                wf.writeframes(pcm)
            os.replace(tmp, path)
        return path

    def servable(self, folder: str, path: str | Path) -> Path | None:
        """The result file a task recorded as `path`, in `folder` of this data folder; None if
        it is not there. Found by its name: a record keeps the path it was written at, and a
        data folder moved since (a new disk, a container volume) still serves its results."""
        p = (self.folder(folder) / Path(path).name).resolve()
        if p.parent != self.folder(folder).resolve() or not p.is_file():
            return None
        return p

    def place(self, folder: str, name: str) -> Path:
        """Where the result file `name` of `folder` goes (the folder made): for a result written
        while its task runs (a TTS task's WAV), served only once the task succeeded."""
        return self._target(folder, name)

    def _target(self, folder: str, name: str) -> Path:
        if "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"result file name {name!r} must be a plain name")
        d = self.folder(folder)
        d.mkdir(parents=True, exist_ok=True)
        return d / name


@contextmanager
def _removed_on_failure(tmp: Path) -> Iterator[None]:
    """A write that fails (a full disk) leaves no partial file behind: it would hold the
    space the task's failure record then needs, and stay as long as the record."""
    try:
        yield
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
