"""The image lane through the real server and SDK, with the embedded tiny pipeline."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ris import Client, RISError

from .server import Server, with_plugins
from .waiting import wait_state

pytestmark = pytest.mark.slow

LONG: dict[str, Any] = {"prompt": "a long one", "width": 256, "height": 256, "steps": 100}


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


@pytest.fixture()
def idle_image_lane(client: Client) -> Client:
    """Cancel leftovers so each test starts with an empty image queue."""
    for t in client.image_tasks(status="queued") + client.image_tasks(status="running"):
        client.cancel(t["task_id"])
    return client


def test_submit_poll_fetch_png_of_the_requested_size(idle_image_lane: Client) -> None:
    c = idle_image_lane
    accepted = c.generate_image("a red apple", width=96, height=64, steps=4, seed=1)
    assert accepted["status"] in ("queued", "running") and accepted["model"] == "tiny-sd"
    seen: list[dict[str, Any]] = []
    final = c.wait(accepted["task_id"], on_progress=seen.append, poll_s=0.02)
    assert final["status"] == "succeeded" and final["step"] == final["total_steps"] == 4
    assert final["progress"] == 1.0
    steps = [p["step"] for p in seen]
    assert steps == sorted(steps)  # progress only moves forward
    # Short of 1 while it runs, the last step's included: the decode after it is work too.
    assert all(p["progress"] < 1 for p in seen if p["status"] == "running"), seen
    png = c.result(accepted["task_id"])
    assert png_size(png) == (96, 64)
    # HEAD as GET, without the body (it was 405).
    head = httpx.head(f"{c._http.base_url}/api/image/result/{accepted['task_id']}")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(png)) and not head.content


def test_a_deleted_image_is_gone_from_disk_and_every_route(server: Server, idle_image_lane: Client) -> None:
    """DELETE /api/tasks/{id}: the PNG and the record go before the answer, the id answers 404
    on every route after; a task still running is refused with a word on what to do."""
    c = idle_image_lane
    done = c.generate_image("a pear", width=64, height=64, steps=2, seed=3)["task_id"]
    assert c.wait(done, timeout=300)["status"] == "succeeded"
    png = Path(server.config["data_dir"]) / "images" / f"{done}.png"
    assert png.is_file() and c.result(done)[:4] == b"\x89PNG"
    running = c.generate_image(**LONG)["task_id"]
    wait_state(c, running, ("running",))
    with pytest.raises(RISError) as refused:
        c.delete(running)
    assert (refused.value.status, refused.value.code) == (409, "task_not_finished")
    assert "cancel it first" in str(refused.value)
    assert c.delete(done) == {"task_id": done, "object": "task.deleted", "deleted": True}
    assert not png.exists()
    for method, path in [
        ("GET", f"/api/tasks/{done}"),
        ("GET", f"/api/image/progress/{done}"),
        ("GET", f"/api/image/result/{done}"),
        ("DELETE", f"/api/tasks/{done}"),
    ]:
        assert c._http.request(method, path).status_code == 404, (method, path)
    assert done not in {t["task_id"] for t in c.tasks()} | {t["task_id"] for t in c.image_tasks()}
    c.cancel(running)


def test_same_seed_same_image(idle_image_lane: Client) -> None:
    c = idle_image_lane
    a = c.image("a boat", width=64, height=64, steps=2, seed=5)
    b = c.image("a boat", width=64, height=64, steps=2, seed=5)
    assert a == b


def test_cancel_running_and_queued(idle_image_lane: Client) -> None:
    c = idle_image_lane
    running = c.generate_image(**LONG)["task_id"]
    queued = c.generate_image(**LONG)["task_id"]
    prog = wait_state(c, running, ("running",))
    wait_state(c, running, ("running",))
    assert c.progress(queued)["queue_position"] == 0
    r = httpx.get(f"{c._http.base_url}/api/image/result/{running}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_ready", r.text
    assert c.cancel(queued)["outcome"] == "cancelled"
    assert c.progress(queued)["status"] == "cancelled"
    # The image route's answer has the fields the tasks route's (the SDK's cancel) has.
    again = httpx.post(f"{c._http.base_url}/api/image/cancel/{queued}").json()
    assert again == {
        "task_id": queued,
        "outcome": "finished",
        "status": "cancelled",
        "state": "cancelled",
        "cancelled": False,
    }
    assert c.cancel(running)["outcome"] == "requested"
    final = wait_state(c, running, ("cancelled", "failed", "succeeded"), timeout=30)
    assert final["status"] == "cancelled" and final["step"] < LONG["steps"]
    assert prog["total_steps"] in (None, LONG["steps"])
    with pytest.raises(RISError) as exc:
        c.wait(running)
    assert exc.value.code == "cancelled"
    # Ended without an image: not "not_ready", which a client would poll for ever.
    r = httpx.get(f"{c._http.base_url}/api/image/result/{running}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "cancelled", r.text
    assert r.json()["progress"]["status"] == "cancelled"
    assert r.headers["x-should-retry"] == "false"  # OpenAI's SDKs retry a 409 (was missing here)


def test_priority_orders_the_queue_and_positions_move(idle_image_lane: Client) -> None:
    c = idle_image_lane
    blocker = c.generate_image(**LONG)["task_id"]
    wait_state(c, blocker, ("running",))
    small: dict[str, Any] = {"prompt": "x", "width": 64, "height": 64, "steps": 2}
    low1 = c.generate_image(**small)["task_id"]
    low2 = c.generate_image(**small)["task_id"]
    high = c.generate_image(**small, priority=5)["task_id"]
    assert [c.progress(t)["queue_position"] for t in (high, low1, low2)] == [0, 1, 2]
    c.cancel(blocker)
    order = []
    for t in (high, low1, low2):
        c.wait(t)
    # Finished in priority order: compare their start times.
    order = sorted((high, low1, low2), key=lambda t: c.task(t)["started_at"])
    assert order == [high, low1, low2]


@pytest.fixture(scope="module")
def holding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A service whose image lane runs tests/plugins/ris_hold.py: a task prompted "hold" runs
    until it is cancelled, so what is queued behind it stays put until the test moves it."""
    image = {"enabled": True, "cores": [0], "default_model": "held", "models": {"held": {"backend": "hold"}}}
    srv = with_plugins(tmp_path_factory.mktemp("hold"), ["ris_hold"], {"image": image})
    with Client(srv.url, timeout=60, max_retries=0) as c:
        yield c
    srv.stop()


