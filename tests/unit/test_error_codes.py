"""ris.error_codes lists every error code the source gives, and nothing else: the source is read
(not run) for codes in the shapes it raises them in, so a new code cannot go undocumented in
docs/API_REFERENCE.md, nor a code no longer raised stay there."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import ris
from ris.error_codes import ERROR_CODES, SECTIONS
from ris.failures import FAILURE_STATUS

SRC = Path(ris.__file__).parent
CODE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
# Calls whose second positional argument is a code (after the status, or a task's id) ...
CODE_SECOND = {"APIError", "error_response", "RISError", "TaskError"}
# ... and whose first is.
CODE_FIRST = {"BackendError", "PullError", "StreamBroken", "WorkerFailed", "Fail"}


def _strings(node: ast.AST | None) -> Iterator[str]:
    """The string constants `node` may evaluate to (a constant, either side of an if-else)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.IfExp):
        yield from _strings(node.body)
        yield from _strings(node.orelse)


def _name(node: ast.AST) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def _codes_in(node: ast.AST) -> Iterator[str]:
    if isinstance(node, ast.Call):
        called = _name(node.func)
        if called in CODE_SECOND and len(node.args) > 1:
            yield from _strings(node.args[1])
        if called in CODE_FIRST and node.args:
            yield from _strings(node.args[0])
        for kw in node.keywords:
            if kw.arg == "code":
                yield from _strings(kw.value)
            # Dialect(too_long=(413, "prompt_too_long"), ...): a status and a code
            if called == "Dialect" and isinstance(kw.value, ast.Tuple):
                yield from _strings(kw.value.elts[1])
    elif isinstance(node, ast.Assign):
        for target in node.targets:
            if _name(target) == "code":
                yield from _strings(node.value)
            elif _name(target) == "FAILURE_STATUS" and isinstance(node.value, ast.Dict):
                for key in node.value.keys:
                    yield from _strings(key)
            elif _name(target).endswith("_CODES") and isinstance(node.value, ast.Dict):
                for value in node.value.values:
                    yield from _strings(value)
            elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):  # code, message = ...
                for t, v in zip(target.elts, node.value.elts, strict=False):
                    if _name(t) == "code":
                        yield from _strings(v)
    elif isinstance(node, ast.Dict):  # an error event's data: {"code": ..., "message": ...}
        for key, value in zip(node.keys, node.values, strict=True):
            if isinstance(key, ast.Constant) and key.value == "code":
                yield from _strings(value)
    elif isinstance(node, ast.arguments):  # def f(..., code: str = "lane_unavailable")
        args = [*node.posonlyargs, *node.args]
        pairs = [
            *zip(args[len(args) - len(node.defaults) :], node.defaults, strict=True),
            *zip(node.kwonlyargs, node.kw_defaults, strict=True),
        ]
        for arg, default in pairs:
            if arg.arg == "code":
                yield from _strings(default)


def source_codes() -> dict[str, set[str]]:
    """Every code the package's source gives, with the files that give it."""
    found: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "error_codes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for code in _codes_in(node):
                if CODE.fullmatch(code):
                    found.setdefault(code, set()).add(str(path.relative_to(SRC)))
    return found


def test_every_code_the_source_gives_is_documented_and_no_other() -> None:
    found = source_codes()
    undocumented = sorted(set(found) - set(ERROR_CODES))
    assert not undocumented, {c: sorted(found[c]) for c in undocumented}
    assert sorted(set(ERROR_CODES) - set(found)) == []  # listed, and no longer given anywhere


def test_the_scan_finds_codes_in_each_shape_they_are_raised_in() -> None:
    """Not a scan that finds nothing and so passes: one code of each shape is found."""
    found = source_codes()
    for code in (
        "queue_full",  # APIError(429, "queue_full", ...)
        "synthesis_failed",  # BackendError("synthesis_failed", ...)
        "hub_error",  # PullError
        "model_load_failed",  # WorkerFailed(code=...)
        "prompt_too_long",  # Dialect(too_long=(413, "prompt_too_long"))
        "unauthorized",  # code, message = "unauthorized", ...
        "url_expired",  # _URL_CODES
        "speaking_failed",  # {"code": "speaking_failed", ...}
        "lane_unavailable",  # def __init__(..., code: str = "lane_unavailable")
        "result_not_stored",  # code = "storage_full" if full else "result_not_stored"
        "stream_incomplete",  # RISError(502, "stream_incomplete", ...)
    ):
        assert code in found, code


def test_each_entry_has_a_section_a_status_and_a_meaning() -> None:
    for code, (section, status, meaning) in ERROR_CODES.items():
        assert section in SECTIONS and status and meaning and not meaning.endswith("."), code
    # A task's failure answers with the status the failure table gives it: the same here.
    for code, failure_status in FAILURE_STATUS.items():
        assert ERROR_CODES[code][1].startswith(str(failure_status)), code
