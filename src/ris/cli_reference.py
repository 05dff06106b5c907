"""docs/CLI.md, generated from the `ris` command's own parser: every command and flag as
`ris <command> --help` prints it, and the exit statuses. Flags that only the parser knew of
(`ris status --api-key`, `ris bench --tts-model`) were in no doc; generated, none is left out,
and tests/unit/test_cli_reference.py fails when the file is stale.

    PYTHONPATH=src python -m ris.cli_reference [--check]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ris.generated_doc import write_or_check

REGENERATE = "python -m ris.cli_reference"
TARGET = Path(__file__).resolve().parents[2] / "docs" / "CLI.md"
WIDTH = "100"  # argparse wraps to the terminal: one width, so the file is the same everywhere

INTRO = """\
# The `ris` command

Generated from the command's parser by `{regenerate}` (do not edit by hand): each command as
`ris <command> --help` prints it. The server's own settings are config.json's
(docs/DEPLOYMENT_GUIDE.md, "config.json reference"); `--host`, `--port`, `--data-dir` and
`--ray` override theirs for one run, for `ris config` as for `ris serve`.

## Exit statuses

| status | when |
|---|---|
{rows}
"""

# Each row of the exit statuses' table, from the returns of ris.cli's commands.
EXITS = (
    ("0", "done (`ris serve`: stopped after serving); `ris test`: pytest's own status"),
    (
        "1",
        "`ris serve`: the data folder cannot be used (another server holds it, a file in its "
        "place, no rights), `server.http_parser` names a package that is not installed, or the "
        "data folder was lost while serving; `ris status`: no answer, or not a RIS server; "
        "`ris pull`: the pull failed (the message says why, e.g. `checksum_mismatch`)",
    ),
    (
        "2",
        "a usage error (an unknown flag); the configuration refused (invalid, a model file that "
        "is not there, what `ris config --check` finds `ris serve` would refuse, a port in "
        "use); `ris pull` with no name (it lists the catalogue) or no config file; `ris test` "
        "outside a source checkout, or without pytest installed (`make test` installs it)",
    ),
    ("3", "`ris serve`: the server did not start (stopped while its workers started)"),
    ("130", "interrupted (Ctrl-C)"),
)


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its subcommands here only
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return {}


def render() -> str:
    from ris.cli import build_parser

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = build_parser()
        rows = "\n".join(f"| {status} | {when} |" for status, when in EXITS)
        intro = INTRO.format(regenerate=REGENERATE, rows=rows)
        parts = [intro, "## `ris`\n", "```text\n" + parser.format_help() + "```\n"]
        for name, sub in _commands(parser).items():
            parts += [f"## `ris {name}`\n", "```text\n" + sub.format_help() + "```\n"]
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    return write_or_check(TARGET, render(), REGENERATE, argv)


if __name__ == "__main__":
    sys.exit(main())
