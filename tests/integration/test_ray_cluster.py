"""Cluster mode: the real service on a local three-node Ray cluster with fake resources.

One cluster for the session (Ray's own cost: about 1 GiB and 4 s here). Its nodes, each
pinned to a few logical CPUs, advertise different lanes:
  head     ris_lane_llm, ris_lane_image: 2 each, 6 CPUs (room for two servers' LLM and
           image workers: the co-placement test starts its own)
  speech-a ris_lane_tts (1 CPU)
  speech-b ris_lane_tts (1 CPU)
so the TTS lane runs two replicas, one on each speech node. The last test takes a speech node
away and brings another: the cluster's shape changes for tests after it. The server is a real `ris serve`
process joining the cluster by address; its workers are actors on these nodes, with the real
default models.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import Any

import httpx
import pytest

from ris import Client
from ris import messages as m

from .server import Server, kill, make_config, ris_status
from .waiting import post_in_background, wait_for, wait_state

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict[str, Any]]:
    """The cluster's address and, per lane resource, the ids of the nodes advertising it."""
    cluster = cluster_utils.Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={"num_cpus": 6, "resources": {"ris_lane_llm": 2, "ris_lane_image": 2}},
    )
    try:
        cluster.add_node(num_cpus=1, resources={"ris_lane_tts": 1})
        cluster.add_node(num_cpus=1, resources={"ris_lane_tts": 1})
        cluster.wait_for_nodes()
        hosts: dict[str, set[str]] = {}
        for node in ray.nodes():
            for name in node["Resources"]:
                if name.startswith("ris_lane_"):
                    hosts.setdefault(name, set()).add(node["NodeID"])
        yield {"address": cluster.address, "hosts": hosts, "cluster": cluster}
    finally:
        ray.shutdown()
        cluster.shutdown()


def cluster_config(tmp: Path, address: str, **lanes: dict[str, Any]) -> dict[str, Any]:
    lanes["tts"] = {"replicas": 2, "heartbeat_timeout_s": 3.0, **lanes.get("tts", {})}
    cfg = make_config(tmp, **lanes)
    cfg["cluster"] = {"engine": "ray", "address": address}
    return cfg


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory: pytest.TempPathFactory, ray_cluster: dict[str, Any]) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("ray")
    srv = Server(tmp, cluster_config(tmp, ray_cluster["address"], image={"min_cpu_share": 0.1})).start(
        timeout=300
    )
    yield srv
    srv.stop()


def workers(srv: Server, lane: str) -> list[dict[str, Any]]:
    return list(srv.stats()[lane]["workers"])


