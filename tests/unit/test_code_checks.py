"""The repository's own checks, run as tests so that a red check is a red suite: mypy (strict,
configured in pyproject.toml) over src/ and tests/, ruff's lint and format over both, no
`type: ignore` in the runtime (its types are meant to hold without exceptions), and no route or
service narrowing a task's result (the engine's handles and views are typed by lane kind)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "src" / "ris" / "runtime"


def passes(*command: str) -> None:
    """Run `python -m <command>` at the repository root; fail with what it said."""
    done = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}"


@pytest.mark.timeout(600)  # a cold mypy run over the whole tree takes minutes on two cores
def test_mypy_finds_nothing() -> None:
    passes("mypy")


def test_ruff_finds_nothing() -> None:
    passes("ruff", "check", "src", "tests")


def test_ruff_format_changes_nothing() -> None:
    passes("ruff", "format", "--check", "src", "tests")


def lines_matching(folder: Path, pattern: str) -> list[str]:
    """Each line under `folder` that matches `pattern`, as path:line."""
    return [
        f"{path}:{number}"
        for path in sorted(folder.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(pattern, line)
    ]


def test_the_runtime_has_no_type_ignore() -> None:
    assert lines_matching(RUNTIME, r"#\s*type:\s*ignore") == []


# isinstance(x, LLMResult) and the like: a task's view is typed by its lane kind instead.
NARROWING = r"isinstance\([^)]*Result\b"


def test_no_route_or_service_narrows_a_result() -> None:
    src = ROOT / "src" / "ris"
    found = [*lines_matching(src / "api" / "routes", NARROWING), *lines_matching(src / "services", NARROWING)]
    assert found == []


def test_the_narrowing_check_sees_a_narrowing(tmp_path: Path) -> None:
    (tmp_path / "route.py").write_text("assert isinstance(r, LLMResult)\nok = isinstance(x, str)\n")
    assert len(lines_matching(tmp_path, NARROWING)) == 1
