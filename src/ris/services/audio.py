"""A TTS task's audio as a stream of PCM pieces, read back from where the server wrote it."""

from __future__ import annotations

from typing import Any

from ris.lanes.tts_audio import AudioWritten
from ris.runtime.views import TaskHandle

# What an audio body writes at once. A client that stops reading leaves about this much (and
# the transport's own buffer) in the server per connection, whatever the audio's length.
AUDIO_PIECE_BYTES = 64 * 1024


class AudioStream:
    """A TTS task's PCM as it is made, read back from the task's WAV file where the server
    wrote it (ris.lanes.tts_audio.AudioFile), in pieces of at most AUDIO_PIECE_BYTES, at the pace of
    whoever reads: unread audio stays where the server keeps it (in memory up to 1 MiB a task,
    beyond that on disk), not in the stream."""

    def __init__(self, handle: TaskHandle[Any]) -> None:
        self.handle = handle
        self._chunk: AudioWritten | None = None
        self._read = 0

    async def next(self) -> bytes | None:
        """The next piece; None once the task has ended (then its `done` is resolved: the
        engine ends the events just before it settles the task)."""
        while True:
            chunk = self._chunk
            if chunk is not None and self._read < chunk.length:
                pcm = chunk.read(self._read, AUDIO_PIECE_BYTES)
                self._read += len(pcm) or chunk.length  # a file gone: the chunk is over
                if pcm:
                    return pcm
                continue
            item = await self.handle.events.get()
            if item is None:
                return None
            if isinstance(item, AudioWritten):
                self._chunk, self._read = item, 0
