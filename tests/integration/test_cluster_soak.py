"""The cluster soak (cluster_soak.py), short: each fault once (a worker node SIGKILLed, the
head SIGKILLed and started again 20 s later, the server SIGKILLed and started again) under
mixed load, about 4 minutes on 2 cores. The long form:
`PYTHONPATH=src .venv/bin/python -m tests.integration.cluster_soak --duration 600`."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("ray")

from .cluster_soak import FAULTS, cluster_soak  # noqa: E402 - after the skip: it needs Ray's CLI

pytestmark = pytest.mark.slow

# Lanes serving again after each fault, in CI on 2 busy cores (the goal figures, 30 s after
# the head's return, are reported in the results file, not asserted as timings here).
RECOVERY_BOUND_S = 180.0


@pytest.mark.timeout(720)
def test_a_cluster_loses_no_task_through_node_head_and_server_faults() -> None:
    report = cluster_soak(float(os.environ.get("RIS_CLUSTER_SOAK_S", "0")), head_down_s=20.0)
    print(json.dumps(report, indent=2))
    assert report["problems"] == []
    faults = {f["fault"]: f for f in report["faults"]}
    assert set(faults) == set(FAULTS), report["faults"]
    for f in report["faults"]:
        assert f["all_replicas_s"] is not None and f["all_replicas_s"] < RECOVERY_BOUND_S, f
    # The server noticed each cluster fault (else the fault did not happen as planned).
    assert faults["node"]["seen_s"] is not None and faults["head"]["seen_s"] is not None
    assert report["node_starts"]["node-b"] >= 2  # killed, and started again by the supervisor
    health = report["health_during_head_loss"]
    assert health["probes"] >= 10 and health["failed"] == 0, health
    # Load ran through the faults, and the durable tasks all ended (none lost).
    assert report["requests"].get("chat_stream ok", 0) > 5 and report["requests"].get("speech ok", 0) > 5
    assert report["image_tasks"] > 3 and report["image_tasks_final"].get("succeeded", 0) > 0
    assert report["tasks_lost"] == [] and report["ready_at_end"]
