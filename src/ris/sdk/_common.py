"""Pieces shared by the sync and async clients: errors, retry policy, result types."""

from __future__ import annotations

import json
import random
import struct
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ris.failures import NOT_TO_RETRY, failure_status


class RISError(Exception):
    """The server answered with an error object; `code` is machine-readable. `status` is the
    HTTP status the failure answers with, also where it came inside a stream or a task's
    progress (whose own response was a 200): a failed generation is the same RISError either
    way."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class RISWarning(UserWarning):
    """What the server said of a request it served differently than asked (a task's
    `warnings`: use_turbo served by a model that is not a turbo one, a voice chosen for the
    text's language), raised through Python's warnings for the calls that return bare bytes
    (image(), speak()), whose callers would otherwise never see it. Filter it as any warning:
    `warnings.simplefilter("error", ris.RISWarning)` makes it an exception."""


_SDK_DIR = str(Path(__file__).parent)


def warn(said: Any) -> None:
    """Each of the server's warnings as a RISWarning, said at the caller's line: the first
    frame outside the SDK (its calls run through generators and the client's driver)."""
    level, frame = 1, sys._getframe(0)
    while frame is not None and frame.f_code.co_filename.startswith(_SDK_DIR):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    for text in said or ():
        warnings.warn(str(text), RISWarning, stacklevel=level)


class TaskTimeout(TimeoutError):
    """A task still queued or running when the caller's `timeout` passed; `task_id` names it
    (to wait again, cancel or delete it)."""

    def __init__(self, task_id: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id

    def __reduce__(self) -> tuple[type[TaskTimeout], tuple[str, str]]:
        return type(self), (self.task_id, str(self))  # pickled (a process pool) as it was made


@dataclass(frozen=True)
class Generation:
    task_id: str
    model: str
    text: str
    finish_reason: str
    usage: dict[str, int]
    timings: dict[str, float | None]
    # What the answer may not be as asked (e.g. a prompt in a language the model does not write).
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Speech:
    task_id: str
    model: str
    voice: str
    sample_rate: int
    duration_s: float
    audio: bytes = field(repr=False)
    # Where the server served something other than asked (a voice chosen by the text's
    # script, a speed the engine cannot honour).
    warnings: tuple[str, ...] = ()

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_bytes(self.audio)
        return p


def server_url(value: str) -> str:
    """A RIS server's address as the SDK and `ris status --url` take it: `localhost:8080` is
    http://localhost:8080, as for curl. What cannot be one is a ValueError saying why (port
    99999 read "connection refused", as if the server were down). A user name or password in
    it is refused: httpx sends them as Basic credentials in place of the API key, which the
    server then said was missing."""
    from urllib.parse import urlsplit

    url = value if "://" in value else f"http://{value}"
    try:
        parts = urlsplit(url)
    except ValueError as e:  # an unclosed '[' of an IPv6 address
        raise ValueError(f"{value!r} is not a URL ({e})") from None
    if parts.username is not None or parts.password is not None:
        # Not quoted: the message would show the password.
        raise ValueError("the URL carries a user name or password; give the API key as a key instead")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{value!r}: the URL must be http:// or https://")
    try:
        port = parts.port  # not a number, or outside 0-65535
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    if not parts.hostname:
        raise ValueError(f"{value!r} names no host (e.g. 127.0.0.1:8080)")
    return url


def error_from(resp: httpx.Response) -> RISError:
    try:
        err = resp.json()["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", resp.text[:500]
    return RISError(resp.status_code, code, message, retry_after_of(resp))


def retry_after_of(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def backoff_delay(attempt: int, retry_after: float | None, cap: float) -> float:
    """Honour the server's Retry-After; else exponential back-off with jitter."""
    if retry_after is not None:
        return min(cap, retry_after)
    return min(cap, 0.25 * 2.0**attempt) * (0.5 + random.random() / 2)


RETRY_STATUSES = (429, 503)
# 503s that are not retried: the request ran and its worker died under it (NOT_TO_RETRY). The
# other 503s and 429s came before anything ran, or from a stop. A 429 for too many wrong API
# keys: the key is wrong and stays wrong, and each retry counts as one more guess.
NOT_RETRIED = NOT_TO_RETRY | {"too_many_wrong_keys"}


class SSEDecoder:
    """Server-sent events from a stream of lines: feed each line, get an event at each blank one."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def feed(self, line: str) -> tuple[str, Any] | None:
        if line:
            self._lines.append(line)
            return None
        lines, self._lines = self._lines, []
        return parse_sse(lines)


def parse_sse(lines: list[str]) -> tuple[str, Any] | None:
    event, data = "message", []
    for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    if not data:
        return None
    return event, json.loads("\n".join(data))


def generation_from(body: dict[str, Any]) -> Generation:
    return Generation(
        task_id=body["task_id"],
        model=body["model"],
        text=body["text"],
        finish_reason=body["finish_reason"],
        usage=body["usage"],
        timings=body["timings"],
        warnings=tuple(body.get("warnings", ())),
    )


def set_by_the_call(
    name: str, options: dict[str, Any], fixed: dict[str, Any], instead: str
) -> dict[str, Any]:
    """`options` with the fields the method `name` sets itself; one of them among the caller's
    options is a TypeError that says which method does what was asked, not Python's "got
    multiple values for keyword argument" from inside the SDK."""
    for key in fixed:
        if key in options:
            raise TypeError(f"{name}() sets {key!r} itself; {instead}")
    return {**options, **fixed}


def wav_bytes(sample_rate: int, pcm: bytes) -> bytes:
    """16-bit mono PCM as a WAV whose header gives its true sizes (what `wave` and other strict
    readers need; the server's streamed WAV could not know them when its header left)."""
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(pcm))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", len(pcm))
        + pcm
    )


def llm_body(prompt: str | None, messages: list[dict[str, str]] | None, **kw: Any) -> dict[str, Any]:
    if (prompt is None) == (messages is None):
        # Both given: the prompt was dropped and the model answered without it.
        raise ValueError("give exactly one of `prompt` or `messages` (put the prompt in a user message)")
    body: dict[str, Any] = {k: v for k, v in kw.items() if v is not None}
    if messages is not None:
        body["messages"] = messages
    else:
        body["prompt"] = prompt
    return body


FINAL_STATES = ("succeeded", "failed", "cancelled")


def check_final(progress: dict[str, Any]) -> dict[str, Any]:
    """A finished task's progress, or RISError carrying its error code."""
    if progress["status"] == "succeeded":
        return progress
    err = progress.get("error") or {}
    code = str(err.get("code") or progress["status"])
    raise RISError(failure_status(code), code, str(err.get("message") or ""))


def stream_failure(data: dict[str, Any]) -> RISError:
    """An `error` event of a stream that had begun: the failure its response would have been."""
    code = str(data["code"])
    return RISError(failure_status(code), code, str(data["message"]))
