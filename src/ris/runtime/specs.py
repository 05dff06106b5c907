"""What each lane's worker is started with: the config, the lane kind and the machine turned
into a `WorkerSpec` (binding, memory ceiling, backends, preemption)."""

from __future__ import annotations

from dataclasses import replace

from ris import lanes
from ris.config import Config
from ris.config.fit_checks import gpu_budget
from ris.config.sharing import lenders, lends, resolve_policy, waits_passively, yields_to
from ris.machine import MachineInfo, machine_info
from ris.runtime.binding import BATCH_OOM_SCORE_ADJ, Binding
from ris.runtime.workers.base import WorkerSpec


def memory_limit(config: Config, lane: str, machine: MachineInfo | None = None) -> int | None:
    """The lane's worker memory ceiling in bytes (None: none, or not known here); `machine`
    defaults to this one. On a cluster a defaulted ceiling is a share of the memory of the node
    that runs the worker: unknown here, set on the node (`node_memory_share`)."""
    if node_memory_share(config, lane) is not None:
        return None
    return config.lane(lane).memory_limit_bytes(machine or machine_info(), lanes.kind(lane).memory_share)


def node_memory_share(config: Config, lane: str) -> float | None:
    """The share of its node's memory a cluster worker's defaulted ceiling is (None: not one)."""
    if config.cluster.engine == "local" or config.lane(lane).memory_limit_mb is not None:
        return None
    return lanes.kind(lane).memory_share


def local_cards(config: Config, machine: MachineInfo) -> MachineInfo:
    """`machine` as far as its cards describe the workers' own: on a cluster a worker's card is
    its node's, which this server's NVML does not see."""
    return machine if config.cluster.engine == "local" else replace(machine, gpu_memory=())


def worker_spec(config: Config, lane: str, machine: MachineInfo | None = None) -> WorkerSpec:
    """The spec every worker of `lane` is built from; `machine` defaults to this one."""
    cfg = config.lane(lane)
    kind = lanes.kind(lane)
    borrow_from = lenders(config, lane)
    return WorkerSpec(
        lane=lane,
        kind=lanes.target(lane),
        binding=Binding(
            cores=cfg.cores,
            threads=cfg.effective_threads(machine or machine_info()),
            nice=cfg.nice,
            # cuda:N is the N-th card the server may use (CUDA_VISIBLE_DEVICES around it);
            # a cluster's node gives its worker its card itself.
            gpu=(machine or machine_info()).physical_gpu(cfg.gpu_index)
            if config.cluster.engine == "local"
            else cfg.gpu_index,
            memory_limit_bytes=memory_limit(config, lane, machine),
            passive_wait=waits_passively(config, lane),
            may_borrow=tuple(sorted({c for lender in borrow_from for c in lender.cores})),
            oom_score_adj=BATCH_OOM_SCORE_ADJ if cfg.priority_class == "batch" else 0,
        ),
        device=cfg.device,
        lane_config_json=cfg.model_dump_json(),
        backends={name: kind.backend_target(spec.backend) for name, spec in cfg.models.items()},
        data_dir=str(config.data_dir),
        preemption=resolve_policy(config, lane) if kind.preemptible else None,
        yield_to=yields_to(config, lane),
        memory_share=node_memory_share(config, lane),
        borrow_from=borrow_from,
        lends=lends(config, lane),
        min_cpu_share=cfg.min_cpu_share if cfg.device == "cpu" else None,
        gpu_budget_bytes=gpu_budget(config, lane, local_cards(config, machine or machine_info())),
    )
