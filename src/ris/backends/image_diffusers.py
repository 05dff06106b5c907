"""Stable Diffusion 1.5 / SD-Turbo / SDXL / SDXL-Turbo through diffusers, offline only.

Sources: a diffusers-layout folder, a single `.safetensors` checkpoint (with `options.config`
naming a local diffusers folder of the same architecture for its configs and tokenizer),
`builtin:tiny-sd` (the embedded untrained pipeline, created once in the data folder), or
`load_format: "dummy"` with `source` sd15 / sdxl / tiny (random weights, real shapes).

GPU memory: the lane's budget caps torch's allocator (torch_memory.py), and a pipeline larger
than the budget runs with diffusers' model or sequential CPU offload, chosen from the sizes of
its components (ris.memory.fit.image_plan) and reported as the model's placement.

Preemption: `run.checkpoint()` is called between denoising steps and, under the `block`
policy, before every UNet resnet and attention block, so a step can pause half-way when a
real-time lane sharing the GPU needs it (and a cancelled task stops there).
"""

from __future__ import annotations

import io
import os
import secrets
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ris.backends import BackendContext, BackendError, resolve_source
from ris.backends.sd_arch import ARCHS, TINY_VERSION, build_pipeline, ensure_tiny_pipeline
from ris.backends.torch_memory import cap_allocator, pipeline_components
from ris.config import ModelSpec
from ris.lanes.image import GeneratedImage, ImageBackend, ImageRequest, ImageRun, default_steps
from ris.memory.fit import ImagePlan, image_plan
from ris.memory.footprint import DEFAULT_LOAD_DTYPES, torch_footprint
from ris.messages import ModelDetails

BUILTIN_TINY = "builtin:tiny-sd"


def install_block_hooks(unet: Any, checkpoint: Callable[[], None], cuda: bool, lookahead: int = 2) -> int:
    """Forward pre-hooks on the UNet's resnet and attention blocks; returns how many.

    On a GPU the host runs ahead of the device: each hook records a CUDA event and waits for
    the one `lookahead` blocks back, so at most that much work is queued when a pause begins,
    without a full synchronize per block (which cost 12% of throughput in the probe).
    """
    events: deque[Any] = deque()

    def hook(_module: Any, _args: Any) -> None:
        if cuda:
            ev = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ev.record()
            events.append(ev)
            if len(events) > lookahead:
                events.popleft().synchronize()
        checkpoint()

    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    count = 0
    for block in blocks:
        if block is None:
            continue
        for sub in [*(getattr(block, "resnets", None) or []), *(getattr(block, "attentions", None) or [])]:
            sub.register_forward_pre_hook(hook)
            count += 1
    return count


def _dtype(name: str | None, cuda: bool) -> torch.dtype:
    # The default is the footprint's (DEFAULT_LOAD_DTYPES), so the budget counts what loads.
    name = name or DEFAULT_LOAD_DTYPES["diffusers", cuda]
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise BackendError("bad_model", f"options.dtype {name!r} is not a torch dtype")
    return dt


