"""Which lanes share hardware: the real-time lanes a preemptible lane yields to, and the policy
it yields with. A question about the config (devices, cores, classes), answered with the lane
kinds' `preemptible` flag; ris.preemption carries the answer out and knows nothing of config.

A preemptible (batch) lane yields to the enabled real-time lanes it shares hardware with: the
same GPU, or on the CPU, overlapping cores. 'auto' on a GPU is 'block': the GPU has no
priorities, so the image worker must pause itself inside the UNet, during the LLM's prefill
(measured on an H200: time to first token 0.99x of the LLM alone, see docs/DESIGN_MEASUREMENTS.md).
On CPU cores the kernel already yields for a lane at a low OS priority (nice >= 10); measured
on a 2-core machine, pausing on top of that bought nothing measurable for the LLM's p99 gap
between tokens while images lost a third to nine tenths of their throughput, so there 'auto'
is 'none'.

How a lane's OpenMP threads wait (`waits_passively`) follows from the same question. llama.cpp
built with OpenMP synchronises its threads with `#pragma omp barrier` hundreds of times per
token; under OMP_WAIT_POLICY=PASSIVE each barrier is a futex sleep and wake, and two threads
decoded SmolLM2 slower than one (issue 26). Spinning a moment first (libgomp's default, what
llama-server runs with) is the fast way, but a spinning waiter burns its core: on a core shared
with a lane of the same or a higher priority it takes that lane's cycles. A lane at a lower
priority (the image lane at nice 19) loses those cycles to the kernel's priority anyway.
"""

from __future__ import annotations

from ris.config.schema import Config
from ris.lanes import kind
from ris.preemption.lending import Lender
from ris.preemption.policy import PreemptionPolicy


def yields_to(config: Config, lane: str) -> tuple[str, ...]:
    """The real-time lanes `lane` yields to (empty unless it is preemptible): those its config
    names (`preemption.yield_to`), else those it shares hardware with. On a cluster, that is
    its GPU only: `cores: [1]` on the image box and on the speech box are different cores, and
    reading them as shared would place the two lanes on one node."""
    mine = config.lane(lane)
    if not kind(lane).preemptible or not mine.enabled:
        return ()
    named = mine.preemption.yield_to
    if named is not None:
        return tuple(
            o
            for o in named
            if o in config.lanes and config.lane(o).enabled and config.lane(o).priority_class == "realtime"
        )
    on_cluster = config.cluster.engine != "local"
    shared: list[str] = []
    for other, cfg in config.lanes.items():
        if other == lane or not cfg.enabled or cfg.priority_class != "realtime":
            continue
        if mine.device.startswith("cuda"):
            if cfg.device == mine.device:
                shared.append(other)
        elif cfg.device == "cpu" and not on_cluster:
            a, b = mine.cores, cfg.cores
            if a is None or b is None or set(a) & set(b):
                shared.append(other)
    return tuple(shared)


def resolve_policy(config: Config, lane: str) -> PreemptionPolicy:
    """The lane's policy with 'auto' resolved ('none' when it shares nothing)."""
    cfg = config.lane(lane)
    pc = cfg.preemption
    mode = pc.policy
    if not yields_to(config, lane):
        mode = "none"
    elif mode == "auto":
        # By the configured nice: a lane with a minimum share weighs more in its group (114, about
        # nice 9) or runs at nice 9 where no group can be made; the measurements of 'none' on CPU
        # (docs/PERFORMANCE_OPTIMIZATION.md) were taken with and without the share.
        mode = "none" if cfg.device == "cpu" and cfg.nice >= 10 else "block"
    return PreemptionPolicy(mode=mode, scope=pc.scope, min_share=pc.min_share, window_s=pc.window_s)


def waits_passively(config: Config, lane: str) -> bool:
    """Whether `lane`'s OpenMP threads sleep at once when they wait (else they spin a moment
    first). 'auto': passive for a lane that yields to another on shared hardware, or (locally,
    on the CPU) whose cores overlap those of an enabled lane of the same or a higher OS
    priority (nice no greater than its own); a lane that owns its cores, or shares them only
    with lower-priority lanes, spins."""
    mine = config.lane(lane)
    if mine.wait_policy != "auto":
        return mine.wait_policy == "passive"
    if yields_to(config, lane):
        return True
    if mine.device != "cpu" or config.cluster.engine != "local":
        return False
    for other, cfg in config.lanes.items():
        if other == lane or not cfg.enabled or cfg.device != "cpu" or cfg.nice > mine.nice:
            continue
        a, b = mine.cores, cfg.cores
        if a is None or b is None or set(a) & set(b):
            return True
    return False


def lenders(config: Config, lane: str) -> tuple[Lender, ...]:
    """The lanes whose idle cores `lane` borrows (`borrow_idle_cores`): every other enabled
    real-time lane on this machine's CPU with cores of its own. Batch lanes lend nothing: their
    cores are shared already, and their share is the kernel's to give (min_cpu_share)."""
    mine = config.lane(lane)
    if not mine.borrow_idle_cores or mine.cores is None or config.cluster.engine != "local":
        return ()
    return tuple(
        Lender(other, tuple(c for c in cfg.cores if c not in mine.cores))
        for other, cfg in config.lanes.items()
        if other != lane
        and cfg.enabled
        and cfg.priority_class == "realtime"
        and cfg.device == "cpu"
        and cfg.cores is not None
        and set(cfg.cores) - set(mine.cores)
    )


def lends(config: Config, lane: str) -> bool:
    """Another lane borrows this one's cores while it is idle: its worker marks itself busy on
    the board as a task arrives, so they are given back before the task starts."""
    return any(lane in (x.lane for x in lenders(config, other)) for other in config.lanes if other != lane)