def test_queue_position_counts_down(holding: Client) -> None:
    c = holding
    held = [c.generate_image("hold", width=64, height=64)["task_id"] for _ in range(3)]
    quick = c.generate_image("quick", width=64, height=64)["task_id"]
    wait_state(c, held[0], ("running",))
    assert [c.progress(t)["queue_position"] for t in (held[1], held[2], quick)] == [0, 1, 2]
    c.cancel(held[0])  # the running task ends: the first in the queue starts, the others move up
    wait_state(c, held[1], ("running",))
    assert [c.progress(t)["queue_position"] for t in (held[2], quick)] == [0, 1]
    assert c.cancel(held[2])["outcome"] == "cancelled"  # a queued task leaves: the one behind moves up
    assert c.progress(quick)["queue_position"] == 0
    c.cancel(held[1])
    assert c.wait(quick)["status"] == "succeeded"
    assert [c.progress(t)["status"] for t in held] == ["cancelled"] * 3


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"prompt": "x", "width": 100}, 422, "multiple of 8"),
        # The whole rule at once: 1 said "a multiple of 8", then 8 said ">= 64".
        ({"prompt": "x", "width": 1}, 422, "64 to 2048 and a multiple of 8"),
        ({"prompt": "x", "width": 4096}, 422, "2048"),
        ({"prompt": "x", "width": 2048, "height": 2048}, 422, "limit is 1048576"),
        ({"prompt": "x", "steps": 500}, 422, "limit of 100"),
        ({"prompt": "x", "steps": 0}, 422, "steps"),
        ({"prompt": ""}, 422, "prompt"),
        ({"prompt": "x", "model": "sdxl"}, 404, "tiny-sd"),
        # A catalogued model not pulled: the command that gets it (use_turbo: test_spec_examples).
        ({"prompt": "x", "model": "sdxl-turbo"}, 404, "ris pull sdxl-turbo"),
        ({"prompt": "x", "model": "mobilediffusion"}, 404, "no public weights"),
    ],
)
def test_bad_image_requests(server: Server, body: dict[str, Any], status: int, needle: str) -> None:
    r = httpx.post(f"{server.url}/api/image/generate", json=body, timeout=10)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


def test_what_a_request_asks_and_will_not_get_is_said_in_its_warnings(server: Server) -> None:
    """A negative prompt at guidance <= 1 does nothing (diffusers' classifier-free guidance runs
    above 1 only), and use_turbo with a named model is not applied: both said, not dropped."""
    small = {"prompt": "x", "width": 64, "height": 64, "steps": 1}
    cases = [
        ({**small, "negative_prompt": "blur", "guidance": 1.0}, ["negative_prompt: unused at guidance 1"]),
        ({**small, "negative_prompt": "blur"}, []),  # tiny-sd's default guidance, 5: used
        ({**small, "model": "tiny-sd", "use_turbo": True}, ["use_turbo: ignored"]),
    ]
    for body, said in cases:
        r = httpx.post(f"{server.url}/api/image/generate", json=body, timeout=10)
        assert r.status_code == 202, r.text
        warnings = r.json()["warnings"]
        assert len(warnings) == len(said) and all(
            w.startswith(s) for w, s in zip(warnings, said, strict=True)
        ), r.text
        httpx.post(f"{server.url}/api/image/cancel/{r.json()['task_id']}", timeout=10)


def test_unknown_image_task(server: Server) -> None:
    for path in ("progress", "result"):
        r = httpx.get(f"{server.url}/api/image/{path}/{'a' * 32}", timeout=10)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_image_worker_runs_at_lowest_priority_on_shared_cores(server: Server) -> None:
    import psutil

    proc = psutil.Process(server.worker_pid("image"))
    assert proc.nice() == 19
    assert sorted(proc.cpu_affinity()) == sorted(server.config["lanes"]["image"]["cores"])


def test_the_image_worker_writes_no_progress_bar_into_the_servers_log(server: Server) -> None:
    """diffusers' loading bar ignores HF_HUB_DISABLE_PROGRESS_BARS; its tqdm lock was also a
    named semaphore left in /dev/shm by a killed service."""
    log = server.log_path.read_text(errors="replace")
    assert "Loading pipeline components" not in log and "it/s]" not in log, log[-2000:]
