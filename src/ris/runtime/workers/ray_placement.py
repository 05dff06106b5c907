"""Where each lane's workers may run on a Ray cluster, and which configs no node can host.

Pure: it reads the config and the nodes' advertised resources (as `ray.nodes()` lists them) and
decides; ris.runtime.workers.ray creates the actors. A lane's worker asks for
  - `ris_lane_<lane>`: 1, the custom resource a node advertises (`ray start --resources`) to say
    it hosts that lane (the amount it advertises is how many of the lane's workers it takes);
  - `CPU`: its cores (`cores` given: as many as listed, else `threads`, else 1);
  - `GPU`: 1 on a `cuda:N` device, shared in equal parts by the lanes placed together on it.
Lanes that yield to each other (the image lane yielding to the LLM on the same GPU) read one
activity board in shared memory, so they are placed together: one STRICT_PACK placement group.
Ray keeps an actor whose resources no node has pending for ever; `refusals` says so at start.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ris.config.schema import Config
from ris.config.sharing import resolve_policy, yields_to

LANE_RESOURCE_PREFIX = "ris_lane_"


def lane_resource(lane: str) -> str:
    """The custom resource a node advertises to host `lane`'s workers."""
    return f"{LANE_RESOURCE_PREFIX}{lane}"


@dataclass(frozen=True)
class Demand:
    """What one worker of a lane asks Ray for."""

    lane: str
    num_cpus: float
    num_gpus: float
    # Custom resources: the lane's own, 1 per worker.
    resources: Mapping[str, float]

    def as_bundle(self) -> dict[str, float]:
        """The demand as a placement-group bundle (Ray's resource names)."""
        bundle = {"CPU": self.num_cpus, **self.resources}
        if self.num_gpus:
            bundle["GPU"] = self.num_gpus
        return bundle


def colocated_groups(config: Config) -> list[tuple[str, ...]]:
    """Lanes that must share a node: a preemptible lane that actually yields (its policy is not
    'none') with the real-time lanes it yields to. The config checks allow one replica each."""
    groups: list[tuple[str, ...]] = []
    for lane in config.enabled_lanes:
        partners = yields_to(config, lane)
        if partners and resolve_policy(config, lane).mode != "none":
            groups.append((*partners, lane))
    return groups


def demand(config: Config, lane: str) -> Demand:
    cfg = config.lane(lane)
    cpus = float(len(cfg.cores)) if cfg.cores else float(cfg.threads or 1)
    gpus = 0.0
    if cfg.gpu_index is not None:
        # Lanes placed together on one device split it: Ray then packs them on one GPU.
        sharing = [g for g in colocated_groups(config) if lane in g]
        same_device = [o for o in (sharing[0] if sharing else (lane,)) if config.lane(o).device == cfg.device]
        gpus = 1.0 / len(same_device)
    return Demand(lane, cpus, gpus, {lane_resource(lane): 1.0})


def threads_in_cluster(config: Config, lane: str) -> int:
    """The worker's math-library threads on a node: as configured, else one per CPU it asks for
    (this machine's core count says nothing about the node's)."""
    cfg = config.lane(lane)
    return cfg.threads or max(1, int(demand(config, lane).num_cpus))


