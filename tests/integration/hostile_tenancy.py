"""Another user's task ids, tried on every task route: a user key (bob) that knows the ids of
another user's tasks (alice's: a finished image, a running one, a queued one, a finished speech)
and probes them on every route that takes a task id, and reads every list, the console's work
list and the stats. Each answer to one of alice's ids must be the very answer an id that does
not exist gets (404 not_found, "no task <id>"), so ids cannot be probed; no list, state or
statistic may name one of them; and alice's tasks must be as they were afterwards. Prints each
leak and exits 1 on any. (tests/integration/test_tenancy.py runs one round.)

    .venv/bin/python -m tests.integration.hostile_tenancy --rounds 20
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from .server import Server, make_config

KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789", "root": "root-key-0123456789"}
LONG: dict[str, Any] = {"prompt": "a long one", "width": 256, "height": 256, "steps": 100}
SMALL: dict[str, Any] = {"prompt": "a small one", "width": 64, "height": 64, "steps": 2}


def tenancy_config(folder: Path) -> dict[str, Any]:
    """The repository's config with the image and speech lanes, two users and an admin."""
    cfg = make_config(folder, llm={"enabled": False})
    cfg["server"] = {
        "api_keys": [
            {"name": "alice", "key": KEYS["alice"]},
            {"name": "bob", "key": KEYS["bob"], "role": "user"},
            {"name": "root", "key": KEYS["root"], "role": "admin"},
        ]
    }
    return cfg


def http(url: str, who: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEYS[who]}"}, timeout=60)


def id_routes(task_id: str) -> list[tuple[str, str]]:
    """Every route that takes a task id (the console's work page reads and cancels through
    /api/tasks; /v1/images answers with /api/image/result URLs). An unknown id's DELETE is
    404 as another user's must be: bob deletes nothing of alice's."""
    return [
        ("GET", f"/api/tasks/{task_id}"),
        ("POST", f"/api/tasks/{task_id}/cancel"),
        ("DELETE", f"/api/tasks/{task_id}"),
        ("GET", f"/api/image/progress/{task_id}"),
        ("GET", f"/api/image/result/{task_id}"),
        ("POST", f"/api/image/cancel/{task_id}"),
        ("GET", f"/api/tts/audio/{task_id}"),
        ("GET", f"/api/tts/audio/{task_id}?format=mp3"),
    ]


LISTS = (
    "/api/tasks",
    "/api/tasks?lane=image",
    "/api/tasks?state=queued",
    "/api/tasks?state=succeeded",
    "/api/image/tasks",
    "/api/image/tasks?status=queued",
    "/api/console/state",
    "/api/stats",
    "/metrics",
)


def _answer(r: httpx.Response, task_id: str) -> tuple[int, str]:
    """A response with the id it was asked about written as <id>: comparable across ids."""
    return r.status_code, r.text.replace(task_id, "<id>")


def probe(url: str, victim_ids: list[str], intruder: str = "bob") -> list[str]:
    """One round of every probe by `intruder` against `victim_ids`; the leaks found."""
    leaks: list[str] = []
    cookie = httpx.Client(base_url=url, timeout=60)  # the console's way in: its login's session
    with http(url, intruder) as c, cookie:
        assert cookie.post("/ui/login", data={"key": KEYS[intruder]}).status_code == 303
        assert "ris_key" in cookie.cookies
        for task_id in victim_ids:
            unknown = secrets.token_hex(16)
            for (method, path), (_, unknown_path) in zip(id_routes(task_id), id_routes(unknown), strict=True):
                for client in (c, cookie):
                    got = _answer(client.request(method, path), task_id)
                    expected = _answer(client.request(method, unknown_path), unknown)
                    if got != expected or got[0] != 404:
                        leaks.append(f"{method} {path}: {got} where an unknown id gets {expected}")
        for path in LISTS:
            for client in (c, cookie):
                r = client.get(path)
                named = [t for t in victim_ids if t in r.text]
                if named:
                    leaks.append(f"GET {path} ({r.status_code}) names {named}")
    return leaks


def states(url: str, task_ids: list[str], who: str = "alice") -> dict[str, str]:
    """Each task's state as its owner sees it."""
    with http(url, who) as c:
        return {t: c.get(f"/api/tasks/{t}").json().get("state", "gone") for t in task_ids}


def wait_state(c: httpx.Client, task_id: str, wanted: tuple[str, ...], timeout: float = 120) -> str:
    give_up = time.monotonic() + timeout
    while True:
        state = str(c.get(f"/api/tasks/{task_id}").json()["state"])
        if state in wanted:
            return state
        if time.monotonic() > give_up:
            raise TimeoutError(f"{task_id} is {state}, not {wanted}, after {timeout} s")
        time.sleep(0.05)


def alices_tasks(url: str) -> dict[str, str]:
    """Alice's tasks in every state the routes answer differently: a finished image and speech
    (result files), a running image and one queued behind it."""
    with http(url, "alice") as a:
        done = a.post("/api/image/generate", json=SMALL).json()["task_id"]
        wait_state(a, done, ("succeeded",))
        spoken = a.post("/api/tts/synthesize", json={"text": "Hello from Alice."})
        assert spoken.status_code == 200, spoken.text
        running = a.post("/api/image/generate", json=LONG).json()["task_id"]
        wait_state(a, running, ("running",))
        queued = a.post("/api/image/generate", json=SMALL).json()["task_id"]
        assert wait_state(a, queued, ("queued",)) == "queued"
    return {"done": done, "speech": spoken.json()["task_id"], "running": running, "queued": queued}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="probe rounds over every route (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        srv = Server(folder, tenancy_config(folder), api_key=KEYS["root"]).start()
        try:
            tasks = alices_tasks(srv.url)
            leaks: list[str] = []
            for _ in range(args.rounds):
                leaks += probe(srv.url, list(tasks.values()))
            after = states(srv.url, list(tasks.values()))
            probes = args.rounds * len(tasks) * len(id_routes("x")) * 2 + args.rounds * len(LISTS) * 2
            print(f"{probes} probes by bob of alice's {len(tasks)} tasks over {args.rounds} rounds")
            cancelled = [t for t, state in after.items() if state == "cancelled"]
            if cancelled:
                leaks.append(f"bob's cancels reached alice's tasks: {cancelled} are cancelled")
            gone = [t for t, state in after.items() if state == "gone"]
            if gone:
                leaks.append(f"bob's deletes reached alice's tasks: {gone} are gone")
            for leak in leaks:
                print("LEAK:", leak)
            print(f"{len(leaks)} leaks")
        finally:
            srv.stop()
    sys.exit(1 if leaks else 0)


if __name__ == "__main__":
    main()
