"""Clients that stop reading never grow the server by the audio they did not read: speech is
written to its result file as it is made and streamed back from there at the client's pace
(ris.lanes.tts_audio.AudioFile). A few clients here; `python -m tests.integration.slow_readers` for
the issue's fifty."""

from __future__ import annotations

from pathlib import Path

import pytest

from .slow_readers import run

pytestmark = pytest.mark.slow

CLIENTS = 4


@pytest.mark.parametrize("response_format", ["pcm", "mp3"])  # mp3: the encoder does not run ahead
def test_clients_that_stop_reading_hold_none_of_their_audio_in_the_server(
    tmp_path: Path, response_format: str
) -> None:
    report = run(tmp_path, CLIENTS, response_format=response_format)
    assert report.tasks_succeeded == CLIENTS  # synthesized to the end, unread
    unread_mib = CLIENTS * report.audio_bytes_each / 2**20
    assert unread_mib > 40, report  # enough to see: the audio would have been held in memory
    # Far below what they did not read; the allocator's own slack aside.
    assert report.growth_mib < 25, (report, f"{unread_mib:.0f} MiB unread")
    assert report.left_after_mib < 25, report
