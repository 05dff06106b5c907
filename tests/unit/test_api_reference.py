"""docs/API_REFERENCE.md is generated from the app's OpenAPI schema and must match it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ris.api.reference import REGENERATE, main, openapi_schema, render

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "API_REFERENCE.md"


def test_committed_reference_is_current() -> None:
    generated = render(openapi_schema())
    committed = COMMITTED.read_text(encoding="utf-8") if COMMITTED.exists() else ""
    assert committed == generated, (
        f"docs/API_REFERENCE.md is stale (a route or a request/response field changed); "
        f"regenerate it from the repository root with: PYTHONPATH=src {REGENERATE}"
    )


def test_every_route_and_request_field_is_documented() -> None:
    schema = openapi_schema()
    text = render(schema)
    for path, ops in schema["paths"].items():
        for method in ops:
            assert f"### `{method.upper()} {path}`" in text
    # The description's image request: each of its fields has a row with its type.
    for field, kind in [
        ("prompt", "string"),
        ("width", "integer"),
        ("use_turbo", "boolean"),
        ("steps", "integer"),
    ]:
        assert f"| `{field}` | {kind}" in text


def test_an_operation_that_takes_a_body_lists_the_body_timeout_and_a_full_disk() -> None:
    """The reference's per-route error lists left out 408 body_timeout and 507 (storage_full,
    gpu_out_of_memory), which its own status-code section says any of them may answer."""
    bodies = [op for ops in openapi_schema()["paths"].values() for op in ops.values() if "requestBody" in op]
    assert len(bodies) > 10
    for op in bodies:
        assert {"408", "507"} <= set(op["responses"]), op.get("summary")


def test_check_mode_fails_on_a_stale_file_and_names_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "API_REFERENCE.md"
    stale.write_text("# API reference\n\nold\n", encoding="utf-8")
    assert main(["--check", "--output", str(stale)]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert main(["--output", str(stale)]) == 0
    assert main(["--check", "--output", str(stale)]) == 0
