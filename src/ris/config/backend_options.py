"""The `options` of a model in config.json, as each built-in backend reads them.

`options` is free-form in the schema (each backend has its own), so a value of the wrong type or
out of range passed the loader and failed later: `"n_ctx": "big"` as a traceback of the memory
estimate, `"n_ctx": -5` as a worker restarted forever, `"default_steps": 0` as every image's
ZeroDivisionError. Each backend registers
the options it reads itself (ris.lanes.base.BackendEntry); the loader checks them, all
problems at once, by path. A backend that hands the rest to its library (llama-cpp-python's
Llama, diffusers' from_pretrained) allows other keys; the llama.cpp worker checks those
against Llama's own parameters when it loads. Options of a plugin's backend are its own.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Options(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class _Closed(_Options):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# llama.cpp's KV cache types as GGML type numbers (ris.memory.footprint.GGML_TYPE_NAMES): another
# number fails an assertion inside llama.cpp, which aborts the worker at every start.
KVType = Literal[0, 1, 2, 3, 6, 7, 8, 30]
# The floating dtypes a model's weights load in (torch's names; checked without importing torch).
TorchDType = Literal["float32", "float16", "bfloat16", "float64", "half", "float", "double"]
# Llama's parameters the llama_cpp backend sets itself (its threads are the lane's, its context
# and batch the continuous batch's): one in `options` too raised "got multiple values" in the
# worker at every start, after `ris config --check` had passed it.
LLAMA_SET_BY_RIS = {
    "model_path": "the model's `source`",
    "n_threads": "lanes.llm.threads",
    "n_threads_batch": "lanes.llm.threads",
    "n_batch": "prefill_chunk (RIS sizes the batch)",
}

# The context of each slot where a llama_cpp model's options name no n_ctx.
LLAMA_CPP_DEFAULT_N_CTX = 2048


class LlamaCppOptions(_Options):
    """RIS reads these; the others go to llama-cpp-python's Llama (its parameters: checked here
    where its source can be read, and at load)."""

    n_ctx: int | None = Field(
        default=None,
        ge=64,
        le=1 << 20,
        description="context tokens of each of the lane's `parallel` slots, each with its own KV cache "
        "(default 2048)",
    )
    prefill_chunk: int | None = Field(
        default=None,
        ge=1,
        le=1 << 16,
        description="prompt tokens prefilled per decode step while other streams decode, so a long "
        "prompt does not stall them (default 32 on a CPU, 512 on a GPU; a prompt with nobody decoding "
        "goes in up to 512 a step)",
    )
    flash_attn: bool | None = Field(
        default=None,
        description="flash attention; unset: llama.cpp decides on a GPU (as llama-server does), off on a "
        "CPU (there a seeded answer then depends on how its prompt was batched)",
    )
    n_gpu_layers: int | None = Field(
        default=None,
        ge=-1,
        description="layers on the GPU (-1: all); unset on a GPU lane: as many as its GPU budget "
        "holds with the KV cache, all where no budget is set; 0 on a CPU lane",
    )
    # The KV cache's element types, as llama-cpp-python's Llama takes them: GGML type numbers
    # (8: q8_0; ris.memory.footprint.GGML_TYPE_NAMES).
    type_k: KVType | None = Field(
        default=None,
        description="the KV cache's key type as a GGML type number: 0 f32, 1 f16 (the default), "
        "2 q4_0, 3 q4_1, 6 q5_0, 7 q5_1, 8 q8_0 (about half f16's memory), 30 bf16; counted in the "
        "model's footprint (another number aborted llama.cpp in the worker)",
    )
    type_v: KVType | None = Field(
        default=None,
        description="the KV cache's value type, as type_k (a quantized one wants flash_attn on)",
    )


class TransformersOptions(_Options):
    """RIS reads these; the others go to from_pretrained."""

    dtype: TorchDType | None = Field(
        default=None,
        description="the torch dtype the weights load in (default bfloat16 on a GPU, float32 on a CPU)",
    )
    max_context: int | None = Field(
        default=None, ge=64, description="the longest sequence, prompt and answer (default 32768)"
    )
    kv_cache_tokens: int | None = Field(
        default=None,
        ge=1,
        description="tokens the continuous-batching engine's paged KV cache holds, shared by the "
        "sequences (default the lane's parallel x 4096, or x max_context where that is less; never "
        "the engine's 90% of free GPU memory)",
    )
    cuda_graphs: bool | None = Field(
        default=None, description="CUDA graphs for the engine's steps; unset: transformers decides"
    )
    compile_level: int | None = Field(
        default=None,
        ge=0,
        le=3,
        description="torch.compile of the engine's steps, 0 (none, the default) to 3",
    )


class DiffusersOptions(_Options):
    """RIS reads these; the others go to from_pretrained (`variant`, `use_safetensors`, ...).
    A request that names no steps runs `default_steps` held to server.max_image_steps."""

    dtype: TorchDType | None = Field(
        default=None,
        description="the torch dtype the pipeline loads in (default float16 on a GPU, float32 on a CPU)",
    )
    turbo: bool | None = Field(
        default=None,
        description="a turbo model (SD-Turbo, SDXL-Turbo): chosen by a request's use_turbo, 4 steps "
        "and guidance 0 by default",
    )
    default_steps: int | None = Field(
        default=None, ge=1, description="steps when a request names none (default 25; turbo: 4)"
    )
    default_guidance: float | None = Field(
        default=None,
        ge=0.0,
        le=30.0,
        description="guidance when a request names none (default 7.5; turbo: 0)",
    )
    block_lookahead: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="UNet blocks queued on the GPU ahead of the yield checks: how long a yield to the "
        "LLM may wait (default 2)",
    )
    arch: Literal["sd15", "sdxl"] | None = Field(
        default=None, description="a single .safetensors file's architecture: sd15 (default) or sdxl"
    )
    config: str | None = Field(
        default=None,
        description="for a single file: a local diffusers-layout folder of the same architecture, "
        "whose configs and tokenizer it loads with",
    )


class Pyttsx3Options(_Closed):
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="seconds one piece of text (up to 200 characters) may take (default 30)",
    )


class NoOptions(_Closed):
    """A backend that reads no option (Piper, espeak-ng): any key given is a mistake."""


@functools.cache
def llama_parameters() -> frozenset[str] | None:
    """The parameters llama-cpp-python's installed Llama takes by name, read from its source
    (importing it would load llama.cpp's library into the server); None where it cannot be
    read. A typo ("n_ctxx") passed `ris config` and `ris serve`'s checks, and failed only in the
    worker, restarted for ever."""
    try:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.submodule_search_locations:
            return None
        source = Path(next(iter(spec.submodule_search_locations))) / "llama.py"
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError, ImportError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Llama":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args
                    names = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)}
                    return frozenset(names - {"self", "model_path"})
    return None


# Backends whose options besides RIS's own go to a library, and the names that library takes.
_LIBRARY_PARAMETERS = {"llama_cpp": (llama_parameters, "llama.cpp (llama-cpp-python's Llama)")}


def option_problems(
    where: str, backend: str, model: type[BaseModel] | None, options: dict[str, Any], *, library: bool = True
) -> list[str]:
    """What is wrong with a model's `options` (`where`: its path, "lanes.llm.models.m.options");
    `library`: also the names a backend's library takes (this host's version of it)."""
    if model is None:
        return []
    reserved = [
        f"{where}.{key}: set by RIS itself, not an option here (use {instead})"
        for key, instead in (LLAMA_SET_BY_RIS.items() if backend == "llama_cpp" else ())
        if key in options
    ]
    try:
        model.model_validate(options)
    except ValidationError as e:
        return reserved + [_problem(where, backend, err) for err in e.errors()]
    if reserved:
        return reserved
    if library and backend in _LIBRARY_PARAMETERS:
        parameters, named = _LIBRARY_PARAMETERS[backend]
        known = parameters()
        if known is not None:
            known = known | set(model.model_fields)
            return [
                f"{where}.{key}: not an option of {named} nor of RIS's {backend} backend" + _near(key, known)
                for key in options
                if key not in known
            ]
    return []


def _near(key: str, known: frozenset[str] | set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=3)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _problem(where: str, backend: str, err: Any) -> str:
    key = ".".join(str(part) for part in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{where}.{key}: the {backend} backend takes no option {key!r}"
    return f"{where}.{key}: {err['msg']} (got {err.get('input')!r})"
