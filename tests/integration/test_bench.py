"""`ris bench --quick` runs the real services and writes well-formed reports (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ris.benchmark.summary import METRICS

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_quick_bench_writes_json_markdown_and_chart(tmp_path: Path) -> None:
    proc = subprocess.run(
        # In two rounds: each phase of a service taken in turns with the others, pooled.
        [
            sys.executable,
            "-m",
            "ris",
            "bench",
            "--quick",
            "--duration",
            "6",
            "--rounds",
            "2",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "%" in proc.stderr  # the progress bar

    report = json.loads((tmp_path / "ris_bench_quick.json").read_text())
    assert report["meta"]["configs"] == ["traditional", "isolated"]
    assert report["meta"]["repetitions"] == 1 and report["meta"]["machine"]["cores"] >= 1
    assert report["meta"]["rounds"] == 2
    # What was measured: the code, and each configuration's lanes as the service applied them.
    assert report["meta"]["revision"].startswith("ris ")
    layouts = report["meta"]["layouts"]
    assert set(layouts) == {"traditional", "isolated"}
    assert layouts["isolated"]["llm"]["affinity"] == [0] and layouts["isolated"]["image"]["nice"] == 19
    figures = report["combined"]["figures"]
    assert set(figures) == {"alone", "traditional", "isolated"}
    for column in figures.values():
        # Every lane was driven and finished work in every column.
        for name in ("llm_ttft_p50", "llm_itl_p99", "tts_rtf_p99", "image_wait_p50", "requests_per_min"):
            assert column[name]["median"] > 0, (name, column)
    assert set(report["combined"]["ratios"]) == {
        "isolated/alone",
        "traditional/alone",
        "isolated/traditional",
    }
    assert [g["met"] in (True, False) for g in report["goals"]] == [True, True, True, True]

    raw = json.loads((tmp_path / "ris_bench_quick_raw.json").read_text())
    mixed = raw[0]["isolated"]["mixed"]
    assert mixed["lanes"] == ["image", "llm", "tts"] and mixed["rounds"] == 2
    assert mixed["workload"]["duration_s"] == report["meta"]["workload"]["duration_s"]
    assert all(mixed["samples"][lane] for lane in ("llm", "tts", "image"))

    table = (tmp_path / "ris_bench_quick.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| seed row"))
    assert header.split("|")[3:6] == [" alone ", " traditional ", " isolated "]
    rows = [line for line in table.splitlines() if line.startswith("| ") and line != header]
    assert len(rows) == len(METRICS)
    assert (
        "in 2 rounds taken in turns" in table
        and "Goals:" in table
        and "- code: ris " in table
        and "\n- isolated: llm on cores [0]" in table
    )

    assert (tmp_path / "ris_bench_quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(600)
def test_hf_serve_compare_quick_runs_both_servers_on_one_folder(tmp_path: Path) -> None:
    """bench/hf_serve_compare.py's CPU form: RIS's transformers lane and `transformers serve`
    on the same random-weight folder, both streaming every burst (no timing checks)."""
    pytest.importorskip("transformers", reason="needs transformers")
    out = tmp_path / "hf.json"
    proc = subprocess.run(
        [
            sys.executable,
            "bench/hf_serve_compare.py",
            "--quick",
            "--levels",
            "1,2",
            "--max-tokens",
            "8",
            "--out",
            str(out),
        ],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    report = json.loads(out.read_text())
    figures = report["repeat_figures"][0]["figures"]
    for system in ("ris", "transformers-serve"):
        for n in (1, 2):
            assert figures[system][f"c{n}.tok_s"] > 0 and figures[system][f"c{n}.tokens"] > 0
    assert report["direct_tok_s"]["median"] > 0
    assert "| c2.tok_s (tok/s) |" in out.with_suffix(".md").read_text()
