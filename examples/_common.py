"""What every example shares: `--url`, the API key from RIS_API_KEY, and errors printed plainly.

Not an example itself; the scripts beside it import it (Python puts a script's folder on sys.path).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with --url; its description is the script's docstring."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=DEFAULT_URL, help="the RIS server (default: %(default)s)")
    return p


def api_key() -> str | None:
    """The key the server wants when `server.api_keys` is set (none otherwise)."""
    return os.environ.get("RIS_API_KEY") or None


def headers() -> dict[str, str]:
    key = api_key()
    return {"Authorization": f"Bearer {key}"} if key else {}


def error_of(resp: httpx.Response) -> tuple[str | None, str]:
    """The error's machine-readable code and its message (the body itself if not JSON)."""
    try:
        error = resp.json()["error"]
        return error.get("code"), str(error.get("message"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, resp.text


def fail(resp: httpx.Response, hint: str = "") -> NoReturn:
    """Print the server's error (code and message) and exit non-zero."""
    code, message = error_of(resp)
    print(f"error: HTTP {resp.status_code} {code or ''}: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.exit(1)


def run_script(main: Callable[[], None]) -> None:
    """A script's main, with a server that does not answer said in one line (exit 1), not as
    httpx's traceback."""
    try:
        main()
    except httpx.TransportError as e:
        print(
            f"error: no answer from the server: {e!r} (is it running? give its address with --url)",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
