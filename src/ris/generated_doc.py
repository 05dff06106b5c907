"""A doc generated from the code (docs/CLI.md, docs/MODEL_OPTIONS.md): written, or with
`--check` compared with the committed file, as their `python -m` entry points do."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(target: Path, text: str, regenerate: str, argv: list[str] | None = None) -> int:
    """Exit status: with `--check` in `argv` (default: the command line), 1 when the committed
    `target` differs from `text` (saying the command that regenerates it), else 0; without it,
    `target` is written."""
    name = target.relative_to(target.parents[1])
    if "--check" in (argv if argv is not None else sys.argv[1:]):
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            print(f"{name} is stale; regenerate it with: PYTHONPATH=src {regenerate}", file=sys.stderr)
            return 1
        return 0
    target.write_text(text, encoding="utf-8")
    print(f"wrote {name}")
    return 0