def _fits(node: Mapping[str, float], need: Mapping[str, float]) -> int:
    """How many times `need` fits in the node's total resources."""
    counts = [math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    return min(counts) if counts else 0


def refusals(config: Config, nodes: Iterable[Mapping[str, float]]) -> list[str]:
    """Why the cluster cannot host the config (empty: it can). `nodes`: each alive node's total
    resources. First lane by lane (and each group as a whole), one line each, naming what is
    missing; then every worker the server cannot start without (each lane's `min_replicas`)
    at once, as Ray must place them: lanes that each fit but not together (LLM and image
    wanting 3 CPUs of a 2-CPU head) would leave one pending for ever."""
    nodes = list(nodes)
    problems = _lane_refusals(config, nodes)
    if not problems:
        needed = _workers(config, minimum=True)
        unplaced = _pack(needed, nodes)
        if unplaced:
            problems.append(_not_together(needed, unplaced, nodes))
    return problems


def shortfalls(config: Config, nodes: Iterable[Mapping[str, float]]) -> list[str]:
    """Replicas above `min_replicas` the nodes cannot host now, one line each: the server starts
    without them, they wait (pending) and serve when a node that can host them joins. Call it
    on a config `refusals` passed."""
    nodes = list(nodes)
    unplaced = _pack(_workers(config), nodes)
    return [f"{what} waits for a node: the Ray cluster cannot host it now" for what in unplaced]


def _lane_refusals(config: Config, nodes: list[Mapping[str, float]]) -> list[str]:
    problems: list[str] = []
    grouped = {lane for g in colocated_groups(config) for lane in g}
    for lane in config.enabled_lanes:
        if lane in grouped:
            continue
        need = demand(config, lane).as_bundle()
        cfg = config.lane(lane)
        problem = _missing(f"lanes.{lane}", need, cfg.min_replicas, nodes, advertise=cfg.replicas)
        if problem:
            problems.append(problem)
    for group in colocated_groups(config):
        together = f"placed together: {group[-1]} yields to {', '.join(group[:-1])}"
        where = f"lanes {' and '.join(group)} ({together})"
        problem = _missing(where, _group_bundle(config, group), 1, nodes)
        if problem:
            problems.append(problem)
    return problems


def _missing(
    where: str, need: Mapping[str, float], replicas: int, nodes: list[Mapping[str, float]], advertise: int = 1
) -> str:
    """Why the nodes cannot host `replicas` workers asking for `need` each ("" when they can);
    `advertise`: how many of the lane's resource the hint tells a new node to advertise."""
    for name, amount in need.items():
        if not any(n.get(name, 0.0) >= amount - 1e-9 for n in nodes):
            have = max((n.get(name, 0.0) for n in nodes), default=0.0)
            hint = ""
            if name.startswith(LANE_RESOURCE_PREFIX):
                hint = f"; start a node with `ray start --resources='{json.dumps({name: advertise})}'`"
            return (
                f"{where}: no node of the Ray cluster has resource {name!r} >= {amount:g} "
                f"(the most any node has: {have:g}){hint}"
            )
    hosts = sum(_fits(n, need) for n in nodes)
    if hosts == 0:
        return f"{where}: no single node of the Ray cluster has all of {dict(need)} at once"
    if hosts < replicas:
        return (
            f"{where}.min_replicas: {replicas}, but the Ray cluster's nodes can host {hosts} worker(s) "
            f"asking for {dict(need)} each; advertise the lane's resource on more nodes or lower min_replicas"
        )
    return ""


def _workers(config: Config, minimum: bool = False) -> list[tuple[str, dict[str, float]]]:
    """Every worker the config starts on the cluster, as (what, its bundle): one per replica of
    a lane (`minimum`: its min_replicas only), one per group of lanes placed together (a
    STRICT_PACK group is one node's worth)."""
    grouped = {lane for g in colocated_groups(config) for lane in g}
    workers: list[tuple[str, dict[str, float]]] = []
    for lane in config.enabled_lanes:
        if lane not in grouped:
            n = config.lane(lane).min_replicas if minimum else config.lane(lane).replicas
            need = demand(config, lane).as_bundle()
            workers += [(f"lanes.{lane}" + (f" (replica {i + 1})" if n > 1 else ""), need) for i in range(n)]
    workers += [(f"lanes {' and '.join(g)}", _group_bundle(config, g)) for g in colocated_groups(config)]
    return workers


def _group_bundle(config: Config, group: tuple[str, ...]) -> dict[str, float]:
    """What lanes placed together ask of their one node."""
    need: dict[str, float] = {}
    for lane in group:
        for k, v in demand(config, lane).as_bundle().items():
            need[k] = need.get(k, 0.0) + v
    return need


# Past this many placements tried, the search stops and reports what first-fit left over: a
# config has a handful of workers, so only a huge cluster gets there.
_MAX_TRIES = 100_000


def _pack(workers: list[tuple[str, dict[str, float]]], nodes: list[Mapping[str, float]]) -> list[str]:
    """The workers that cannot be placed at once on the nodes (empty: all can). An exact
    search: lanes are few, and a first fit can miss a placement that exists."""
    order = sorted(workers, key=lambda w: -sum(w[1].values()))
    free = [dict(n) for n in nodes]
    tries = 0

    def fits(need: Mapping[str, float], node: Mapping[str, float]) -> bool:
        return all(node.get(k, 0.0) >= v - 1e-9 for k, v in need.items() if v > 0)

    def place(i: int) -> bool:
        nonlocal tries
        if i == len(order):
            return True
        need = order[i][1]
        seen: list[dict[str, float]] = []
        for node in free:
            tries += 1
            if tries > _MAX_TRIES or node in seen or not fits(need, node):
                continue
            seen.append(dict(node))  # nodes left alike are one choice
            for k, v in need.items():
                node[k] = node.get(k, 0.0) - v
            if place(i + 1):
                return True
            for k, v in need.items():
                node[k] += v
        return False

    if place(0):
        return []
    # None found: what a first fit leaves over names the workers in the way.
    free = [dict(n) for n in nodes]
    left: list[str] = []
    for what, need in order:
        node = next((n for n in free if fits(need, n)), None)
        if node is None:
            left.append(what)
            continue
        for k, v in need.items():
            node[k] = node.get(k, 0.0) - v
    return left


def _not_together(
    workers: list[tuple[str, dict[str, float]]], unplaced: list[str], nodes: list[Mapping[str, float]]
) -> str:
    total: dict[str, float] = {}
    for _, need in workers:
        for k, v in need.items():
            total[k] = total.get(k, 0.0) + v
    has = "; ".join(f"node {i + 1}: {format_resources(n)}" for i, n in enumerate(nodes)) or "no nodes"
    n = len(unplaced)
    return (
        f"{', '.join(w for w, _ in workers)}: each fits on a node alone, but not all at once "
        f"(Ray would keep {n} worker{'s' if n > 1 else ''} pending for ever): together they ask for "
        f"{format_resources(total)}; the cluster has {has}. "
        "Give the lanes fewer cores or threads, or add a node"
    )


def format_resources(resources: Mapping[str, float]) -> str:
    """CPUs, GPUs and lane resources, for people (Ray's other entries are noise here)."""
    shown = {k: v for k, v in resources.items() if k in ("CPU", "GPU") or k.startswith(LANE_RESOURCE_PREFIX)}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"


# A node's activity board: this prefix and its placement group's id (18 bytes in hex), so a
# board lives as long as its group (ray_cluster.board_name).
BOARD_PREFIX = "ris-board-"
_BOARD_NAME = re.compile(rf"^{BOARD_PREFIX}([0-9a-f]{{36}})$")


def stale_boards(names: list[str], live_groups: set[str]) -> list[str]:
    """The boards among `names` (a node's /dev/shm) whose placement group is gone: a server
    that was SIGKILLed, or whose node lost power, never ran its close()."""
    stale = []
    for name in names:
        m = _BOARD_NAME.match(name)
        if m and m.group(1) not in live_groups:
            stale.append(name)
    return stale


__all__ = [
    "BOARD_PREFIX",
    "format_resources",
    "LANE_RESOURCE_PREFIX",
    "Demand",
    "colocated_groups",
    "demand",
    "lane_resource",
    "refusals",
    "shortfalls",
    "stale_boards",
    "threads_in_cluster",
]
