"""What a model's files say of its size, read from their headers alone (no weights loaded).

GGUF (llama.cpp): a header of metadata key/values and tensor descriptions, then the tensor data
at aligned offsets; a tensor's size is the distance from its offset to the next one's, so no
table of quantisation block sizes is needed. Safetensors (diffusers components, Hugging Face
models): 8 bytes of little-endian header length, then a JSON header giving each tensor's byte
range. Both readers are plain file I/O: callers on the event loop run them in a thread.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

_GGUF_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# GGUF metadata value types -> struct formats (8: string, 9: array are read apart).
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")
# Metadata arrays (a tokenizer's vocabulary) are skipped, not kept: only scalars matter here.
_SKIPPED = object()


class ModelFileError(ValueError):
    """A model file is not what its name says (truncated, wrong magic, unreadable header)."""


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file's header says: its architecture's shape and the size of each tensor."""

    architecture: str
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    tensor_bytes: int  # all tensors' data
    layer_bytes: tuple[int, ...]  # tensors named blk.<i>.*, by layer
    metadata: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def other_bytes(self) -> int:
        """Tensors outside the repeated layers (embeddings, output head, final norm)."""
        return self.tensor_bytes - sum(self.layer_bytes)


class _Reader:
    def __init__(self, f: BinaryIO, path: Path) -> None:
        self._f = f
        self._path = path

    def take(self, n: int) -> bytes:
        data = self._f.read(n)
        if len(data) != n:
            raise ModelFileError(f"{self._path}: the GGUF header ends early (truncated file?)")
        return data

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > 1 << 24:
            raise ModelFileError(f"{self._path}: a GGUF string of {n} bytes; the header is damaged")
        return self.take(n).decode("utf-8", "replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            if item_type in _SCALARS:
                self._f.seek(struct.calcsize(_SCALARS[item_type]) * count, 1)
            else:
                for _ in range(count):
                    self.value(item_type)
            return _SKIPPED
        raise ModelFileError(f"{self._path}: unknown GGUF value type {vtype}")

    def tell(self) -> int:
        return self._f.tell()


_SHARD_RE = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


def _read_tensors(path: Path) -> tuple[dict[str, Any], int, dict[int, int]]:
    """One GGUF file's metadata, tensor data bytes and bytes by repeated layer."""
    size = path.stat().st_size
    with path.open("rb") as f:
        r = _Reader(f, path)
        if r.take(4) != _GGUF_MAGIC:
            raise ModelFileError(f"{path}: not a GGUF file (its first bytes are not 'GGUF')")
        version = r.scalar("<I")
        if version not in (2, 3):
            raise ModelFileError(f"{path}: GGUF version {version}; versions 2 and 3 are read")
        n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            value = r.value(r.scalar("<I"))
            if value is not _SKIPPED:
                meta[key] = value
        offsets: list[tuple[int, str]] = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.scalar("<I")
            f.seek(8 * n_dims + 4, 1)  # dims, ggml type
            offsets.append((r.scalar("<Q"), name))
        align = int(meta.get("general.alignment", _DEFAULT_ALIGNMENT))
        data_start = -(-r.tell() // align) * align
    offsets.sort()
    ends = [o for o, _ in offsets[1:]] + [size - data_start]
    by_layer: dict[int, int] = {}
    for (start, name), end in zip(offsets, ends, strict=True):
        m = _LAYER_RE.match(name)
        if m:
            by_layer[int(m.group(1))] = by_layer.get(int(m.group(1)), 0) + end - start
    return meta, size - data_start, by_layer


def read_gguf(path: Path) -> GGUFInfo:
    """The header of a GGUF file (versions 2 and 3). A model split in shards
    (`name-00001-of-00003.gguf`, as llama.cpp's gguf-split writes) is read from all of them:
    llama.cpp loads the rest beside the first, and each shard's header lists its own tensors."""
    meta, tensor_bytes, by_layer = _read_tensors(path)
    shard = _SHARD_RE.match(path.name)
    count = int(meta.get("split.count", 1))
    if shard is not None and count > 1:
        for i in range(1, count + 1):
            other = path.with_name(f"{shard['stem']}-{i:05d}-of-{count:05d}.gguf")
            if other == path:
                continue
            if not other.is_file():
                raise ModelFileError(f"{path}: shard {i} of {count}, {other.name}, is missing beside it")
            _, more_bytes, more_layers = _read_tensors(other)
            tensor_bytes += more_bytes
            for layer, n in more_layers.items():
                by_layer[layer] = by_layer.get(layer, 0) + n
    arch = str(meta.get("general.architecture", "llama"))

    def num(key: str, default: int | None = None) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelFileError(f"{path}: the GGUF header has no {arch}.{key}")
        return int(value)

    n_layer = num("block_count")
    n_head = num("attention.head_count")
    head_dim = num("embedding_length") // max(n_head, 1)
    return GGUFInfo(
        architecture=arch,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=num("attention.head_count_kv", n_head),
        head_dim_k=num("attention.key_length", head_dim),
        head_dim_v=num("attention.value_length", head_dim),
        tensor_bytes=tensor_bytes,
        layer_bytes=tuple(by_layer.get(i, 0) for i in range(n_layer)),
        metadata=meta,
    )


# Safetensors dtypes that a torch load converts to the load dtype. Integer tensors (position
# ids, a quantisation's packed weights) and FP8 ones (transformers keeps a pre-quantized
# model's parameters in their own dtype) keep theirs.
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


def safetensors_bytes(path: Path, float_bytes: int | None = None) -> int:
    """The tensor data of one .safetensors file, from its header; with `float_bytes`, what its
    floating-point tensors take once loaded at that many bytes an element (a bf16 file loaded
    as float32 on a CPU takes twice its size)."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ModelFileError(f"{path}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 2**20:
            raise ModelFileError(f"{path}: a safetensors header of {n} bytes; the file is damaged")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ModelFileError(f"{path}: the safetensors header is not JSON: {e}") from e
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        if float_bytes is not None and entry.get("dtype") in FLOAT_DTYPES:
            total += math.prod(int(d) for d in entry.get("shape", ())) * float_bytes
        else:
            total += int(end) - int(start)
    return total


def folder_weights(folder: Path, float_bytes: int | None = None) -> dict[str, int]:
    """Weight bytes of a model folder by component: a diffusers pipeline's subfolders (unet,
    vae, text_encoder...) or "" for a Hugging Face model's top level. Safetensors are read from
    their headers; where a component has none, its .bin/.pt/.onnx files count by size. When a
    component has both a full and a variant (fp16) copy, the larger is counted, the safe side.
    Only what loads counts: a pipeline's components as its model_index.json lists them (not a
    single-file copy beside them, as the sd-turbo repositories ship), a model's top level (not
    an original/ or onnx/ copy in a subfolder). `float_bytes`: as safetensors_bytes (files
    read by size count as they are)."""
    parts: dict[str, int] = {}
    for comp_dir in _loaded_folders(folder):
        comp = "" if comp_dir == folder else comp_dir.name
        st = sorted(comp_dir.glob("*.safetensors"))
        if st:
            parts[comp] = _largest_variant(st, lambda p: safetensors_bytes(p, float_bytes))
            continue
        other = [p for p in comp_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".onnx", ".ckpt")]
        if other:
            parts[comp] = _largest_variant(other, lambda p: p.stat().st_size)
    return parts


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".ckpt")


def _loaded_folders(folder: Path) -> list[Path]:
    """The folders whose weights a load of `folder` reads."""
    index = folder / "model_index.json"
    if index.is_file():
        try:
            listed = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelFileError(f"{index}: not readable JSON: {e}") from e
        names = [k for k, v in listed.items() if not k.startswith("_") and isinstance(v, list)]
        listed_dirs = [folder / n for n in sorted(names) if (folder / n).is_dir()]
        # An index that lists nothing (written by hand): its subfolders, still not a top-level copy.
        return listed_dirs or sorted(p for p in folder.iterdir() if p.is_dir())
    if any(p.suffix in _WEIGHT_SUFFIXES for p in folder.iterdir() if p.is_file()):
        return [folder]
    return [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]


def _largest_variant(files: Iterable[Path], size_of: Any) -> int:
    """Shards of one copy add up; copies that differ by variant (model.fp16.safetensors beside
    model.safetensors) are alternatives: the largest copy counts."""
    copies: dict[str, int] = {}
    for p in files:
        parts = p.stem.split(".")
        variant = parts[1] if len(parts) > 1 else ""
        copies[variant] = copies.get(variant, 0) + int(size_of(p))
    return max(copies.values())
