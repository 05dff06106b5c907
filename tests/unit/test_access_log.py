"""uvicorn's access log leaves out probes that found the server well (ris.api.access_log)."""

from __future__ import annotations

import logging

from ris.api.access_log import QuietProbes


def access(method: str, path: str, status: int) -> logging.LogRecord:
    """A record as uvicorn's access logger makes it."""
    return logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", method, path, "1.1", status), None,
    )  # fmt: skip


def test_probes_answered_well_are_left_out_and_the_rest_kept() -> None:
    """A monitor's poll wrote 121 lines in 14 s beside the requests that matter."""
    quiet = QuietProbes()
    for method, path in [("GET", "/health"), ("HEAD", "/ready"), ("GET", "/metrics"), ("GET", "/ready?x=1")]:
        assert not quiet.filter(access(method, path, 200)), (method, path)
    kept = [
        ("GET", "/ready", 503),  # a probe that failed: the line a reader looks for
        ("GET", "/metrics", 401),
        ("POST", "/health", 405),
        ("GET", "/api/stats", 200),
        ("GET", "/healthz", 200),
    ]
    for method, path, status in kept:
        assert quiet.filter(access(method, path, status)), (method, path, status)
    odd = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "no args", None, None)
    assert quiet.filter(odd)
