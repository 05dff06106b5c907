"""Memory checks of a layout at start: the GPU budgets of the lanes sharing a card against its
memory, and each model's footprint (read from its files) against its lane's budget. A layout
that cannot fit is refused with the numbers, before any worker starts."""

from __future__ import annotations

import math

from ris.config.schema import Config, LaneConfig
from ris.lanes import kind
from ris.machine import MachineInfo
from ris.memory.files import ModelFileError
from ris.memory.fit import (
    Card,
    LaneAsk,
    gpu_budgets,
    gpu_bytes_needed,
    image_plan,
    mib,
    model_problems,
    ram_bytes_beside,
)
from ris.memory.footprint import Footprint, model_footprint

# What a worker holds with no model loaded: its interpreter, RIS and a light backend library,
# where the backend says no more (BackendEntry.process_bytes: torch's are 300-400 MiB). The
# ceiling is on the whole process: a model footprint equal to the ceiling passed the checks,
# and the worker then went over it on its first request and was restarted every 2 s.
WORKER_BASE_BYTES = 96 * 2**20


def worker_base_bytes(lane: str, cfg: LaneConfig) -> int:
    """What the lane's worker holds before any model: the most any of its models' backends
    says (each one's libraries load with its model; the heaviest sets the floor)."""
    backends = kind(lane).backends
    sizes = [
        entry.process_bytes
        for spec in cfg.models.values()
        if (entry := backends.get(spec.backend)) is not None and entry.process_bytes is not None
    ]
    return max([WORKER_BASE_BYTES, *sizes])


def ram_budget(cfg: LaneConfig, ceiling_bytes: int | None, base_bytes: int = WORKER_BASE_BYTES) -> int | None:
    """The RAM the lane's loaded models may use together: its memory_budget_mb, else the
    worker's ceiling less what the worker holds before any model (None: no bound)."""
    if cfg.memory_budget_mb is not None:
        return cfg.memory_budget_mb * 2**20
    return None if ceiling_bytes is None else max(0, ceiling_bytes - base_bytes)


def preloaded(cfg: LaneConfig, load_all: bool) -> list[str]:
    """Models loaded at the worker's start: those marked preload, else (preload unset) the
    lane's default model, or every model of a lane kind that loads all (speech)."""
    return [
        name
        for name, spec in cfg.models.items()
        if spec.preload or (spec.preload is None and (load_all or name == cfg.default_model))
    ]


def lane_footprints(cfg: LaneConfig) -> tuple[dict[str, Footprint], list[str]]:
    """The footprints of the lane's models that have files to read, and the files that could
    not be read (damaged headers) as problems."""
    found: dict[str, Footprint] = {}
    problems: list[str] = []
    for name, spec in cfg.models.items():
        try:
            fp = model_footprint(spec, cfg.parallel, cfg.device)
        except (ModelFileError, OSError) as e:
            problems.append(f"model {name!r}: its file could not be read: {e}")
            continue
        if fp is not None:
            found[name] = fp
    return found, problems


def gpu_budget(config: Config, lane: str, machine: MachineInfo) -> int | None:
    """The lane's GPU budget in bytes, which its worker's allocator is capped to: its part of
    its card among the lanes sharing it (gpu_budgets), the card's memory read by NVML here.
    Without NVML (a cluster node, another driver) only an explicit gpu_memory_gb is known; a
    fraction is then applied by the worker against the card it sees. None: not a GPU lane, or
    nothing to cap to."""
    cfg = config.lane(lane)
    gpu = cfg.gpu_index
    if gpu is None:
        return None
    if gpu >= len(machine.gpu_memory):
        return int(cfg.gpu_memory_gb * 2**30) if cfg.gpu_memory_gb is not None else None
    sharing = [other for other in config.enabled_lanes if config.lane(other).gpu_index == gpu]
    budgets, _ = card_budgets(config, gpu, sharing, machine)  # a misfit is refused at start
    return budgets[lane]


def card_budgets(
    config: Config, gpu: int, lanes: list[str], machine: MachineInfo
) -> tuple[dict[str, int], list[str]]:
    """The budgets of `lanes` on NVML's card `gpu`, and the problems when they exceed it."""
    name, total = machine.gpu_memory[gpu]
    asks = [
        LaneAsk(
            lane,
            config.lane(lane).gpu_memory_gb,
            config.lane(lane).gpu_memory_fraction,
            # A local worker per replica on this card; a cluster's replicas are Ray's to place.
            config.lane(lane).replicas if config.cluster.engine != "ray" else 1,
        )
        for lane in lanes
    ]
    return gpu_budgets(Card(gpu, name, total), asks)


