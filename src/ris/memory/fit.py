"""Fit arithmetic, pure: lanes' budgets against a card, models against a lane's budget, how
many layers of a llama.cpp model a GPU budget holds, and an image pipeline's offload plan.

Every refusal is a sentence with the numbers in it (MiB), so a layout that cannot fit says
what it asked of what. Nothing here reads a file or a device: callers pass footprints
(footprint.py) and cards (NVML, ris.gpus), and tests pass fakes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ris.memory.footprint import Footprint

MIB = 2**20
# The memory each worker on a card holds outside its allocator (the CUDA context: kernels,
# cuBLAS workspace): 498-582 MiB per torch worker measured on an H200; less on consumer cards.
CUDA_CONTEXT_BYTES = 512 * MIB


def mib(n: int | float) -> str:
    return f"{n / MIB:,.0f} MiB"


@dataclass(frozen=True)
class Card:
    """A GPU as the fit needs it: its index, name and total memory."""

    index: int
    name: str
    total_bytes: int


@dataclass(frozen=True)
class LaneAsk:
    """What a lane asks of a card: an explicit budget (gpu_memory_gb), a share (fraction of
    the card), or neither (an equal part of what the others leave)."""

    lane: str
    gb: float | None = None
    fraction: float | None = None
    # Its workers on the card (replicas): each is capped to the budget and holds a context.
    workers: int = 1


# Below this, a lane left to share what the others' budgets leave holds no model of any kind
# (the smallest default, SmolLM2's weights and KV cache, is 185 MiB): refused, not started
# with an allocator capped at nothing.
MIN_SHARE_BYTES = 256 * MIB


def gpu_budgets(card: Card, asks: list[LaneAsk]) -> tuple[dict[str, int], list[str]]:
    """Each lane's GPU budget on `card` (each of its workers'), and the problems when the asks
    exceed the card. A lane with no budget of its own gets an equal part of what the others'
    budgets and every worker's CUDA context leave. Every worker of a lane (its replicas) is
    capped to the lane's budget and holds a context of its own: both count once per worker."""
    by_lane = {a.lane: a for a in asks}
    fixed = {
        a.lane: int(a.gb * 2**30) if a.gb is not None else int(card.total_bytes * (a.fraction or 0.0))
        for a in asks
        if a.gb is not None or a.fraction is not None
    }
    claimed = sum(b * by_lane[lane].workers for lane, b in fixed.items())
    contexts = CUDA_CONTEXT_BYTES * sum(a.workers for a in asks)
    problems: list[str] = []
    if claimed + contexts > card.total_bytes:
        each = ", ".join(
            f"{lane} {mib(b)}" + (f" x {by_lane[lane].workers} replicas" if by_lane[lane].workers > 1 else "")
            for lane, b in fixed.items()
        )
        problems.append(
            f"GPU {card.index} ({card.name}) has {mib(card.total_bytes)}; its lanes' budgets "
            f"add up to {mib(claimed)} ({each}), and its workers' CUDA contexts take {mib(contexts)} "
            "beside them; lower gpu_memory_gb or gpu_memory_fraction"
        )
    rest = [a.lane for a in asks if a.lane not in fixed]
    # What the lanes with no budget of their own share: the card less the stated budgets and
    # every worker's CUDA context, which their allocators' caps do not see.
    free = card.total_bytes - claimed - contexts
    rest_workers = sum(by_lane[lane].workers for lane in rest)
    share = max(free, 0) // rest_workers if rest else 0
    if rest and share < MIN_SHARE_BYTES and not problems:
        problems.append(
            f"GPU {card.index} ({card.name}) has {mib(card.total_bytes)}; the budgets stated "
            f"({mib(claimed)}) and its workers' CUDA contexts ({mib(contexts)}) leave {mib(max(free, 0))} "
            f"for {', '.join(rest)}, under the {mib(MIN_SHARE_BYTES)} a lane needs; give "
            "each lane on the card a gpu_memory_gb, or move one to another device"
        )
    return {**fixed, **dict.fromkeys(rest, share)}, problems


def model_problems(
    lane: str, where: str, budget: int | None, models: dict[str, Footprint], setting: str = "the budget"
) -> list[str]:
    """Models that can never fit the lane's budget on `where` ("RAM" or "GPU 0"), even alone;
    `setting` names what sets that budget, for the operator to raise."""
    if budget is None:
        return []
    return [
        f"lanes.{lane}.models.{name} needs {mib(fp.total)} (weights {mib(fp.weights)}, KV cache "
        f"{mib(fp.kv)}, working margin {mib(fp.margin)}) but the lane's {where} budget is "
        f"{mib(budget)}; raise {setting}, lower n_ctx or parallel, or choose a smaller model"
        for name, fp in models.items()
        if fp.total > budget
    ]


