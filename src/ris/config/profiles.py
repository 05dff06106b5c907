"""Layouts for one NVIDIA card, chosen by its size: which lanes go on it, each lane's GPU budget,
the models those budgets hold and how the image pipeline would run in its budget.

Pure: a card's total memory in, settings out; nothing reads a device or a file. The machine-built
layout (defaults.py) applies a profile's budgets when one card is shared; `ris config
--gpu-profile GB` prints the whole layout, suggested models included, for a card that is not here;
examples/configs/gpu-*.json are those layouts, checked by the loader in tests.

A profile is the largest of 6, 8, 12, 16, 24 and 48 GB not above the card; a card counts as its
size from CARD_SLACK_GIB below it, since NVML reports a little less than the name on the box.
What is set aside on the card before any budget: a CUDA context per process on it (the LLM
worker and the image worker; the TTS lane never gets a GPU) and a desktop that may share it.

Reference models (weights from their published file sizes, not measured here; KV cache and
working margins by the loader's own arithmetic, ris.memory.footprint, n_ctx 4096 per sequence):

  Qwen2.5-1.5B-Instruct Q4_K_M   1.12 GB    28 KiB of KV cache per token
  Qwen2.5-7B-Instruct Q4_K_M     4.68 GB    56 KiB per token (4 sequences: 0.88 GiB)
  Qwen2.5-14B-Instruct Q4_K_M    8.99 GB   192 KiB per token (4 sequences: 3 GiB)
  Qwen2.5-32B-Instruct Q4_K_M   19.85 GB   256 KiB per token (8 sequences: 8 GiB)
  SD-Turbo fp16                  2.58 GB    UNet 1.73 GB; needs 2.64 GiB resident, 1.85 one part at a time
  SDXL-Turbo fp16                6.95 GB    UNet 5.14 GB; needs 7.12 GiB resident, 5.43 one part at a time

  card      reserve  LLM budget: model, sequences (needs)   image budget: SD-Turbo / SDXL-Turbo
  < 6 GB    1.0      card - 1.0: 1.5B, 4 (1.53 GiB)          on the CPU (no room beside the LLM)
                     (some layers only under 2.75 GB; under 1.5 GB every lane stays on the CPU)
  6 GB      1.5      1.5: 1.5B, 2 (1.31 GiB)                  2.75: resident / layer by layer
  8 GB      1.5      2.0: 1.5B, 4 (1.53 GiB)                  4.25: resident / layer by layer
  12 GB     1.5      5.5: 7B, 4 (5.28 GiB)                    4.75: resident / layer by layer
  16 GB     1.5      6.25: 7B, 8 (6.16 GiB)                   8.0: resident / resident
  24 GB     1.5      12.0: 14B, 4 (11.42 GiB)                 10.25: resident / resident
  48 GB+    1.5      card - 13.5: 32B, 8 (26.53 GiB)          12.0: resident / resident

Why these splits: the LLM is the real-time lane, so each card first gives it the largest model
whose weights and a few sequences' KV cache fit whole (every layer on the GPU); the image lane
takes the rest, enough for SD-Turbo resident from 6 GB and SDXL-Turbo resident from 16 GB.
SDXL-Turbo with one component on the card at a time (diffusers' model offload) needs its UNet
plus a working margin, 5.43 GiB: below 16 GB that is more than the image lane is left beside an
LLM, so the arithmetic gives it layer by layer (sequential offload, slow). Cards between two
sizes (10, 11, 20, 32, 40 GB) get the smaller profile: raise a budget by hand to use the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from ris.catalogue import QWEN_LANGUAGES, lookup
from ris.config.schema import ModelSpec
from ris.lanes import Lane
from ris.memory.fit import CUDA_CONTEXT_BYTES, Plan, image_plan
from ris.memory.footprint import GGUF_MARGIN_BYTES, Footprint, kv_bytes_per_token, torch_footprint

GIB = 2**30
GB = 10**9  # published file sizes are decimal
# NVML reports a little less than a card's name: 8,188 MiB for some "8 GB" cards, 16,380 MiB for
# a 16 GB RTX 4060 Ti. A card counts as a profile's size from this much below it, and the fixed
# budgets leave it unused so that they fit the smallest card counted.
CARD_SLACK_GIB = 0.25
# The CUDA context each process on the card holds outside its models (kernels, cuBLAS
# workspace): measured once on an H200 (torch 2.11, CUDA 13) at 498 and 582 MiB per torch
# worker; consumer cards with CUDA's lazy module loading hold less (not measured). 0.5 GiB is
# kept; a headless card's unused desktop reserve covers the H200's excess.
CONTEXT_GIB = CUDA_CONTEXT_BYTES / GIB  # the fit checks' own figure (0.5 GiB)
# A desktop (compositor, browser) on the same card: not measured here; kept aside on every card.
DESKTOP_GIB = 0.5
# Context of each LLM sequence in the suggested models' options (the catalogue's too).
N_CTX = 4096
# From this size the LLM budget grows with the card (the image lane's stays IMAGE_LARGE_GIB).
LARGE_CARD_GIB = 48
IMAGE_LARGE_GIB = 12.0
# Below this LLM budget a card under 6 GB holds too little to help: every lane stays on the CPU.
MIN_LLM_GIB = 0.5


@dataclass(frozen=True)
class GGUFReference:
    """A llama.cpp model a profile suggests, with what its file's header would say."""

    name: str  # its name in config.json (`ris pull` names it so where the catalogue has it)
    file: str  # the file name; the example configs expect it under /models
    weights_bytes: int
    n_layer: int
    n_head_kv: int
    head_dim: int
    description: str

    def footprint(self, parallel: int, n_ctx: int = N_CTX) -> Footprint:
        per_token = kv_bytes_per_token(self.n_layer, self.n_head_kv, self.head_dim, self.head_dim)
        return Footprint(self.weights_bytes, int(per_token * n_ctx * parallel), GGUF_MARGIN_BYTES)

    def spec(self) -> ModelSpec:
        return ModelSpec(
            backend="llama_cpp",
            source=f"/models/{self.file}",
            options={"n_ctx": N_CTX},
            languages=QWEN_LANGUAGES,
            description=f"{self.description}; {_where_from(self.name)}",
        )


