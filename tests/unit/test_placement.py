"""Cluster mode without a cluster: what each lane's worker asks Ray for, which configs no set
of nodes can host (and the words that say so), and the config rules for Ray."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ris.config import Config, ConfigError
from ris.config.load import parse_config
from ris.machine import MachineInfo
from ris.preemption.board import ActivityBoard
from ris.preemption.policy import Activity
from ris.runtime.workers.ray_placement import (
    colocated_groups,
    demand,
    refusals,
    shortfalls,
    stale_boards,
    threads_in_cluster,
)

HEAD = MachineInfo(cores=(0, 1), gpus=0)  # the server's own machine: no GPU, two cores


def cluster(**lanes: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "cluster": {"engine": "ray", "address": "10.0.0.1:6379"},
        "lanes": {
            "llm": {
                "cores": [0],
                "threads": 1,
                "default_model": "m",
                "models": {"m": {"backend": "llama_cpp", "source": "/x.gguf"}},
            },
            "tts": {"cores": [1], "default_model": "e", "models": {"e": {"backend": "espeak"}}},
            "image": {"enabled": False, "priority_class": "batch"},
        },
    }
    for lane, override in lanes.items():
        data["lanes"][lane].update(override)
    return data


def with_image(**image: Any) -> dict[str, Any]:
    return cluster(
        llm={"device": "cuda:0"},
        image={
            "enabled": True,
            "device": "cuda:0",
            "cores": [2, 3],
            "default_model": "t",
            "models": {"t": {"backend": "diffusers", "source": "tiny"}},
            **image,
        },
    )


def cfg(data: dict[str, Any]) -> Config:
    return parse_config(data, HEAD)


def test_a_worker_asks_for_its_lane_resource_its_cores_and_its_gpu() -> None:
    c = cfg(cluster(llm={"device": "cuda:3", "cores": [4, 5, 6]}, tts={"cores": None, "threads": 2}))
    llm = demand(c, "llm")
    assert llm.as_bundle() == {"CPU": 3.0, "GPU": 1.0, "ris_lane_llm": 1.0}
    assert demand(c, "tts").as_bundle() == {"CPU": 2.0, "ris_lane_tts": 1.0}
    # The node's cores and GPUs, not this machine's: cuda:3 and core 6 do not exist here.
    assert threads_in_cluster(c, "llm") == 1 and threads_in_cluster(c, "tts") == 2


def test_an_image_lane_yielding_on_the_llms_gpu_is_placed_with_it() -> None:
    c = cfg(with_image())
    assert colocated_groups(c) == [("llm", "image")]
    # One GPU between the two: Ray packs both on it.
    assert demand(c, "llm").num_gpus == 0.5 and demand(c, "image").num_gpus == 0.5
    # Told not to yield, it needs no partner and gets a GPU of its own.
    apart = cfg(with_image(preemption={"policy": "none"}))
    assert colocated_groups(apart) == [] and demand(apart, "image").num_gpus == 1.0


def test_lanes_placed_together_have_one_replica_each() -> None:
    with pytest.raises(ConfigError) as exc:
        cfg(with_image(replicas=2))
    assert "lanes.image.replicas: 2; the image lane yields to llm on cuda:0" in str(exc.value)


def test_a_ray_cluster_needs_an_address_and_a_local_one_none() -> None:
    no_address = cluster()
    no_address["cluster"] = {"engine": "ray"}
    with pytest.raises(ConfigError, match="cluster.address is missing"):
        cfg(no_address)
    stray = cluster()
    stray["cluster"] = {"engine": "local", "address": "10.0.0.1:6379"}
    with pytest.raises(ConfigError, match="cluster.engine is 'local'"):
        cfg(stray)


SPEECH_NODE = {"CPU": 1.0, "ris_lane_tts": 1.0}
LLM_NODE = {"CPU": 4.0, "GPU": 1.0, "ris_lane_llm": 1.0}


def test_a_cluster_that_hosts_every_lane_is_not_refused() -> None:
    assert refusals(cfg(cluster(tts={"replicas": 2})), [LLM_NODE, SPEECH_NODE, SPEECH_NODE]) == []


def test_a_lane_resource_no_node_advertises_is_named_with_the_command_that_adds_it() -> None:
    (problem,) = refusals(cfg(cluster(tts={"replicas": 2})), [LLM_NODE])
    assert problem.startswith("lanes.tts: no node of the Ray cluster has resource 'ris_lane_tts' >= 1")
    assert """ray start --resources='{"ris_lane_tts": 2}'""" in problem


def test_a_gpu_lane_on_cpu_nodes_is_refused_naming_the_gpu() -> None:
    (problem,) = refusals(
        cfg(cluster(llm={"device": "cuda:0"})), [{"CPU": 8.0, "ris_lane_llm": 1.0}, SPEECH_NODE]
    )
    assert (
        "lanes.llm: no node of the Ray cluster has resource 'GPU' >= 1 (the most any node has: 0)" == problem
    )


def test_more_replicas_than_nodes_can_host_start_short_unless_min_replicas_says_otherwise() -> None:
    """A node lost: the server starts with the replicas it can place (the rest wait for a node),
    unless min_replicas asks for more than the nodes hold."""
    nodes = [LLM_NODE, SPEECH_NODE, SPEECH_NODE]
    assert refusals(cfg(cluster(tts={"replicas": 3})), nodes) == []
    assert shortfalls(cfg(cluster(tts={"replicas": 3})), nodes) == [
        "lanes.tts (replica 3) waits for a node: the Ray cluster cannot host it now"
    ]
    (problem,) = refusals(cfg(cluster(tts={"replicas": 3, "min_replicas": 3})), nodes)
    assert problem.startswith("lanes.tts.min_replicas: 3, but the Ray cluster's nodes can host 2 worker(s)")
    assert shortfalls(cfg(cluster(tts={"replicas": 2})), nodes) == []


def test_resources_spread_over_nodes_that_none_has_together_are_refused() -> None:
    gpu_only = {"CPU": 1.0, "GPU": 1.0}
    (problem,) = refusals(
        cfg(cluster(llm={"device": "cuda:0"})), [gpu_only, {"CPU": 1.0, "ris_lane_llm": 1.0}, SPEECH_NODE]
    )
    assert "no single node of the Ray cluster has all of" in problem


def test_lanes_placed_together_need_one_node_with_room_for_both() -> None:
    c = cfg(with_image())
    # The LLM asks for 1 CPU, the image lane for 2 (its cores): 3 on one node.
    gpu_box = {"CPU": 2.0, "GPU": 1.0, "ris_lane_llm": 1.0, "ris_lane_image": 1.0}
    problems = refusals(c, [gpu_box, SPEECH_NODE])
    assert len(problems) == 1 and problems[0].startswith("lanes llm and image (placed together")
    assert refusals(c, [{**gpu_box, "CPU": 3.0}, SPEECH_NODE]) == []


def test_a_board_attached_by_name_is_one_board() -> None:
    name = "ris-test-board-unit"
    llm_side = ActivityBoard.attach(("llm", "image"), name)
    image_side = ActivityBoard.attach(("llm", "image"), name)
    try:
        llm_side.writer("llm")(Activity.PREFILL)
        assert image_side.reader(["llm"])() == [int(Activity.PREFILL)]
        llm_side.set("llm", Activity.IDLE)
        assert image_side.get("llm") is Activity.IDLE
        assert image_side.idle_since(["llm"])() == llm_side.idle_since(["llm"])() != [0.0]  # when it went
    finally:
        from multiprocessing import shared_memory

        shared_memory.SharedMemory(name).unlink()


def test_an_address_where_no_head_answers_is_refused_at_once() -> None:
    pytest.importorskip("ray")
    from ris.launch import free_port
    from ris.runtime.workers.ray_cluster import check_cluster

    data = cluster()
    data["cluster"]["address"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ConfigError, match="no Ray head answers there"):
        check_cluster(cfg(data))


def test_an_address_where_another_service_listens_is_refused_within_seconds() -> None:
    """An HTTP server where the head should be: Ray itself would hang past two minutes."""
    import http.server
    import threading
    import time

    pytest.importorskip("ray")
    from ris.runtime.workers.ray_cluster import check_cluster

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        data = cluster()
        data["cluster"]["address"] = f"127.0.0.1:{web.server_address[1]}"
        start = time.monotonic()
        with pytest.raises(ConfigError, match="something listens there but it is not a Ray head"):
            check_cluster(cfg(data))
        assert time.monotonic() - start < 10
    finally:
        web.shutdown()
        web.server_close()


def test_serve_with_ray_turns_a_local_config_into_a_cluster_one(tmp_path: Path) -> None:
    from ris.cli import _load, build_parser

    local = cluster()
    del local["cluster"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(local))
    args = build_parser().parse_args(["config", "--config", str(path), "--ray", "10.0.0.9:6379"])
    loaded = _load(args)
    assert (loaded.cluster.engine, loaded.cluster.address) == ("ray", "10.0.0.9:6379")


def test_the_outbox_gives_what_was_written_since_the_last_drain_in_order() -> None:
    pytest.importorskip("ray")
    from ris.runtime.workers.ray import _Outbox

    out = _Outbox()
    assert out.drain(0.01) == ([], False)  # nothing yet: a quiet yield, after the timeout
    out.send("start")
    out.send("token")
    assert out.drain(0.01) == (["start", "token"], False)
    out.send("done")
    out.end()
    assert out.drain(5) == (["done"], True)  # at once: it has something
    assert out.drain(5) == ([], True)  # ended: no wait


def test_a_full_outbox_holds_the_worker_until_the_stream_reads() -> None:
    # A server that stops reading must not let a worker's messages pile up in the actor.
    pytest.importorskip("ray")
    from ris.runtime.workers.ray import _Outbox

    out = _Outbox(limit=3)
    sent: list[int] = []

    def worker() -> None:
        for n in range(5):
            out.send(n)
            sent.append(n)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while len(sent) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.1)  # room for a fourth send, were it not held
    assert sent == [0, 1, 2]
    assert out.drain(1) == ([0, 1, 2], False)  # the read frees the room: the worker goes on
    t.join(5)
    assert not t.is_alive() and sent == [0, 1, 2, 3, 4]
    assert out.drain(1) == ([3, 4], False)


def test_a_worker_about_to_exit_waits_until_the_stream_has_yielded_its_last_messages() -> None:
    # os._exit in an actor would drop what the stream had not yielded yet: the task failures a
    # worker sends just before it exits (out of memory) must reach the server first.
    pytest.importorskip("ray")
    from ris.runtime.workers import ray as ray_workers

    out = ray_workers._Outbox()
    assert out.flush(0.05) is False  # the stream has not come back for more: not flushed
    yielded: list[list[object]] = []
    flushed: list[float] = []

    def stream() -> None:  # the actor's stream(): drain, yield, drain again
        for _ in range(3):
            messages, _ended = out.drain(0.2)
            if messages:
                yielded.append(messages)

    out.send("error t1")
    out.send("error t2")
    t = threading.Thread(target=stream, daemon=True)
    start = time.monotonic()
    t.start()
    assert out.flush(5.0) is True
    flushed.append(time.monotonic() - start)
    # Both taken by one drain, and the stream back in drain() for more: the batch was yielded,
    # and the grace for Ray's report passed too.
    assert yielded == [["error t1", "error t2"]]
    assert flushed[0] >= ray_workers.FLUSH_GRACE_S
    t.join(5)


def test_lanes_that_each_fit_but_not_together_are_refused_before_one_waits_for_ever() -> None:
    """The documented head on a 2-CPU machine advertising both lanes: the LLM (1 CPU) and the
    image lane (2 CPUs, its cores) each fit; together they ask for 3."""
    c = cfg(
        cluster(
            tts={"enabled": False},
            image={
                "enabled": True,
                "cores": [0, 1],
                "default_model": "t",
                "models": {"t": {"backend": "diffusers", "source": "tiny"}},
            },
        )
    )
    head = {"CPU": 2.0, "ris_lane_llm": 1.0, "ris_lane_image": 1.0}
    (problem,) = refusals(c, [head])
    assert problem.startswith("lanes.llm, lanes.image: each fits on a node alone, but not all at once")
    assert "(Ray would keep 1 worker pending for ever)" in problem
    assert "together they ask for {CPU: 3, ris_lane_image: 1, ris_lane_llm: 1}" in problem
    assert "node 1: {CPU: 2, ris_lane_image: 1, ris_lane_llm: 1}" in problem
    assert refusals(c, [{**head, "CPU": 3.0}]) == []
    # A placement a first fit would miss is still found: the 2-CPU image worker takes the
    # 2-CPU node, the LLM the 1-CPU one.
    assert refusals(c, [{**head, "CPU": 1.0}, {**head, "CPU": 2.0}]) == []


def test_replicas_count_each_in_the_packing() -> None:
    c = cfg(cluster(tts={"replicas": 2}))
    both = {"CPU": 2.0, "ris_lane_llm": 1.0, "ris_lane_tts": 2.0}
    assert refusals(c, [both, SPEECH_NODE]) == []
    assert refusals(c, [both]) == []  # the LLM and one TTS replica: the least it starts with
    assert shortfalls(c, [both]) == [
        "lanes.tts (replica 2) waits for a node: the Ray cluster cannot host it now"
    ]
    (problem,) = refusals(cfg(cluster(tts={"replicas": 2, "min_replicas": 2})), [both])  # 3 CPUs, 2
    assert "lanes.tts (replica 2)" in problem and "not all at once" in problem


def test_on_a_cluster_lanes_share_a_node_by_intent_not_by_core_numbers() -> None:
    """`cores: [1]` on the image box and on the speech box are different cores: an image lane
    that pauses for real-time work is placed with a lane only when it shares its GPU or names it."""
    image = {
        "enabled": True,
        "cores": [1],
        "nice": 0,
        "preemption": {"policy": "step"},
        "default_model": "t",
        "models": {"t": {"backend": "diffusers", "source": "tiny"}},
    }
    assert colocated_groups(cfg(cluster(image=image))) == []
    named = {**image, "preemption": {"policy": "step", "yield_to": ["tts"]}}
    assert colocated_groups(cfg(cluster(image=named))) == [("tts", "image")]
    local = cluster(image=image)
    del local["cluster"]
    assert colocated_groups(parse_config(local, HEAD)) == [("tts", "image")]  # here: the same core 1
    with pytest.raises(ConfigError, match=r"yield_to: 'gpu' is not another lane; lanes: llm, tts"):
        cfg(cluster(image={**image, "preemption": {"yield_to": ["gpu"]}}))


def test_a_defaulted_memory_ceiling_on_a_cluster_is_the_nodes_share_set_there() -> None:
    """The RIS machine's memory says nothing of a node's: the worker sets its own ceiling."""
    from ris.runtime.specs import memory_limit, worker_spec

    spec = worker_spec(cfg(cluster()), "llm", HEAD)
    assert spec.binding.memory_limit_bytes is None and spec.memory_share is not None
    assert memory_limit(cfg(cluster()), "llm", HEAD) is None  # the watchdog learns it at ready
    given = worker_spec(cfg(cluster(llm={"memory_limit_mb": 512})), "llm", HEAD)
    assert (given.binding.memory_limit_bytes, given.memory_share) == (512 * 2**20, None)
    local = cluster()
    del local["cluster"]
    here = worker_spec(parse_config(local, HEAD), "llm", HEAD)
    assert here.binding.memory_limit_bytes and here.memory_share is None


def test_boards_of_groups_ray_no_longer_keeps_are_stale_and_others_are_left() -> None:
    live, gone = "a" * 36, "b" * 36
    names = [
        f"ris-board-{live}",  # this or another server's group: kept
        f"ris-board-{gone}",  # a SIGKILLed server's: swept
        "ris-board-ns-123-llm-image",  # another naming: not ours to judge
        "psm_1234",  # not a board
    ]
    assert stale_boards(names, {live}) == [f"ris-board-{gone}"]
    assert stale_boards(names, set()) == [f"ris-board-{live}", f"ris-board-{gone}"]


def test_replicas_ask_ray_to_spread_them_over_the_nodes() -> None:
    """Two replicas on one node are lost together with it: Ray's SPREAD strategy puts them on
    different nodes where several can host them (a lone worker keeps Ray's default)."""
    import asyncio

    ray_kind = pytest.importorskip("ris.runtime.workers.ray")
    from ris.runtime.binding import Binding
    from ris.runtime.workers.base import WorkerSpec

    pool = object.__new__(ray_kind.RayWorkers)  # its cluster part is not needed here
    pool.config = cfg(cluster(tts={"replicas": 2}))
    pool.loop = asyncio.new_event_loop()
    pool._workers = []
    try:
        binding = Binding(cores=None, threads=1, nice=0, gpu=None, memory_limit_bytes=None)
        options = {
            lane: pool(WorkerSpec(lane, "", binding, "cpu", "{}", {}, ""), lambda msg: None)._options
            for lane in ("llm", "tts")
        }
    finally:
        pool.loop.close()
    assert options["tts"]["scheduling_strategy"] == "SPREAD"
    assert "scheduling_strategy" not in options["llm"]
    assert options["tts"]["resources"] == {"ris_lane_tts": 1.0}  # still only where advertised
