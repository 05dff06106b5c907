"""Schemathesis against the server's own OpenAPI schema: valid and invalid inputs on every
operation, over a thousand cases; no 5xx, no response that breaks the schema."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import Server, make_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Tight input limits (they live in config), so a thousand random requests stay cheap."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    cfg = make_config(tmp)
    cfg["server"] = {
        "max_new_tokens": 8,
        "max_image_pixels": 128 * 128,
        "max_image_steps": 2,
        "max_tts_chars": 60,
        "max_prompt_chars": 2000,
    }
    srv = Server(tmp, cfg).start()
    yield srv
    srv.stop()


def test_schemathesis_finds_no_server_error_and_no_schema_break(tight: Server) -> None:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("schemathesis is not installed (make test installs it)")
    out = subprocess.run(
        [
            exe,
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            f"{tight.url}/openapi.json",
            "--max-examples",
            "50",
            "--seed",
            "20261126",
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            "--request-timeout",
            "60",
            "--workers",
            "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = out.stdout[-3000:]
    generated = re.search(r"(\d+) generated", out.stdout)
    assert generated and int(generated.group(1)) >= 1000, tail
    assert out.returncode == 0, tail