def thread_nice(pid: int) -> dict[int, int]:
    """Each thread of `pid` and its nice level, as the OS says."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = os.getpriority(os.PRIO_PROCESS, int(tid))
        except ProcessLookupError:
            pass  # ended since the listing
    return out


def long_synthesis(srv: Server, text: str) -> tuple[Any, list[Any], dict[str, Any]]:
    """A long synthesis posted in the background, and the TTS worker it is running on."""
    t, result = post_in_background(f"{srv.url}/api/tts/synthesize", {"text": text}, 120)
    found: list[dict[str, Any]] = []

    def one_running() -> bool:
        found[:] = [w for w in workers(srv, "tts") if w["running"]]
        return bool(found)

    wait_for(one_running, 30)
    return t, result, found[0]


def test_each_lane_lands_on_a_node_that_advertises_it(
    ray_server: Server, ray_cluster: dict[str, Any]
) -> None:
    hosts = ray_cluster["hosts"]
    for lane in ("llm", "tts", "image"):
        for w in workers(ray_server, lane):
            assert w["state"] == "ready", w
            assert w["node"] in hosts[f"ris_lane_{lane}"], (lane, w["node"], hosts)
            # The local binding, applied inside the actor: cores and threads from the config
            # (Ray would leave OMP_NUM_THREADS=1), no GPU for speech.
            assert w["threads"] == 1
            # At the lane's nice, every thread (Ray's own too), not Ray's 15 for its workers.
            want = 19 if lane == "image" else 0
            assert w["nice"] == want, (lane, w)
            assert set(thread_nice(w["pid"]).values()) == {want}, (lane, thread_nice(w["pid"]))
    # The image lane's minimum share, applied inside its actor: a cgroup (where the node lets
    # one be made) named after the actor, whose life it lasts, not after the raylet.
    (image,) = workers(ray_server, "image")
    share = image["cpu_share"]
    assert share is not None and share["share"] >= 0.1
    if share["mechanism"] == "cgroup_v1":
        assert share["cgroup"].endswith(f"/ris-{image['pid']}-image"), (share, image["pid"])
        # Its threads, Ray's own with the worker's, under SCHED_IDLE inside the group.
        assert share["policy"] == "idle" and os.sched_getscheduler(image["pid"]) == os.SCHED_IDLE
    tts = workers(ray_server, "tts")
    assert len(tts) == 2
    assert {w["node"] for w in tts} == hosts["ris_lane_tts"]  # one replica on each speech node
    assert all(w["cpu_affinity"] == [1] and w["cuda_visible_devices"] == "" for w in tts)
    assert all(w["node_ip"] for w in tts)
    # The console's view: `ris status` lists every replica with its node.
    status = ris_status(ray_server.url)
    for w in tts:
        assert f"on node {w['node'][:12]} at {w['node_ip']}" in status, status


def test_the_seed_api_answers_through_the_cluster(ray_server: Server) -> None:
    # cluster.link "direct", the default: every worker speaks with the server over its own
    # connection (the nodes are this machine's processes: the server reaches them).
    for lane in ("llm", "tts", "image"):
        assert {w["link"] for w in workers(ray_server, lane)} == {"direct"}, lane
    with Client(ray_server.url, timeout=120, max_retries=0) as c:
        tokens = list(c.generate_stream("Say hello.", max_tokens=8))
        assert len(tokens) >= 2  # streamed back token by token across the actor boundary
        speech = c.synthesize("Hello from a Ray node.")
        assert speech.duration_s > 0.5
        png = c.image("a red square", width=64, height=64, steps=2)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"  # bytes from the node, no shared disk


def test_two_tts_replicas_serve_at_once(ray_server: Server) -> None:
    text = "Two speech nodes share the work of this long passage. " * 12
    started = [
        post_in_background(f"{ray_server.url}/api/tts/synthesize", {"text": text}, 120) for _ in range(2)
    ]
    busy: list[list[int]] = []

    def both_running() -> bool:
        busy.append([w["running"] for w in workers(ray_server, "tts")])
        return busy[-1] == [1, 1]

    wait_for(both_running, 60)
    for t, result in started:
        t.join(120)
        assert result and result[0].status_code == 200, result[0].text if result else "no response"


def test_killed_actor_fails_its_task_and_the_lane_comes_back(ray_server: Server) -> None:
    text = "This passage keeps one speech node busy for a while. " * 40
    t, result, busy = long_synthesis(ray_server, text)
    restarts = busy["restarts"]
    kill(busy["pid"], signal.SIGKILL)  # the actor's process: the nodes share this machine
    t.join(30)
    assert result, "no response within 30 s"
    assert result[0].json()["error"]["code"] == "worker_crashed"

    def replaced() -> bool:
        return any(w["restarts"] > restarts and w["state"] == "ready" for w in workers(ray_server, "tts"))

    wait_for(replaced, 90)
    with Client(ray_server.url, timeout=60, max_retries=0) as c:
        assert c.synthesize("Back again.").duration_s > 0.3


def test_a_running_image_task_reports_progress_and_is_cancelled_across_the_wire(ray_server: Server) -> None:
    with Client(ray_server.url, timeout=60, max_retries=0) as c:
        task_id = c.generate_image("a long green field", width=128, height=128, steps=100)["task_id"]
        wait_for(lambda: (c.progress(task_id).get("step") or 0) >= 1, 60)  # steps reach the head
        assert c.cancel(task_id)["outcome"] == "requested"
        final = wait_state(c, task_id, ("cancelled", "failed", "succeeded"), timeout=30)
    assert final["status"] == "cancelled" and final["step"] < 100, final


def test_a_lane_no_node_can_host_is_refused_at_start(tmp_path: Path, ray_cluster: dict[str, Any]) -> None:
    # No node has a GPU, and only two advertise the speech lane.
    cfg = cluster_config(
        tmp_path, ray_cluster["address"], image={"device": "cuda:0"}, tts={"replicas": 3, "min_replicas": 3}
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ris", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "lanes.image: no node of the Ray cluster has resource 'GPU'" in done.stderr
    assert "lanes.tts.min_replicas: 3, but the Ray cluster's nodes can host 2" in done.stderr
    assert time.monotonic() - start < 60  # refused, not left pending


def test_a_lane_ray_cannot_place_is_reported_pending_and_refuses_requests(
    tmp_path: Path, ray_cluster: dict[str, Any], ray_server: Server
) -> None:
    """The start check counts the nodes' totals; ray_server's two replicas hold both speech
    nodes' ris_lane_tts, so this server's TTS actor waits for ever. Within seconds that is an
    error everywhere, with what it asks for, and its requests are refused, not queued."""
    cfg = cluster_config(tmp_path, ray_cluster["address"], tts={"replicas": 1}, image={"enabled": False})
    srv = Server(tmp_path, cfg)
    srv.launch()
    try:
        start = time.monotonic()
        pending: dict[str, Any] = {}

        def reported() -> bool:
            try:
                pending.update(httpx.get(f"{srv.url}/ready", timeout=5).json().get("pending", {}))
            except httpx.HTTPError:
                return False  # not listening yet
            return "tts" in pending

        wait_for(reported, 60)
        assert time.monotonic() - start < 30  # the goal: serving or reported within 30 s
        assert "asks for {CPU: 1, ris_lane_tts: 1}" in pending["tts"], pending
        assert "ris_lane_tts" not in pending["tts"].split("free in the cluster now:")[1], pending
        wait_for(lambda: workers(srv, "llm")[0]["state"] == "ready", 240)  # the others serve
        r = httpx.post(f"{srv.url}/api/tts/synthesize", json={"text": "Hello."}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "lane_pending", r.text
        (tts,) = workers(srv, "tts")
        assert tts["state"] == "pending" and "Ray has not placed the tts worker" in tts["error"]
        assert "pending" in ris_status(srv.url)
        assert "Ray has not placed the tts worker" in srv.log_path.read_text()  # and the log says it
    finally:
        proc = srv.proc
        srv.stop()
    # Ended as SIGTERM ends a local server: Ray's own handler made it exit with status 15 after
    # uvicorn's graceful stop (a failure to systemd's Restart=on-failure and to its stop).
    assert proc is not None
    assert proc.returncode == -signal.SIGTERM, proc.returncode


def test_an_image_lane_that_yields_is_placed_with_the_llm_and_sees_its_activity(
    tmp_path: Path, ray_cluster: dict[str, Any]
) -> None:
    # 'block' for the whole LLM request: the image worker pauses while the LLM works, which
    # it can only see through the activity board the two actors share on their node.
    cfg = cluster_config(
        tmp_path,
        ray_cluster["address"],
        # On a cluster, core numbers of different machines say nothing of sharing: the config
        # names the lane it yields to, and that places the two on one node.
        image={"preemption": {"policy": "block", "scope": "request", "yield_to": ["llm"]}},
        tts={"enabled": False, "replicas": 1},
    )
    # The other way for messages (cluster.link "ray"): through Ray's calls, end to end.
    cfg["cluster"]["link"] = "ray"
    # A board a SIGKILLed server left in /dev/shm (every fake node shares this machine's):
    # its placement group is gone, so the next server on the node sweeps it.
    stale = shared_memory.SharedMemory(f"ris-board-{'0' * 36}", create=True, size=2)
    stale.close()
    resource_tracker.unregister(stale._name, "shared_memory")  # type: ignore[attr-defined]
    srv = Server(tmp_path, cfg).start(timeout=300)
    try:
        (llm,), (image,) = workers(srv, "llm"), workers(srv, "image")
        assert llm["link"] == image["link"] == "ray"
        assert llm["node"] == image["node"] in ray_cluster["hosts"]["ris_lane_image"]
        assert not Path(f"/dev/shm/{stale.name}").exists()
        assert [p for p in Path("/dev/shm").glob("ris-board-*")], "the server's own board"
        with Client(srv.url, timeout=120, max_retries=0) as c:
            task_id = c.generate_image("a slow blue square", width=128, height=128, steps=40)["task_id"]
            wait_for(lambda: c.progress(task_id)["status"] == "running", 60)
            c.generate("Tell a story.", max_tokens=64)
            c.wait(task_id, timeout=240)
            result = c.task(task_id)["result"]
        assert result["pauses"] >= 1 and result["paused_s"] > 0, result
    finally:
        srv.stop()


def test_messages_reach_a_lane_actor_in_the_order_they_were_sent(ray_cluster: dict[str, Any]) -> None:
    """What the Ray worker relies on instead of sequence numbers: put() runs on a concurrency
    group of one thread, and Ray runs one submitter's calls to it in the order sent (its docs
    promise that only for single-threaded actors; this actor has three threads). Arguments of
    mixed sizes, so some wait for their bytes longer than the ones after them."""
    import random

    from ris.runtime.workers.ray import ACTOR_OPTIONS, LaneActor

    class Probe(LaneActor):
        def __init__(self) -> None:  # the inbox only: no worker, no board
            from ris.runtime.workers.ray import _Inbox

            self._inbox = _Inbox()

        def received(self, n: int) -> list[int]:
            return [int(str(self._inbox.recv()).split(":")[0]) for _ in range(n)]

    probe = ray.remote(**ACTOR_OPTIONS)(Probe).options(num_cpus=0).remote()
    try:
        rng = random.Random(7)
        for i in range(600):
            probe.put.remote(f"{i}:" + "x" * rng.choice([10, 50_000, 300_000, 2_000_000]))
        assert ray.get(probe.received.remote(600), timeout=120) == list(range(600))
    finally:
        ray.kill(probe)


def test_a_yields_value_is_taken_when_here_and_awaited_when_not(ray_cluster: dict[str, Any]) -> None:
    """The stream's reader takes a yield's value without another trip through the loop when it
    is in this process already (always, in practice), still waits for one that is not, and a
    failed task raises what awaiting its ref raises."""
    import asyncio

    from ris.runtime.workers.ray import _value

    def later(value: str, delay: float) -> str:
        time.sleep(delay)
        return value

    def fails() -> None:
        raise ValueError("no")

    class Counts:
        def stream(self, n: int) -> Iterator[int]:
            for i in range(n):
                yield 10 * i

    remote = ray.remote(num_cpus=0)(later)
    started = time.monotonic()
    assert asyncio.run(_value(remote.remote("later", 1.0))) == "later"
    assert time.monotonic() - started >= 0.9

    async def read(n: int) -> list[int]:
        stream = ray.remote(num_cpus=0)(Counts).remote().stream.options(num_returns="streaming").remote(n)
        return [await _value(await stream.__anext__()) for _ in range(n)]

    assert asyncio.run(read(5)) == [0, 10, 20, 30, 40]

    failed = ray.remote(num_cpus=0, max_retries=0)(fails).remote()
    ray.wait([failed], timeout=30)
    with pytest.raises(ValueError, match="no"):
        asyncio.run(_value(failed))


def test_a_worker_exiting_in_an_actor_gets_the_failures_it_just_sent_out_first(
    ray_cluster: dict[str, Any],
) -> None:
    """A worker past its memory ceiling sends its tasks' worker_out_of_memory, then exits
    (os._exit): in an actor the messages only queue for the stream's next yield, and they must
    reach the caller before the process goes. The real exit path (worker_main's sender) in a
    real actor, read through the real stream."""
    from ris.runtime.workers.ray import ACTOR_OPTIONS, LaneActor

    class Dying(LaneActor):
        def __init__(self) -> None:  # the outbox and what a yield reads: no worker, no model
            import psutil

            from ris.preemption.board import ActivityBoard
            from ris.runtime.workers.ray import _Outbox

            self._lane = "probe"
            self._board = ActivityBoard(("probe",), array=bytearray(1))
            self._outbox = _Outbox()
            self._proc = psutil.Process()
            self._usage_at = None
            self._last_usage = (0, 0.0, 0.0)
            self._node_id, self._node_ip = "node", "127.0.0.1"
            self._listener, self._linked, self._first = None, False, False

        def fail_and_exit(self, n: int) -> None:
            import threading

            from ris import messages as m
            from ris.runtime.worker_main import EXIT_OUT_OF_MEMORY, _SerialSender

            def worker() -> None:
                failures = [m.TaskError(f"t{i}", "worker_out_of_memory", "over") for i in range(n)]
                _SerialSender(self._outbox).fail_and_exit(EXIT_OUT_OF_MEMORY, "out of memory", failures)

            threading.Thread(target=worker, daemon=True).start()

    actor = ray.remote(**ACTOR_OPTIONS)(Dying).options(num_cpus=0).remote()
    try:
        stream = actor.stream.remote()
        actor.fail_and_exit.remote(3)
        received: list[Any] = []
        deadline = time.monotonic() + 60
        with pytest.raises(Exception):  # noqa: B017, PT011 - Ray's error for a dead actor, whichever
            while time.monotonic() < deadline:
                batch = ray.get(next(stream), timeout=30)
                received.extend(batch.messages)
        assert received[0] == m.WorkerExiting("out of memory")
        assert [(msg.task_id, msg.code) for msg in received[1:]] == [
            (f"t{i}", "worker_out_of_memory") for i in range(3)
        ]
    finally:
        ray.kill(actor)


def test_a_worker_exiting_over_its_direct_link_gets_the_failures_it_just_sent_out_first(
    ray_cluster: dict[str, Any],
) -> None:
    """The same exit over the direct link (cluster.link "direct"), with tasks the dying worker
    never read in its socket and a server that reads late: a socket closed with unread bytes
    is reset, and the reset throws away what the server had not read. The worker's flush ends
    the link first (end_link), so the server reads every failure, then the end. A real actor,
    the real listener and key exchange, the real exit path."""
    import secrets

    from ris.runtime.workers.link import connect_link
    from ris.runtime.workers.ray import ACTOR_OPTIONS, LaneActor

    class DyingLinked(LaneActor):
        def __init__(self, key: bytes) -> None:  # the listener only: no worker, no model
            from ris.runtime.workers.link import LinkListener

            self._probe = LinkListener("127.0.0.1", key)

        def address(self) -> tuple[str, int]:
            return self._probe.address

        def fail_and_exit(self, n: int) -> None:
            import threading

            from ris import messages as m
            from ris.runtime.worker_main import EXIT_OUT_OF_MEMORY, _SerialSender
            from ris.runtime.workers.link import SocketOut

            def worker() -> None:
                conn = self._probe.accept(30)
                assert conn is not None
                time.sleep(0.3)  # the server's tasks arrive meanwhile, never read
                failures = [m.TaskError(f"t{i}", "worker_out_of_memory", "over") for i in range(n)]
                _SerialSender(SocketOut(conn)).fail_and_exit(EXIT_OUT_OF_MEMORY, "out of memory", failures)

            threading.Thread(target=worker, daemon=True).start()

    key = secrets.token_bytes(32)
    actor = ray.remote(**ACTOR_OPTIONS)(DyingLinked).options(num_cpus=0).remote(key)
    try:
        address = ray.get(actor.address.remote(), timeout=60)
        actor.fail_and_exit.remote(3)
        conn = connect_link(address, key, 10)
        for i in range(5):
            conn.send(m.CancelTask(f"unread{i}"))  # the bytes matter, not what they say
        time.sleep(1.0)  # a server busy elsewhere: the worker has exited by now
        received: list[Any] = []
        with pytest.raises(EOFError):
            while True:
                received.append(conn.recv())
        conn.close()
        assert received[0] == m.WorkerExiting("out of memory")
        assert [(msg.task_id, msg.code) for msg in received[1:]] == [
            (f"t{i}", "worker_out_of_memory") for i in range(3)
        ]
    finally:
        ray.kill(actor)


def test_a_node_lost_mid_task_fails_it_and_the_lane_returns_with_a_new_node(
    ray_server: Server, ray_cluster: dict[str, Any]
) -> None:
    cluster = ray_cluster["cluster"]
    text = "This passage keeps one speech node busy while it goes away. " * 40
    t, result, busy = long_synthesis(ray_server, text)
    (node,) = [n for n in cluster.list_all_nodes() if n.node_id == busy["node"]]
    lost_at = time.monotonic()
    cluster.remove_node(node, allow_graceful=False)
    t.join(30)
    assert result, "no response within 30 s"
    # Within the heartbeat timeout (3 s here) and some polling: a clear code, no hang.
    assert time.monotonic() - lost_at < 3.0 + 5.0
    assert result[0].json()["error"]["code"] in ("worker_crashed", "worker_timeout"), result[0].text
    with Client(ray_server.url, timeout=60, max_retries=0) as c:
        assert c.synthesize("The other node serves on.").duration_s > 0.3
    # A restart while the node is missing starts short: one replica serves, the other waits
    # for a node (pending, said), and nobody edits the config.
    ray_server.stop()
    ray_server.launch()

    def started_short() -> bool:
        try:
            states = sorted(w["state"] for w in workers(ray_server, "tts"))
            others = [w["state"] for lane in ("llm", "image") for w in workers(ray_server, lane)]
            return states == ["pending", "ready"] and set(others) == {"ready"}
        except httpx.HTTPError:
            return False  # not listening yet

    wait_for(started_short, 240)
    # Serving short is ready for a load balancer; the waiting replica is listed, not hidden.
    ready = httpx.get(f"{ray_server.url}/ready", timeout=10)
    assert ready.status_code == 200 and "tts" in ready.json()["pending"], ready.text
    # Said at start when Ray already counts the node lost, else once it has waited (a node
    # killed seconds before the start is still listed alive for a while).
    log = ray_server.log_path.read_text()
    assert "lanes.tts (replica 2) waits for a node" in log or "Ray has not placed the tts worker" in log
    with Client(ray_server.url, timeout=60, max_retries=0) as c:
        assert c.synthesize("One replica serves while the other waits.").duration_s > 0.3
        # The waiting replica is placed when a node with the lane's resource joins, and serves.
        cluster.add_node(num_cpus=1, resources={"ris_lane_tts": 1})
        wait_for(lambda: [w["state"] for w in workers(ray_server, "tts")] == ["ready", "ready"], 120)
        nodes = {w["node"] for w in workers(ray_server, "tts")}
        assert node.node_id not in nodes and len(nodes) == 2
        assert c.synthesize("Back on a new node.").duration_s > 0.3
