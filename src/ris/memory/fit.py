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


def gpu_budgets(card: Card, asks: list[LaneAsk]) -> tuple[dict[str, int], list[str]]:
    """Each lane's GPU budget on `card`, and the problems when the asks exceed the card."""
    fixed = {
        a.lane: int(a.gb * 2**30) if a.gb is not None else int(card.total_bytes * (a.fraction or 0.0))
        for a in asks
        if a.gb is not None or a.fraction is not None
    }
    claimed = sum(fixed.values())
    problems: list[str] = []
    if claimed > card.total_bytes:
        each = ", ".join(f"{lane} {mib(b)}" for lane, b in fixed.items())
        problems.append(
            f"GPU {card.index} ({card.name}) has {mib(card.total_bytes)}; its lanes' budgets "
            f"add up to {mib(claimed)} ({each}); lower gpu_memory_gb or gpu_memory_fraction"
        )
    rest = [a.lane for a in asks if a.lane not in fixed]
    share = max(card.total_bytes - claimed, 0) // len(rest) if rest else 0
    return {**fixed, **dict.fromkeys(rest, share)}, problems


def model_problems(lane: str, where: str, budget: int | None, models: dict[str, Footprint]) -> list[str]:
    """Models that can never fit the lane's budget on `where` ("RAM" or "GPU 0"), even alone."""
    if budget is None:
        return []
    return [
        f"lanes.{lane}.models.{name} needs {mib(fp.total)} (weights {mib(fp.weights)}, KV cache "
        f"{mib(fp.kv)}, working margin {mib(fp.margin)}) but the lane's {where} budget is "
        f"{mib(budget)}; raise the budget, lower n_ctx or parallel, or choose a smaller model"
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
    model CPU offload: the two largest components are the peak); else one layer at a time
    (sequential offload: only the working margin is needed); else a refusal with numbers."""
    if fp.total <= budget:
        return ImagePlan("gpu", fp.total, f"the pipeline ({mib(fp.total)}) fits the budget ({mib(budget)})")
    largest_name, largest = max(fp.components, key=lambda c: c[1], default=("", fp.weights))
    # accelerate moves the next component in before the previous one's offload is done with
    # (measured on an H200: the UNet's move failed at 1.92 GiB allocated, the UNet being
    # 1.60 GiB): the peak is the two largest parts, not the largest alone.
    second = sorted((size for _, size in fp.components), reverse=True)[1:2]
    if largest + sum(second) + fp.margin <= budget:
        return ImagePlan(
            "model_offload",
            largest + sum(second) + fp.margin,
            f"the pipeline ({mib(fp.total)}) exceeds the budget ({mib(budget)}); its largest "
            f"component {largest_name or 'model'} ({mib(largest)}) fits with the next largest "
            "and the margin",
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


__all__ = [
    "Card",
    "ImagePlan",
    "LaneAsk",
    "LayerSplit",
    "gpu_budgets",
    "image_plan",
    "layer_split",
    "mib",
    "model_problems",
]
