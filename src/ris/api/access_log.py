"""What uvicorn's access log leaves out: probes that found the server well.

A monitor polls /health, /ready and /metrics every few seconds, and each answer was a line:
an operator's poller alone wrote 121 lines in 14 s beside the requests that matter, and the
only way to quiet them, --log-level warning, dropped the server's own lifecycle lines too. A
probe answered 2xx is left out (`server.log_probes` keeps it); one that failed stays: it is
the line a reader looks for.
"""

from __future__ import annotations

import logging

PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})


class QuietProbes(logging.Filter):
    """Drops the access log's records of probes answered 2xx (uvicorn's record.args: client,
    method, path with its query, HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) < 5:
            return True
        method, path, status = args[1], args[2], args[4]
        probe = method in ("GET", "HEAD") and isinstance(path, str) and path.partition("?")[0] in PROBE_PATHS
        return not (probe and isinstance(status, int) and 200 <= status < 300)


def quiet_probes_in_access_log() -> None:
    """Install the filter on uvicorn's access logger, once per process."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, QuietProbes) for f in logger.filters):
        logger.addFilter(QuietProbes())