@dataclass(frozen=True)
class PipelineReference:
    """A diffusers pipeline a profile suggests: its fp16 components' sizes."""

    name: str
    folder: str  # the example configs expect the diffusers folder under /models
    components: tuple[tuple[str, int], ...]
    description: str

    def footprint(self) -> Footprint:
        return torch_footprint(dict(self.components))

    def spec(self) -> ModelSpec:
        return ModelSpec(
            backend="diffusers",
            source=f"/models/{self.folder}",
            options={"turbo": True, "variant": "fp16"},
            languages=("en",),
            description=f"{self.description}; {_where_from(self.name)}",
        )


def _where_from(name: str) -> str:
    """Where the file comes from, for a model's description: the example's source is a path the
    user points at their copy; `ris pull` replaces the entry of the same name with its download."""
    if lookup(name) is not None:
        return f"`ris pull {name}` fetches it and sets source, or point source at your copy"
    return "point source at your copy (not in `ris pull`'s catalogue)"


def _qwen(size: str, file: str, gb: float, n_layer: int, n_head_kv: int) -> GGUFReference:
    return GGUFReference(
        name=f"qwen2.5:{size}",
        file=file,
        weights_bytes=int(gb * GB),
        n_layer=n_layer,
        n_head_kv=n_head_kv,
        head_dim=128,
        description=f"Qwen2.5-{size.upper()}-Instruct, Q4_K_M GGUF",
    )