def memory_problems(config: Config, machine: MachineInfo) -> list[str]:
    problems: list[str] = []
    on_card: dict[int, list[str]] = {}
    for lane in config.enabled_lanes:
        cfg = config.lane(lane)
        footprints, unreadable = lane_footprints(cfg)
        problems += [f"lanes.{lane}.models: {p}" for p in unreadable]
        gpu = cfg.gpu_index
        ceiling = cfg.memory_limit_bytes(machine, kind(lane).memory_share)
        base = worker_base_bytes(lane, cfg)
        if ceiling is not None and ceiling <= base:
            # Restarted every few seconds, its tasks refused, the message giving only what it used.
            problems.append(
                f"lanes.{lane}.memory_limit_mb: {mib(ceiling)} is not more than what its worker holds "
                f"before any model ({mib(base)}: the interpreter and its backends' libraries); raise it"
            )
        # Also on a GPU lane: what its models keep in RAM beside the card is counted against it.
        elif (
            cfg.memory_budget_mb is not None
            and ceiling is not None
            and cfg.memory_budget_mb * 2**20 > ceiling
        ):
            # Residency would let models fill more than the worker may hold: the watchdog kills
            # the worker where an idle model should have been evicted, and again after each
            # restart. (A budget the worker's own memory does not fit beside is warned of:
            # ceiling_notes, a config that started before it was counted keeps starting.)
            problems.append(
                f"lanes.{lane}: memory_budget_mb {cfg.memory_budget_mb} is above the worker's memory "
                f"ceiling ({mib(ceiling)}, memory_limit_mb); lower the budget or raise the ceiling"
            )
        if gpu is None:
            budget = ram_budget(cfg, ceiling, base)
            setting = (
                f"lanes.{lane}.memory_budget_mb"
                if cfg.memory_budget_mb is not None
                else f"lanes.{lane}.memory_limit_mb (the worker's memory ceiling: the budget is what "
                f"it leaves beside the worker's own {mib(base)})"
            )
            problems += model_problems(lane, "RAM", budget, footprints, setting)
            eager = {n: fp.total for n, fp in footprints.items()}
            problems += _preloaded_problems(cfg, lane, "", budget, eager)
        else:
            on_card.setdefault(gpu, []).append(lane)
    for gpu, lanes in sorted(on_card.items()):
        if gpu >= len(machine.gpu_memory):
            continue  # no NVML here: the card's memory is unknown (checks.py names a missing GPU)
        budgets, card_problems = card_budgets(config, gpu, lanes, machine)
        problems += card_problems
        for lane in lanes:
            footprints, _ = lane_footprints(config.lane(lane))
            problems += _beside_the_card_problems(config, lane, budgets[lane], footprints, machine)
            if not kind(lane).preemptible:
                problems += _on_card_problems(config.lane(lane), lane, gpu, budgets[lane], footprints)
                continue
            for model, fp in footprints.items():
                plan = image_plan(fp, budgets[lane])
                if plan.plan is None:
                    problems.append(f"lanes.{lane}.models.{model}: cannot run on GPU {gpu}: {plan.reason}")
    return problems


def _preloaded_problems(
    cfg: LaneConfig, lane: str, where: str, budget: int | None, need: dict[str, int]
) -> list[str]:
    """The models loaded at start (need: each one's bytes of the budget) when they cannot fit
    the lane's RAM budget together."""
    eager = {n: need[n] for n in preloaded(cfg, kind(lane).load_all_models) if n in need}
    if budget is None or len(eager) < 2 or sum(eager.values()) <= budget:
        return []
    each = ", ".join(f"{n} {mib(b)}" for n, b in eager.items())
    return [
        f"lanes.{lane}: the models loaded at start need {mib(sum(eager.values()))}{where} together "
        f"({each}) but the lane's RAM budget is {mib(budget)}; preload fewer (preload: false)"
    ]


def _beside_the_card_problems(
    config: Config, lane: str, gpu_budget: int, footprints: dict[str, Footprint], machine: MachineInfo
) -> list[str]:
    """A GPU lane's models whose part left in RAM (layers on the CPU, an offload plan's
    components) cannot fit its RAM budget, alone or preloaded together: refused here, the
    worker would refuse them at their load (model_too_large), or its start."""
    cfg = config.lane(lane)
    budget = ram_budget(
        cfg, cfg.memory_limit_bytes(machine, kind(lane).memory_share), worker_base_bytes(lane, cfg)
    )
    in_ram = {}
    for model, fp in footprints.items():
        layers = cfg.models[model].options.get("n_gpu_layers")
        in_ram[model] = ram_bytes_beside(
            fp, gpu_bytes_needed(fp, gpu_budget, None if layers is None else int(layers))
        )
    if budget is None:
        return []
    problems = [
        f"lanes.{lane}.models.{model} keeps {mib(n)} in RAM beside its part on the card (its GPU budget "
        f"is {mib(gpu_budget)}) but the lane's RAM budget is {mib(budget)}; raise gpu_memory_gb, "
        "memory_budget_mb or memory_limit_mb, or choose a smaller model"
        for model, n in in_ram.items()
        if n > budget
    ]
    return problems + _preloaded_problems(cfg, lane, " in RAM beside the card", budget, in_ram)


