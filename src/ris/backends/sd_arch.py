"""Stable Diffusion architectures as plain configs, so pipelines can be built without a hub.

Three uses: the embedded tiny pipeline (written once into the data folder, then loaded through
the same `from_pretrained` path as a real model), the `dummy` load format (real SD 1.5 / SDXL
shapes with random weights, for GPU benchmarks), and the component configs that single-file
checkpoints need to be loaded offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SD15_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
)
SDXL_UNET: dict[str, Any] = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
TINY_UNET: dict[str, Any] = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
)
VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=512,
    scaling_factor=0.18215,
)
# Four blocks like the real VAE, so latents are 1/8 of the image side as in SD (with two, the
# UNet would denoise at half resolution and a 512 px step would take a minute on one core).
TINY_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 32, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=128,
)
CLIP_L: dict[str, Any] = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    vocab_size=49408,
)
CLIP_BIGG: dict[str, Any] = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
    vocab_size=49408,
)
SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    timestep_spacing="leading",
)

ARCHS = ("sd15", "sdxl", "tiny")
# Bumped whenever the tiny pipeline's architecture changes: data folders keep one per version.
TINY_VERSION = 1


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_byte_level_clip_tokenizer(folder: Path) -> int:
    """Write vocab.json and merges.txt of a CLIP BPE tokenizer over bytes (no merges).

    Every text tokenizes (one token per byte, `</w>` on word ends); ids stay below 514, so it
    feeds any CLIP text encoder. It is the tokenizer of untrained and dummy pipelines only.
    """
    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return len(vocab)


def build_pipeline(arch: str, tokenizer_dir: Path, device: str = "cpu", dtype: Any = None) -> Any:
    """A text-to-image pipeline of the given architecture with random weights."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    n_vocab = write_byte_level_clip_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=77)
    torch.manual_seed(0)
    # The noise scheduler is host-side bookkeeping in float32: built under the device context
    # below, its tables land on the GPU and diffusers' numpy conversion fails there.
    scheduler = EulerDiscreteScheduler(**SCHEDULER)
    dtype = dtype or torch.float32
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if arch == "tiny":
                text_cfg = CLIPTextConfig(
                    hidden_size=32,
                    intermediate_size=64,
                    num_attention_heads=4,
                    num_hidden_layers=2,
                    max_position_embeddings=77,
                    vocab_size=n_vocab,
                    bos_token_id=n_vocab - 2,
                    eos_token_id=n_vocab - 1,
                    pad_token_id=n_vocab - 1,
                )
                return StableDiffusionPipeline(
                    vae=AutoencoderKL(**TINY_VAE),
                    text_encoder=CLIPTextModel(text_cfg),
                    tokenizer=tokenizer,
                    unet=UNet2DConditionModel(**TINY_UNET),
                    scheduler=scheduler,
                    safety_checker=None,
                    feature_extractor=None,
                    requires_safety_checker=False,
                )
            if arch == "sd15":
                return StableDiffusionPipeline(
                    vae=AutoencoderKL(**VAE),
                    text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                    tokenizer=tokenizer,
                    unet=UNet2DConditionModel(**SD15_UNET),
                    scheduler=scheduler,
                    safety_checker=None,
                    feature_extractor=None,
                    requires_safety_checker=False,
                )
            if arch == "sdxl":
                vae = AutoencoderKL(**{**VAE, "sample_size": 1024, "scaling_factor": 0.13025})
                return StableDiffusionXLPipeline(
                    vae=vae,
                    text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                    text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG)),
                    tokenizer=tokenizer,
                    tokenizer_2=tokenizer,
                    unet=UNet2DConditionModel(**SDXL_UNET),
                    scheduler=scheduler,
                )
    finally:
        torch.set_default_dtype(prev)
    raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")


def ensure_tiny_pipeline(folder: Path) -> Path:
    """Create the embedded tiny pipeline once (atomically) and return its folder."""
    if (folder / "model_index.json").exists():
        return folder
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-sd-", dir=folder.parent))
    try:
        pipe = build_pipeline("tiny", tmp / "_tok")
        pipe.save_pretrained(str(tmp / "pipe"))
        (tmp / "pipe" / "RIS_README.txt").write_text(
            "Untrained Stable Diffusion pipeline built offline by RIS for tests and as the "
            "embedded default. Its images are noise-like; configure a real checkpoint for "
            "real pictures.\n",
            encoding="utf-8",
        )
        try:
            (tmp / "pipe").rename(folder)
        except OSError:  # another process won the race: use its copy
            if not (folder / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