QWEN_1_5B = _qwen("1.5b", "qwen2.5-1.5b-instruct-q4_k_m.gguf", 1.12, 28, 2)
# Qwen publishes its 7B Q4_K_M in two parts; llama.cpp loads the first (as `ris pull` fetches it).
QWEN_7B = _qwen("7b", "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf", 4.68, 28, 4)
# 14B and 32B are not in the catalogue: bartowski's single-file conversions are the usual ones.
QWEN_14B = _qwen("14b", "Qwen2.5-14B-Instruct-Q4_K_M.gguf", 8.99, 48, 8)
QWEN_32B = _qwen("32b", "Qwen2.5-32B-Instruct-Q4_K_M.gguf", 19.85, 64, 8)
SD_TURBO = PipelineReference(
    "sd-turbo",
    "sd-turbo",
    (("unet", int(1.73 * GB)), ("text_encoder", int(0.68 * GB)), ("vae", int(0.17 * GB))),
    "SD-Turbo, fp16 (1-4 steps, 512x512)",
)
SDXL_TURBO = PipelineReference(
    "sdxl-turbo",
    "sdxl-turbo",
    (
        ("unet", int(5.14 * GB)),
        ("text_encoder", int(0.25 * GB)),
        ("text_encoder_2", int(1.39 * GB)),
        ("vae", int(0.17 * GB)),
    ),
    "SDXL-Turbo, fp16 (1-4 steps, 512x512)",
)
IMAGE_REFERENCES = (SD_TURBO, SDXL_TURBO)


@dataclass(frozen=True)
class GpuProfile:
    """What one card holds. A budget of None keeps that lane on the CPU."""

    name: str  # "8 GB", "under 6 GB", "48 GB and larger"
    card_bytes: int  # the card it was picked for
    llm_gib: float | None
    llm_model: GGUFReference
    llm_parallel: int
    image_gib: float | None

    @property
    def processes_on_card(self) -> int:
        return sum(1 for gib in (self.llm_gib, self.image_gib) if gib is not None)

    @property
    def reserve_gib(self) -> float:
        """Set aside before the budgets: a CUDA context per worker on the card, and a desktop."""
        return self.processes_on_card * CONTEXT_GIB + DESKTOP_GIB if self.processes_on_card else 0.0

    def lane_settings(self) -> dict[str, dict[str, Any]]:
        """The LLM and image lanes' device and GPU budget (config fields); TTS is never here."""
        return {Lane.LLM: _on_card(self.llm_gib), Lane.IMAGE: _on_card(self.image_gib)}

    @property
    def llm_placement(self) -> Literal["gpu", "partial", "cpu"]:
        """Where the suggested LLM runs: whole on the card, some layers on it, or on the CPU."""
        if self.llm_gib is None:
            return "cpu"
        return "gpu" if self.llm_model.footprint(self.llm_parallel).total <= self.llm_gib * GIB else "partial"

    def image_plans(self) -> dict[str, Plan | None]:
        """How each reference pipeline would run in the image budget (ris.memory.fit.image_plan:
        whole, one component at a time, one layer at a time); {} with the lane on the CPU."""
        if self.image_gib is None:
            return {}
        budget = int(self.image_gib * GIB)
        return {ref.name: image_plan(ref.footprint(), budget).plan for ref in IMAGE_REFERENCES}

    def image_models(self) -> tuple[PipelineReference, ...]:
        """The pipelines to configure: those the budget holds whole (one that does not runs
        offloaded, much slower, so a profile never picks it), the largest first as the default;
        SD-Turbo on the CPU."""
        if self.image_gib is None:
            return (SD_TURBO,)
        plans = self.image_plans()
        resident = [ref for ref in IMAGE_REFERENCES if plans[ref.name] == "gpu"]
        return tuple(reversed(resident))

    def model_settings(self) -> dict[str, dict[str, Any]]:
        """The suggested models of the LLM and image lanes (config fields), their sources files
        the user points to; the LLM's `parallel` sizes its KV cache to the budget."""
        images = self.image_models()
        return {
            Lane.LLM: {
                "parallel": self.llm_parallel,
                "default_model": self.llm_model.name,
                "models": {self.llm_model.name: self.llm_model.spec()},
            },
            Lane.IMAGE: {
                "default_model": images[0].name,
                "models": {ref.name: ref.spec() for ref in images},
            },
        }