def _on_card_problems(
    cfg: LaneConfig, lane: str, gpu: int, budget: int, footprints: dict[str, Footprint]
) -> list[str]:
    """Models of an LLM lane that put more on the card than its budget, as its worker counts
    them (gpu_bytes_needed): a GGUF with n_gpu_layers unset places the layers that fit and
    never is; one with n_gpu_layers -1, or a transformers model, is all on the card. Refused
    here, they were refused at their load (model_too_large), after the start."""
    problems = []
    for model, fp in footprints.items():
        layers = cfg.models[model].options.get("n_gpu_layers")
        need = gpu_bytes_needed(fp, budget, None if layers is None else int(layers))
        if need > budget:
            problems.append(
                f"lanes.{lane}.models.{model} puts {mib(need)} on GPU {gpu} (n_gpu_layers {layers}) but "
                f"the lane's GPU budget is {mib(budget)}; raise gpu_memory_gb, or leave n_gpu_layers "
                "unset (the layers that fit go on the card, the rest runs on the CPU)"
            )
    return problems


def memory_ceilings(config: Config, machine: MachineInfo) -> dict[str, int]:
    """Each enabled lane's workers' memory ceilings together in bytes (a ceiling times the
    lane's replicas), on this machine; lanes with no ceiling left out."""
    out: dict[str, int] = {}
    for lane in config.enabled_lanes:
        cfg = config.lane(lane)
        ceiling = cfg.memory_limit_bytes(machine, kind(lane).memory_share)
        if ceiling:
            out[lane] = ceiling * cfg.replicas
    return out


def ceiling_notes(config: Config, machine: MachineInfo) -> tuple[list[str], list[str]]:
    """(warnings, facts) on the memory ceilings against the machine's RAM. A ceiling the machine
    cannot give is no ceiling: the kernel's OOM killer, not RIS, stops the worker first (a
    low-memory user's 4,000 MiB LLM ceiling on 1.5 GiB was a crash on the first big load, said
    nowhere). Each default ceiling is a share of the machine; the defaults add up to more than
    it has (lanes seldom peak together): a fact, a warning only where a written setting raised
    a ceiling above its default and the sum above the machine (a lowered one cannot be the
    cause). And a model budget that leaves the worker's own memory no room under its ceiling.
    Local lanes only: a cluster's workers have their nodes' memory."""
    if config.cluster.engine != "local" or not machine.memory_bytes:
        return [], []
    ram = machine.memory_bytes
    ceilings = memory_ceilings(config, machine)
    written_mb = {lane: config.lane(lane).memory_limit_mb or 0 for lane in ceilings}
    warnings = [
        f"lanes.{lane}.memory_limit_mb {mb} is above the machine's memory ({mib(ram)}): the "
        "kernel's OOM killer, not the ceiling, stops that worker"
        for lane, mb in written_mb.items()
        if mb * 2**20 > ram
    ]
    for lane, ceiling in ceilings.items():
        cfg, base = config.lane(lane), worker_base_bytes(lane, config.lane(lane))
        per_worker = ceiling // cfg.replicas
        budget = cfg.memory_budget_mb
        if budget is not None and budget * 2**20 <= per_worker < budget * 2**20 + base:
            warnings.append(
                f"lanes.{lane}.memory_budget_mb {budget} leaves the worker's own {mib(base)} no room "
                f"under its ceiling ({mib(per_worker)}): models filling the budget put the worker over "
                f"it; lower the budget to {(per_worker - base) // 2**20} or raise memory_limit_mb"
            )
    server = config.server.memory_limit_mb * 2**20
    default_server = type(config.server).model_fields["memory_limit_mb"].default * 2**20
    total = sum(ceilings.values()) + server
    parts = ", ".join(f"{lane} {mib(b)}" for lane, b in ceilings.items())
    said = f"the memory ceilings add up to {mib(total)} ({parts}, the API process {mib(server)})"
    facts = []
    if total > ram:
        raised = [
            f"lanes.{lane}.memory_limit_mb"
            for lane, mb in written_mb.items()
            # (in whole MiB, as `ris config` prints a default: writing it back raises nothing)
            if mb and mb > math.ceil(machine.memory_bytes * kind(lane).memory_share / 2**20)
        ]
        if server > default_server:  # (a CLI override marks every field as set: by value)
            raised.append("server.memory_limit_mb")
        batch = [lane for lane in ceilings if config.lane(lane).priority_class == "batch"]
        first = f" (the {' or '.join(batch)} worker first)" if batch else ""
        news = (
            f"{said}, more than the machine's {mib(ram)}: if the lanes peak together the kernel's "
            f"OOM killer stops a worker before any ceiling does{first}"
        )
        if raised:
            warnings.append(f"{news}; {', '.join(raised)} raised above the default share")
        else:
            facts.append(
                f"{news}; a default ceiling is a share of the machine (TTS 25%, others 60%), a cap on "
                "one worker, not memory set aside: nothing to do unless the lanes' models together "
                "need more than the machine has (then lower lanes.<lane>.memory_limit_mb)"
            )
    else:
        facts.append(f"{said}, within the machine's {mib(ram)}")
    return warnings, facts
