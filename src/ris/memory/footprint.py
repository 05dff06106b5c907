"""A model's memory footprint, from its files: weights + KV cache + a measured working margin.

Weights come from the file headers (files.py). A llama.cpp model's KV cache holds, for every
layer and KV head, a key and a value vector per token of context: 2 x n_layer x n_ctx x
parallel x n_head_kv x head_dim x bytes(type) (the LLM lane runs `parallel` sequences of
`n_ctx` tokens each in one context). The margin is what loading needs beyond both (compute
buffers, the library's own state, the worker's reading of the header), measured on this machine
with the embedded SmolLM2 GGUF as resident memory after the load less before it, less weights
and KV: 28-29 MiB for the backend alone at parallel 1 and 4, 48.5 MiB for a first load through
the worker's model cache at parallel 4 (bench/model_switch.py, "first_load_memory" in
bench/results/model_switch.json); the larger is kept.

A Hugging Face causal LM (transformers) batches in transformers' paged KV cache, allocated at
load: `kv_cache_tokens` tokens (default `parallel` sequences of up to 4,096), each a key and a
value per layer and KV head, in the model's dtype (config.json), the same arithmetic the
backend reports once loaded (ris.backends.hf_batch).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ris.backends import BackendError, resolve_source
from ris.config import ModelSpec
from ris.config.backend_options import LLAMA_CPP_DEFAULT_N_CTX
from ris.memory.files import GGUFInfo, ModelFileError, folder_weights, read_gguf, safetensors_bytes

MIB = 2**20
# Working memory beyond weights and KV cache, by model format (see the module's docstring).
GGUF_MARGIN_BYTES = 48 * MIB
# Torch models (diffusers, transformers): activations and allocator slack; a tenth of the
# weights, at least 64 MiB. Measured once on an H200: SD 1.5 fp16 at 512x512 under model
# offload peaked at 1,816 MiB allocated with its UNet 1,639 MiB, 177 MiB beyond it, inside this
# margin (203 MiB). The CUDA context is not in it (498-582 MiB per torch worker there).
TORCH_MARGIN_SHARE = 0.10
TORCH_MARGIN_MIN_BYTES = 64 * MIB
# onnxruntime (Piper's voices): what synthesis takes beyond the weights, measured as a TTS
# worker's resident memory after a 4,990-character text (each engine call at most 200
# characters) less the same worker idle: 164 MiB. Counted as 64 MiB, a ceiling the check took
# failed a 95-character sentence worker_out_of_memory.
ONNX_MARGIN_BYTES = 176 * MIB
# Bytes per KV element by llama.cpp cache type (type_k / type_v options; f16 is its default).
KV_TYPE_BYTES = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "q5_0": 22 / 32,
    "q5_1": 24 / 32,
}
# transformers' continuous-batching cache as the transformers backend sizes it (hf_batch.py).
HF_PAGE_TOKENS = 256  # the engine's page (block) size
HF_TOKENS_PER_SEQUENCE = 4096  # default context of each of the `parallel` sequences
HF_MAX_CONTEXT = 32768  # the backend's `max_context` default
TORCH_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
# The dtype a torch backend loads its models in when options.dtype names none, whatever dtype
# the files hold: half precision on a GPU (bf16 for transformers, as `transformers serve`; fp16
# for diffusers, as its pipelines are published), float32 on a CPU, where half precision is
# slow or unsupported. The backends read it here, so a footprint counts what they load.
DEFAULT_LOAD_DTYPES = {
    ("transformers", True): "bfloat16",
    ("transformers", False): "float32",
    ("diffusers", True): "float16",
    ("diffusers", False): "float32",
}
# llama.cpp's GGML type numbers as llama-cpp-python passes them (type_k=8 is q8_0).
GGML_TYPE_NAMES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0", 30: "bf16"}


@dataclass(frozen=True)
class Footprint:
    """Bytes a model needs while loaded: its weights, its KV cache (text models) and a margin.
    `layers` splits the weights of a layered model (GGUF) so a budget can place some layers
    only; `components` those of a pipeline (diffusers) for an offload plan."""

    weights: int
    kv: int = 0
    margin: int = 0
    layers: tuple[int, ...] = ()
    components: tuple[tuple[str, int], ...] = ()

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.margin

    def kv_per_layer(self) -> int:
        return self.kv // len(self.layers) if self.layers else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "weights_bytes": self.weights,
            "kv_bytes": self.kv,
            "margin_bytes": self.margin,
            "total_bytes": self.total,
        }


def kv_cache_bytes(
    info: GGUFInfo, n_ctx: int, parallel: int, type_k: str = "f16", type_v: str = "f16"
) -> int:
    """The KV cache of `parallel` sequences of `n_ctx` tokens on the model `info` describes."""
    per_token = kv_bytes_per_token(
        info.n_layer, info.n_head_kv, info.head_dim_k, info.head_dim_v, type_k, type_v
    )
    return int(per_token * n_ctx * parallel)


def kv_bytes_per_token(
    n_layer: int, n_head_kv: int, k_len: int, v_len: int, type_k: str = "f16", type_v: str = "f16"
) -> float:
    """One token's KV cache: per layer, a key and a value vector per KV head (read from a file's
    header here, from a loaded model by the llama.cpp batch)."""
    return n_layer * n_head_kv * (k_len * KV_TYPE_BYTES[type_k] + v_len * KV_TYPE_BYTES[type_v])


def hf_kv_cache_tokens(parallel: int, max_context: int, kv_cache_tokens: int | None) -> int:
    """The tokens transformers' paged cache holds for the transformers backend: the model's
    `kv_cache_tokens`, else `parallel` sequences of up to 4,096 tokens; whole pages."""
    tokens = kv_cache_tokens or parallel * min(max_context, HF_TOKENS_PER_SEQUENCE)
    return -(-tokens // HF_PAGE_TOKENS) * HF_PAGE_TOKENS


def hf_kv_bytes_per_token(config: dict[str, Any], dtype: str | None = None) -> int | None:
    """One token's KV cache for a Hugging Face model's config.json (None: not a text model
    whose config says its layers and heads); `dtype` as the model is loaded, else its own."""
    text = config.get("text_config") or config
    layers, heads, hidden = (text.get(k) for k in ("num_hidden_layers", "num_attention_heads", "hidden_size"))
    if not (layers and heads and hidden):
        return None
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or hidden // heads
    name = dtype or text.get("torch_dtype") or text.get("dtype") or config.get("torch_dtype") or "float32"
    return int(layers * kv_heads * head_dim * 2 * TORCH_DTYPE_BYTES.get(str(name), 4))


def load_dtype(backend: str, options: dict[str, Any], device: str) -> str | None:
    """The torch dtype `backend` loads a model in on `device` (None: not a torch backend, or
    a dtype option this table does not know: the files' own dtypes are counted then)."""
    name = options.get("dtype") or DEFAULT_LOAD_DTYPES.get((backend, device.startswith("cuda")))
    return str(name) if name in TORCH_DTYPE_BYTES else None


def _config(folder: Path) -> dict[str, Any] | None:
    """A model folder's config.json (None: none, or not readable JSON)."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        config = _cached(path, lambda p: json.loads(p.read_text()))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _quantized(folder: Path) -> bool:
    """A pre-quantized Hugging Face model (GPTQ, AWQ, FP8, bitsandbytes...): its config says so."""
    config = _config(folder)
    return config is not None and bool(
        config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config")
    )


def _hf_kv_bytes(folder: Path, options: dict[str, Any], parallel: int, dtype: str | None) -> int:
    """The KV cache the transformers backend allocates for the causal LM in `folder` (0: the
    folder holds no causal LM's config.json: a diffusers pipeline, a speech model)."""
    config = _config(folder)
    if config is None:
        return 0
    if not any(str(a).endswith("ForCausalLM") for a in config.get("architectures") or ()):
        return 0
    per_token = hf_kv_bytes_per_token(config, dtype or options.get("dtype"))
    if per_token is None:
        return 0
    max_context = int(options.get("max_context", HF_MAX_CONTEXT))
    tokens = hf_kv_cache_tokens(parallel, max_context, options.get("kv_cache_tokens"))
    return tokens * per_token


def gguf_footprint(
    info: GGUFInfo, n_ctx: int, parallel: int, type_k: str = "f16", type_v: str = "f16"
) -> Footprint:
    return Footprint(
        weights=info.tensor_bytes,
        kv=kv_cache_bytes(info, n_ctx, parallel, type_k, type_v),
        margin=GGUF_MARGIN_BYTES,
        layers=info.layer_bytes,
    )


def torch_footprint(components: dict[str, int]) -> Footprint:
    weights = sum(components.values())
    return Footprint(
        weights=weights,
        margin=max(TORCH_MARGIN_MIN_BYTES, int(weights * TORCH_MARGIN_SHARE)),
        components=tuple(sorted(components.items())),
    )


def _kv_type(value: Any) -> str:
    if isinstance(value, int):
        return GGML_TYPE_NAMES.get(value, "f16")
    return str(value) if str(value) in KV_TYPE_BYTES else "f16"


_CACHE: dict[tuple[str, int, float, str], Any] = {}


def _cached(path: Path, read: Any, variant: str = "") -> Any:
    """File facts, read once per file version (a header read takes a quarter second);
    `variant` tells apart readings of one file that differ (sizes at another dtype)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime, variant)
    if key not in _CACHE:
        _CACHE[key] = read(path)
    return _CACHE[key]


def file_footprint(
    path: Path, options: dict[str, Any], parallel: int, dtype: str | None = None
) -> Footprint | None:
    """The footprint of the model at `path` as its backend `options` load it (n_ctx and the KV
    cache types for GGUF), serving `parallel` sequences, its floating-point weights and KV
    cache in torch `dtype` (None: as the files hold them); None when the files say nothing of
    it (a speech engine with no model file). Raises ModelFileError for a damaged file."""
    float_bytes = TORCH_DTYPE_BYTES.get(dtype) if dtype else None
    variant = str(float_bytes or "")
    if path.is_file() and path.suffix == ".gguf":
        info: GGUFInfo = _cached(path, read_gguf)
        n_ctx = int(options.get("n_ctx", LLAMA_CPP_DEFAULT_N_CTX))
        return gguf_footprint(
            info,
            n_ctx,
            parallel,
            _kv_type(options.get("type_k", "f16")),
            _kv_type(options.get("type_v", "f16")),
        )
    if path.is_file() and path.suffix == ".safetensors":
        return torch_footprint({"": _cached(path, lambda p: safetensors_bytes(p, float_bytes), variant)})
    if path.is_dir():
        if _quantized(path):  # its weights load as stored (and their scales with them)
            float_bytes, variant = None, ""
        parts: dict[str, int] = _cached(path, lambda p: folder_weights(p, float_bytes), variant)
        if not parts:
            return None
        if _onnx_only(path):  # a Piper voice's folder: onnxruntime's working memory, not torch's
            return Footprint(weights=sum(parts.values()), margin=ONNX_MARGIN_BYTES)
        return replace(torch_footprint(parts), kv=_hf_kv_bytes(path, options, parallel, dtype))
    if path.is_file() and path.suffix == ".onnx":
        return Footprint(weights=os.path.getsize(path), margin=ONNX_MARGIN_BYTES)
    if path.is_file():
        return Footprint(weights=os.path.getsize(path))  # a file of another kind: read whole
    return None


def _onnx_only(folder: Path) -> bool:
    """A folder whose weights are ONNX files only (no safetensors, no torch checkpoint)."""
    names = {p.suffix for p in folder.rglob("*") if p.is_file()}
    return ".onnx" in names and not names & {".safetensors", ".bin", ".pt", ".pth", ".ckpt"}


def model_footprint(spec: ModelSpec, parallel: int, device: str) -> Footprint | None:
    """A configured model's footprint as its backend loads it on `device` (None: no file to
    read it from: a missing file, which its load reports, a `builtin:` recipe or a speech
    engine without one). Raises ModelFileError."""
    if spec.source is None or spec.source.startswith("builtin:"):
        return None
    try:
        path = resolve_source(spec.source)
    except BackendError:
        return None
    return file_footprint(path, spec.options, parallel, load_dtype(spec.backend, spec.options, device))


__all__ = [
    "DEFAULT_LOAD_DTYPES",
    "GGML_TYPE_NAMES",
    "GGUF_MARGIN_BYTES",
    "Footprint",
    "ModelFileError",
    "file_footprint",
    "gguf_footprint",
    "hf_kv_bytes_per_token",
    "hf_kv_cache_tokens",
    "kv_cache_bytes",
    "load_dtype",
    "model_footprint",
    "torch_footprint",
    "kv_bytes_per_token",
]
