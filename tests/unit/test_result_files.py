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


def test_a_result_file_deleted_after_its_route_found_it_answers_404_not_500(tmp_path: Path) -> None:
    """A GET that found the file, then lost it to a DELETE or a sweep before it was read: 404
    `not_found` as the next lookup answers (FileResponse's own answer was a 500)."""
    import asyncio

    from ris.api.streams import ResultFile

    path = tmp_path / f"{'0' * 32}.png"
    path.write_bytes(b"\x89PNG")
    response = ResultFile(path, media_type="image/png")
    path.unlink()  # the DELETE, between the route's check and the answer
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
    asyncio.run(response(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 404
    assert b'"not_found"' in b"".join(m.get("body", b"") for m in sent[1:])  # type: ignore[misc]