class DiffusersImage(ImageBackend):
    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        if spec.load_format != "dummy" and spec.source != BUILTIN_TINY:
            resolve_source(spec.source)  # model_not_found

    def __init__(self, spec: ModelSpec, ctx: BackendContext) -> None:
        from diffusers import AutoPipelineForText2Image
        from diffusers.utils import logging as diffusers_logging

        # diffusers' loading bar ignores HF_HUB_DISABLE_PROGRESS_BARS: it wrote into the
        # server's log, and its tqdm lock is a named semaphore in a spawned worker, left in
        # /dev/shm when the service is killed (and a "leaked semaphore" warning at each stop).
        diffusers_logging.disable_progress_bar()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        torch.set_num_threads(ctx.threads)
        self._cuda = ctx.device.startswith("cuda")
        device = "cuda:0" if self._cuda else "cpu"  # the worker sees only its own GPU
        opts: dict[str, Any] = dict(spec.options)
        dtype = _dtype(opts.pop("dtype", None), self._cuda)
        self.turbo = bool(opts.pop("turbo", False))
        self.default_steps = default_steps(spec.options)
        opts.pop("default_steps", None)
        self.default_guidance = float(opts.pop("default_guidance", 0.0 if self.turbo else 7.5))
        lookahead = int(opts.pop("block_lookahead", 2))
        # The lane's GPU budget caps the allocator; a pipeline larger than it runs offloaded.
        budget = cap_allocator(ctx)
        plan: ImagePlan | None = None
        if spec.load_format == "dummy":
            arch = spec.source or "sd15"
            if arch not in ARCHS:
                raise BackendError("bad_model", f"dummy architecture {arch!r}; known: {', '.join(ARCHS)}")
            tokenizers = ctx.data_dir / "tokenizers" / "byte-clip"
            if budget is not None:  # sizes from a build on the meta device: no memory, no time
                shapes = build_pipeline(arch, tokenizers, "meta", dtype)
                plan = image_plan(torch_footprint(pipeline_components(shapes)), budget)
            whole = plan is None or plan.plan == "gpu"
            pipe = build_pipeline(arch, tokenizers, device if whole else "cpu", dtype)
        elif spec.source == BUILTIN_TINY:
            folder = ensure_tiny_pipeline(ctx.data_dir / "models" / f"tiny-sd-v{TINY_VERSION}")
            pipe = AutoPipelineForText2Image.from_pretrained(str(folder), local_files_only=True)
        else:
            pipe = self._load_path(resolve_source(spec.source), opts, dtype)
        if budget is not None and plan is None:  # loaded on the host: measured there
            plan = image_plan(torch_footprint(pipeline_components(pipe)), budget)
        self._pipe = self._place(pipe, plan, device)
        self.placement: str | None = None if plan is None else plan.plan
        self.placement_reason: str | None = None if plan is None else plan.reason
        self._pipe.set_progress_bar_config(disable=True)
        self._device = device
        # The task being generated: the UNet hooks (installed once) pause through its run.
        self._run: ImageRun | None = None
        self.hooks = 0
        if ctx.preemption is not None and ctx.preemption.mode == "block":
            self.hooks = install_block_hooks(self._pipe.unet, self._block_checkpoint, self._cuda, lookahead)

    @staticmethod
    def _place(pipe: Any, plan: ImagePlan | None, device: str) -> Any:
        """The pipeline where its plan puts it: whole on the device, or kept on the host with
        diffusers moving each component (model offload) or each layer (sequential offload) to
        the GPU as it runs; offloaded, the VAE decodes in tiles and slices, so a large image
        does not need the whole decode's activations at once."""
        if plan is None or plan.plan == "gpu":
            return pipe.to(device)
        if plan.plan is None:
            raise BackendError("model_too_large", f"the pipeline cannot run on the lane's GPU: {plan.reason}")
        if plan.plan == "model_offload":
            pipe.enable_model_cpu_offload(gpu_id=0)  # the worker sees only its own GPU, as cuda:0
        else:
            pipe.enable_sequential_cpu_offload(gpu_id=0)
        vae = getattr(pipe, "vae", None)
        for switch in ("enable_tiling", "enable_slicing"):
            if hasattr(vae, switch):
                getattr(vae, switch)()
        return pipe

    def describe(self) -> ModelDetails:
        return ModelDetails(placement=self.placement, placement_reason=self.placement_reason)

    def _block_checkpoint(self) -> None:
        if self._run is not None:
            self._run.checkpoint("block")

    @staticmethod
    def _load_path(path: Path, opts: dict[str, Any], dtype: torch.dtype) -> Any:
        from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline, StableDiffusionXLPipeline

        if path.is_dir():
            if not (path / "model_index.json").exists():
                raise BackendError(
                    "model_not_found", f"{str(path)!r} has no model_index.json (diffusers layout)"
                )
            return AutoPipelineForText2Image.from_pretrained(
                str(path), torch_dtype=dtype, local_files_only=True, **opts
            )
        if path.suffix not in (".safetensors", ".ckpt"):
            raise BackendError("bad_model", f"{str(path)!r}: expected a folder or a .safetensors file")
        if path.suffix == ".ckpt":
            # .ckpt files are pickles: loading one runs code from the file. Refuse.
            raise BackendError(
                "bad_model", f"{str(path)!r}: .ckpt (pickle) is refused; convert to .safetensors"
            )
        arch = opts.pop("arch", "sd15")
        config = opts.pop("config", None)
        if config is None or not Path(config).is_dir():
            raise BackendError(
                "model_config_missing",
                f"single-file checkpoint {str(path)!r} needs options.config: a local diffusers-layout "
                f"folder of the same architecture ({arch}) whose configs and tokenizer are used",
            )
        cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
        return cls.from_single_file(
            str(path), config=str(config), torch_dtype=dtype, local_files_only=True, **opts
        )

    def generate(self, req: ImageRequest, run: ImageRun) -> GeneratedImage:
        steps = req.steps or self.default_steps
        guidance = self.default_guidance if req.guidance is None else req.guidance
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        generator = torch.Generator(device=self._device).manual_seed(seed)

        def step_end(pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            # Some schedulers run more timesteps than steps asked (SD 1.5's PNDM: 26 for 25):
            # counted on the asked steps, reaching them only at the last timestep.
            timesteps = max(int(getattr(pipe, "num_timesteps", 0) or 0), steps)
            run.step((i + 1) * steps // timesteps, steps)
            run.checkpoint("step")  # also the last stop before the VAE decode
            return kwargs

        run.checkpoint("step")
        self._run = run
        try:
            with torch.inference_mode():
                image = self._pipe(
                    prompt=req.prompt,
                    negative_prompt=req.negative_prompt,
                    width=req.width,
                    height=req.height,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    generator=generator,
                    callback_on_step_end=step_end,
                ).images[0]
        except BaseException:
            if self.placement == "model_offload":
                # diffusers puts offloaded parts back only when a call ends well: after an
                # out-of-memory error or a cancel one may be left on the card, even half moved
                # (accelerate then skips moving it again), and every later image would fail.
                self._pipe.maybe_free_model_hooks()
            raise
        finally:
            self._run = None
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return GeneratedImage(
            png=buf.getvalue(), width=image.width, height=image.height, steps=steps, seed=seed
        )

    def set_threads(self, threads: int) -> None:
        # torch's intra-op pool: the next operator runs on the new count; threads it adds are
        # made by this thread, inheriting the affinity the lending set just before.
        if not self._cuda:
            torch.set_num_threads(threads)

    def close(self) -> None:
        del self._pipe  # the model cache collects it and returns the card's memory