@dataclass(frozen=True)
class LayerSplit:
    """How much of a llama.cpp model a GPU budget holds (`n_gpu_layers`: llama.cpp's option,
    n_layer + 1 when the output head goes too, i.e. the whole model)."""

    n_gpu_layers: int
    n_layer: int
    gpu_bytes: int

    @property
    def placement(self) -> Literal["gpu", "partial", "cpu"]:
        if self.n_gpu_layers > self.n_layer:
            return "gpu"
        return "partial" if self.n_gpu_layers > 0 else "cpu"


def layer_split(fp: Footprint, budget: int) -> LayerSplit:
    """As many repeated layers as fit the budget, each with its KV cache, after the working
    margin (as Ollama does); the output head and embeddings join only when every layer fits."""
    n = len(fp.layers)
    used = fp.margin
    kv = fp.kv_per_layer()
    placed = 0
    for size in fp.layers:
        if used + size + kv > budget:
            break
        used += size + kv
        placed += 1
    other = fp.weights - sum(fp.layers)
    if placed == n and used + other <= budget:
        return LayerSplit(n + 1, n, used + other)
    return LayerSplit(placed, n, used if placed else 0)


Plan = Literal["gpu", "model_offload", "sequential_offload"]


@dataclass(frozen=True)
class ImagePlan:
    plan: Plan | None  # None: cannot run within the budget at all
    gpu_bytes: int
    reason: str


def image_plan(fp: Footprint, budget: int) -> ImagePlan:
    """Whole pipeline on the GPU when it fits; else one component at a time (diffusers'
    model CPU offload: the largest component is the peak); else one layer at a time
    (sequential offload: only the working margin is needed); else a refusal with numbers."""
    if fp.total <= budget:
        return ImagePlan("gpu", fp.total, f"the pipeline ({mib(fp.total)}) fits the budget ({mib(budget)})")
    largest_name, largest = max(fp.components, key=lambda c: c[1], default=("", fp.weights))
    # accelerate moves the previous component off the card before the next one on: the peak
    # is the largest with its activations (measured on an H200: SD 1.5 peaked at 1,816 MiB
    # allocated, its UNet 1,639 MiB, under this rule's 1,842 MiB).
    if largest + fp.margin <= budget:
        return ImagePlan(
            "model_offload",
            largest + fp.margin,
            f"the pipeline ({mib(fp.total)}) exceeds the budget ({mib(budget)}); its largest "
            f"component {largest_name or 'model'} ({mib(largest)}) fits with the margin",
        )
    if fp.margin <= budget:
        return ImagePlan(
            "sequential_offload",
            fp.margin,
            f"its largest component {largest_name or 'model'} ({mib(largest)}) exceeds the budget "
            f"({mib(budget)}); layers move to the GPU one at a time",
        )
    return ImagePlan(
        None,
        0,
        f"the budget ({mib(budget)}) is below the working margin ({mib(fp.margin)}) even one layer needs",
    )


def gpu_bytes_needed(fp: Footprint, budget: int, n_gpu_layers: int | None = None) -> int:
    """What a model puts on a GPU lane's card within `budget`, as its backend places it: a
    layered model (GGUF) the layers that fit with their KV cache, or `n_gpu_layers` of them
    when the model's options say (-1: all); a pipeline (components, no KV cache) what its plan
    keeps on the card; anything else all of it. Counted against the lane's GPU budget, so a
    model that runs partly offloaded is not refused for its whole size."""
    if fp.layers:
        n = len(fp.layers)
        if n_gpu_layers is None:
            return layer_split(fp, budget).gpu_bytes
        if n_gpu_layers < 0 or n_gpu_layers > n:
            return fp.total
        placed = n_gpu_layers
        return fp.margin + sum(fp.layers[:placed]) + placed * fp.kv_per_layer() if placed else 0
    if fp.components and not fp.kv:
        plan = image_plan(fp, budget)
        return plan.gpu_bytes if plan.plan is not None else fp.total
    return fp.total


def ram_bytes_beside(fp: Footprint, gpu_bytes: int) -> int:
    """What a model on a GPU lane keeps in RAM when `gpu_bytes` of it are on the card: the
    layers llama.cpp leaves on the CPU with their KV cache (all of it when none is on the
    card); a pipeline under an offload plan, its weights (each component comes back to RAM
    after its turn on the card, whichever is there at a moment)."""
    if gpu_bytes >= fp.total:
        return 0
    if fp.components and not fp.kv:  # a pipeline, as gpu_bytes_needed reads it
        return fp.weights
    return fp.total - gpu_bytes


__all__ = [
    "Card",
    "ImagePlan",
    "LaneAsk",
    "LayerSplit",
    "gpu_budgets",
    "gpu_bytes_needed",
    "image_plan",
    "layer_split",
    "mib",
    "model_problems",
    "ram_bytes_beside",
]
