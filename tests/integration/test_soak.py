"""The soak run with faults (soak.py), short: RIS_SOAK_S seconds of traffic (default 60).
The long form: `RIS_SOAK_S=1800 .venv/bin/python -m pytest tests/integration/test_soak.py -s`,
or `python -m tests.integration.soak --duration 1800 --out report.json`."""

from __future__ import annotations

import json
import os

import pytest

from .soak import soak

pytestmark = pytest.mark.slow


def test_mixed_traffic_with_killed_and_stopped_workers_loses_nothing() -> None:
    report = soak(float(os.environ.get("RIS_SOAK_S", "60")))
    print(json.dumps(report.to_json(), indent=2))
    assert report.problems() == []
    assert sum(report.faults.values()) >= 3, report.faults  # faults were injected, and survived
    assert report.tasks_final["succeeded"] > 20 and report.tasks_final["cancelled"] > 0
    assert report.guesses["429"] > 0, report.guesses  # the guesser ran, and was throttled
