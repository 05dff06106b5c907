"""Keys as users, through the real server: two user keys and an admin key over the real image
and speech lanes. Alice's tasks do not exist for Bob on any route or list (the hostile probe of
hostile_tenancy.py, one round); the admin sees, fetches and cancels them; a queued image keeps
its owner across a restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ris import Client, RISError

from .hostile_tenancy import KEYS, LONG, SMALL, alices_tasks, http, probe, states, tenancy_config, wait_state
from .server import Server

pytestmark = pytest.mark.slow


def test_a_users_tasks_are_anothers_404_and_an_admins_to_see_and_cancel(tmp_path: Path) -> None:
    srv = Server(tmp_path, tenancy_config(tmp_path), api_key=KEYS["root"]).start()
    try:
        tasks = alices_tasks(srv.url)
        with http(srv.url, "bob") as b:
            bobs = b.post("/api/image/generate", json=SMALL).json()["task_id"]
            assert probe(srv.url, list(tasks.values())) == []
            # Bob still sees his own work, in the lists and the console.
            assert [t["task_id"] for t in b.get("/api/image/tasks").json()["tasks"]] == [bobs]
            work = b.get("/api/console/state").json()["tasks"]
            assert {t["task_id"] for t in (*work["queued"], *work["running"], *work["recent"])} == {bobs}
            assert b.get("/metrics").json()["error"]["code"] == "admin_only"
            # Pulling downloads a model and rewrites config.json: the operator's (Ollama's shape).
            pulled = b.post("/api/pull", json={"model": "qwen2.5", "stream": False})
            assert pulled.status_code == 403 and "admin keys" in pulled.json()["error"], pulled.text
            assert b.get("/api/stats").status_code == 200  # the lanes' state, no task in it
            # The configuration in force names the server's folders: the operator's to read.
            page = b.get("/ui/models")
            assert page.status_code == 200 and "config-admins-only" in page.text
            assert "data_dir" not in page.text and str(tmp_path) not in page.text
        with http(srv.url, "alice") as a:
            assert a.get(f"/api/tasks/{bobs}").status_code == 404
            assert a.delete(f"/api/tasks/{bobs}").status_code == 404
            unfinished = a.delete(f"/api/tasks/{tasks['running']}")
            assert unfinished.status_code == 409, unfinished.text
            assert unfinished.json()["error"]["code"] == "task_not_finished"
            assert states(srv.url, list(tasks.values())) == {
                tasks["done"]: "succeeded",
                tasks["speech"]: "succeeded",
                tasks["running"]: "running",
                tasks["queued"]: "queued",
            }
            listed = {t["task_id"]: t["owner"] for t in a.get("/api/tasks").json()["tasks"]}
            assert listed == {t: "alice" for t in tasks.values()}
        with http(srv.url, "root") as r:
            everyone = {t["task_id"] for t in r.get("/api/image/tasks").json()["tasks"]}
            assert everyone >= {tasks["done"], tasks["running"], tasks["queued"], bobs}
            assert r.get(f"/api/image/result/{tasks['done']}").content[:8] == b"\x89PNG\r\n\x1a\n"
            assert r.get(f"/api/tts/audio/{tasks['speech']}").content[:4] == b"RIFF"
            assert r.delete(f"/api/tasks/{tasks['speech']}").json()["deleted"] is True  # anyone's
            assert r.get(f"/api/tts/audio/{tasks['speech']}").status_code == 404
            assert r.get("/metrics").status_code == 200
            assert "&#34;data_dir&#34;" in r.get("/ui/models").text  # HTML-escaped JSON
            assert r.post(f"/api/image/cancel/{tasks['queued']}").json()["status"] == "cancelled"
            assert r.post(f"/api/tasks/{tasks['running']}/cancel").json()["cancelled"] is True
        assert states(srv.url, [tasks["queued"]]) == {tasks["queued"]: "cancelled"}  # as alice sees it
        # The SDK and `ris status` with a user key: its own work, and nothing of alice's.
        with Client(srv.url, api_key=KEYS["bob"], max_retries=0) as sdk:
            assert sdk.wait(bobs, timeout=300)["status"] == "succeeded"
            assert sdk.result(bobs)[:8] == b"\x89PNG\r\n\x1a\n"
            assert [t["task_id"] for t in sdk.tasks()] == [bobs]
            assert sdk.delete(bobs)["deleted"] is True  # his own
            assert sdk.tasks() == []
            with pytest.raises(RISError) as e:
                sdk.cancel(tasks["done"])
            assert (e.value.status, e.value.code) == (404, "not_found")
        status = subprocess.run(
            [sys.executable, "-m", "ris", "status", "--url", srv.url, "--api-key", KEYS["bob"]],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0 and "image" in status.stdout, status.stderr
    finally:
        srv.stop()


def test_a_queued_durable_task_keeps_its_owner_across_a_restart(tmp_path: Path) -> None:
    config = tenancy_config(tmp_path)
    srv = Server(tmp_path, config, api_key=KEYS["root"]).start()
    try:
        with http(srv.url, "alice") as a:
            running = a.post("/api/image/generate", json=LONG).json()["task_id"]
            wait_state(a, running, ("running",))
            queued = a.post("/api/image/generate", json=SMALL).json()["task_id"]
    finally:
        srv.stop()  # durable image tasks stay queued (the running one is run again)

    srv = Server(tmp_path, config, api_key=KEYS["root"]).start()
    try:
        with http(srv.url, "bob") as b:
            assert b.get(f"/api/image/progress/{queued}").json()["error"]["message"] == f"no task {queued}"
            assert b.get("/api/image/tasks").json()["tasks"] == []
        with http(srv.url, "alice") as a:
            mine = a.get(f"/api/tasks/{queued}").json()
            assert mine["owner"] == "alice" and mine["state"] in ("queued", "running", "succeeded")
        assert probe(srv.url, [running, queued]) == []
        with http(srv.url, "root") as r:
            assert r.post(f"/api/tasks/{running}/cancel").json()["task_id"] == running
    finally:
        srv.stop()