def _on_card(gib: float | None) -> dict[str, Any]:
    return {"device": "cpu"} if gib is None else {"device": "cuda:0", "gpu_memory_gb": gib}


def _quarters_below(gib: float) -> float:
    """Rounded down to a quarter GiB: budgets a person reads and edits."""
    return math.floor(gib * 4) / 4


# card GB, LLM budget, LLM model, its sequences, image budget (GiB): the module docstring's table.
FIXED_PROFILES: tuple[tuple[int, float, GGUFReference, int, float], ...] = (
    (6, 1.5, QWEN_1_5B, 2, 2.75),
    (8, 2.0, QWEN_1_5B, 4, 4.25),
    (12, 5.5, QWEN_7B, 4, 4.75),
    (16, 6.25, QWEN_7B, 8, 8.0),
    (24, 12.0, QWEN_14B, 4, 10.25),
)
PROFILE_SIZES_GB = (*(row[0] for row in FIXED_PROFILES), LARGE_CARD_GIB)


def pick_profile(card_bytes: int) -> GpuProfile:
    """The profile for a card of `card_bytes` (NVML's total): the largest not above it."""
    if card_bytes <= 0:
        raise ValueError(f"a card's memory is a positive number of bytes (got {card_bytes})")
    gib = card_bytes / GIB
    counted = gib + CARD_SLACK_GIB
    if counted >= LARGE_CARD_GIB:
        # The image lane's needs stop growing (SDXL-Turbo resident with room for batches): what
        # the card has beyond them goes to the LLM, longer contexts or more sequences.
        reserve = 2 * CONTEXT_GIB + DESKTOP_GIB
        return GpuProfile(
            name=f"{LARGE_CARD_GIB} GB and larger",
            card_bytes=card_bytes,
            llm_gib=_quarters_below(gib - reserve - IMAGE_LARGE_GIB),
            llm_model=QWEN_32B,
            llm_parallel=8,
            image_gib=IMAGE_LARGE_GIB,
        )
    fitting = [row for row in FIXED_PROFILES if row[0] <= counted]
    if fitting:
        size, llm, model, parallel, image = fitting[-1]
        return GpuProfile(f"{size} GB", card_bytes, llm, model, parallel, image)
    # Under 6 GB: the LLM alone, since an image pipeline beside it would leave each too little;
    # images run on the CPU at the lowest priority, as on a machine without a GPU.
    llm_budget = _quarters_below(gib - CONTEXT_GIB - DESKTOP_GIB)
    on_card = llm_budget if llm_budget >= MIN_LLM_GIB else None  # else too small to help
    return GpuProfile("under 6 GB", card_bytes, on_card, QWEN_1_5B, 4, None)


def card_of(gb: float) -> int:
    """The bytes of a card sold as `gb` GB (NVIDIA's GB are GiB: an 8 GB card has 8,192 MiB)."""
    return int(gb * GIB)


PLAN_WORDS = {
    "gpu": "resident",
    "model_offload": "one component on the card at a time",
    "sequential_offload": "one layer on the card at a time",
    None: "does not fit",
}
PLACEMENT_WORDS = {
    "gpu": "every layer on the card",
    "partial": "some layers on the card",
    "cpu": "on the CPU",
}


def summary(profile: GpuProfile) -> str:
    """One line for a person: the profile, each lane's budget and what runs in it."""
    if profile.llm_gib is None:
        llm = "LLM on the CPU"
    else:
        where = PLACEMENT_WORDS[profile.llm_placement]
        llm = f"LLM {profile.llm_gib:g} GiB ({profile.llm_model.name}, {where})"
    if profile.image_gib is None:
        image = "images on the CPU"
    else:
        plans = ", ".join(f"{name} {PLAN_WORDS[plan]}" for name, plan in profile.image_plans().items())
        image = f"image {profile.image_gib:g} GiB ({plans})"
    return (
        f"the {profile.name} profile for a card of {profile.card_bytes / GIB:.2f} GiB: "
        f"{profile.reserve_gib:g} GiB kept for CUDA contexts and a desktop, {llm}, {image}"
    )
