"""The server's result files: a failed write leaves nothing behind, and a moved data folder
still serves the results its records name."""

from __future__ import annotations

import errno
import shutil
import wave
from pathlib import Path

import pytest

from ris.runtime.files import ResultFiles


def test_a_write_that_fails_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = ResultFiles(tmp_path)
    real = Path.write_bytes

    def disk_full(self: Path, data: bytes) -> int:  # half written, then no space left
        real(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(OSError, match="No space left"):
        files.write("images", "a1.png", b"x" * 1000)
    monkeypatch.undo()
    with pytest.raises(wave.Error):  # after the file was opened
        files.write_wav("audio", "b2.wav", b"\0\0" * 10, -1)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_moved_data_folder_serves_its_results_by_name(tmp_path: Path) -> None:
    old = ResultFiles(tmp_path / "old")
    recorded = old.write("images", "c3.png", b"png")
    shutil.move(tmp_path / "old", tmp_path / "new")
    new = ResultFiles(tmp_path / "new")
    assert new.servable("images", recorded) == (tmp_path / "new" / "images" / "c3.png").resolve()
    assert new.servable("images", tmp_path / "new" / "images" / "missing.png") is None
    assert new.servable("audio", recorded) is None  # another lane's folder
