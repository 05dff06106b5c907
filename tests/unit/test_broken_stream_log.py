"""An audio body broken off by design is one warning in the log, not an error's traceback."""

from __future__ import annotations

import logging
import sys

from ris.api.streams import BrokenStreamLog, StreamBroken


def record_of(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:  # noqa: BLE001 - any, as uvicorn logs any
        info = sys.exc_info()
    return logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application\n", (), info
    )


def test_a_broken_stream_is_one_warning_line_and_other_errors_keep_their_traceback() -> None:
    quiet = BrokenStreamLog()
    for exc in (
        StreamBroken("server_shutdown", "the server is stopping"),
        BaseExceptionGroup("anyio", [StreamBroken("synthesis_failed", "espeak died")]),
    ):
        record = record_of(exc)
        assert quiet.filter(record) and record.levelname == "WARNING" and record.exc_info is None
        assert record.getMessage().startswith("an audio stream was broken off mid-body: ")
    other = record_of(BaseExceptionGroup("anyio", [StreamBroken("x", "y"), ValueError("a bug")]))
    assert quiet.filter(other) and other.levelname == "ERROR" and other.exc_info is not None
