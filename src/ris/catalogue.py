"""The models the product description names, by the short names `ris pull` takes.

Each entry says where its files live on the Hugging Face hub, which of them to fetch, which
backend runs them and the languages the model writes or speaks. Piper voices are not listed
one by one: `piper:<voice>` names any voice of rhasspy/piper-voices by its file name
(`zh_CN-huayan-medium`), whose folder follows from the name.

MobileDiffusion (also named by the description) is absent: Google published no weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ris.lanes import Lane

# The hub's revision to fetch; the commit it points to is recorded in the pulled folder.
MAIN = "main"
# Languages Qwen2.5's model card lists (it says "over 29 languages"; these are the ones named).
QWEN_LANGUAGES = ("zh", "en", "fr", "es", "pt", "de", "it", "ru", "ja", "ko", "vi", "th", "ar")
# Llama 3.2's officially supported languages (its model card).
LLAMA_LANGUAGES = ("en", "de", "fr", "it", "pt", "hi", "es", "th")
# A diffusers folder in its fp16 variant: configs, tokenizer files and the fp16 weights only.
DIFFUSERS_FP16 = ("model_index.json", "*/*.json", "*/*.txt", "*/*.fp16.safetensors")
# MobileDiffusion: named by the description; no public weights exist to pull.
UNAVAILABLE = {
    "mobilediffusion": "MobileDiffusion has no public weights (Google published the paper only); "
    "use sd-turbo or sdxl-turbo for few-step images",
}


@dataclass(frozen=True)
class CatalogueEntry:
    name: str  # the canonical short name, e.g. "qwen2.5:1.5b"
    lane: str  # the lane that runs it
    repo: str  # Hugging Face repository id
    files: tuple[str, ...]  # files to fetch: paths or fnmatch patterns, relative to the repo
    # The config entry's source, relative to the pulled folder ("" for the folder itself).
    source: str
    backend: str
    languages: tuple[str, ...]  # what it writes (LLM, image prompts) or speaks (TTS)
    description: str
    options: dict[str, Any] = field(default_factory=dict)
    revision: str = MAIN

    @property
    def folder(self) -> str:
        """Its folder under the data folder's models/: the name, safe on every filesystem."""
        return re.sub(r"[^A-Za-z0-9._-]", "-", self.name)


def _qwen(size: str) -> CatalogueEntry:
    repo = f"Qwen/Qwen2.5-{size.upper()}-Instruct-GGUF"
    if size == "7b":  # Qwen publishes its 7B Q4_K_M in two parts; llama.cpp loads the first
        files: tuple[str, ...] = tuple(f"qwen2.5-7b-instruct-q4_k_m-0000{i}-of-00002.gguf" for i in (1, 2))
    else:
        files = (f"qwen2.5-{size}-instruct-q4_k_m.gguf",)
    return CatalogueEntry(
        name=f"qwen2.5:{size}",
        lane=Lane.LLM,
        repo=repo,
        files=files,
        source=files[0],
        backend="llama_cpp",
        languages=QWEN_LANGUAGES,
        description=f"Qwen2.5-{size.upper()}-Instruct, Q4_K_M GGUF ({repo})",
        options={"n_ctx": 4096},
    )


def _llama(size: str) -> CatalogueEntry:
    repo = f"bartowski/Llama-3.2-{size.upper()}-Instruct-GGUF"
    file = f"Llama-3.2-{size.upper()}-Instruct-Q4_K_M.gguf"
    return CatalogueEntry(
        name=f"llama3.2:{size}",
        lane=Lane.LLM,
        repo=repo,
        files=(file,),
        source=file,
        backend="llama_cpp",
        languages=LLAMA_LANGUAGES,
        description=f"Llama-3.2-{size.upper()}-Instruct, Q4_K_M GGUF ({repo})",
        options={"n_ctx": 4096},
    )


def _turbo(name: str, repo: str, title: str) -> CatalogueEntry:
    return CatalogueEntry(
        name=name,
        lane=Lane.IMAGE,
        repo=repo,
        files=DIFFUSERS_FP16,
        source="",
        backend="diffusers",
        languages=("en",),  # CLIP text encoders trained on English captions
        description=f"{title}, diffusers folder, fp16 weights ({repo})",
        options={"turbo": True, "variant": "fp16"},
    )


_ENTRIES = [
    _qwen("0.5b"),
    _qwen("1.5b"),
    _qwen("7b"),
    _llama("1b"),
    _llama("3b"),
    _turbo("sd-turbo", "stabilityai/sd-turbo", "SD-Turbo (Stable Diffusion 2.1 distilled, 1-4 steps)"),
    _turbo("sdxl-turbo", "stabilityai/sdxl-turbo", "SDXL-Turbo (1-4 steps, 512x512)"),
]
CATALOGUE: dict[str, CatalogueEntry] = {e.name: e for e in _ENTRIES}
# Names without a size pick a default: small enough for a CPU, good enough to answer.
ALIASES = {"qwen2.5": "qwen2.5:1.5b", "llama3.2": "llama3.2:3b"}
# Piper voices the docs suggest; any other voice of rhasspy/piper-voices works by name.
PIPER_VOICES = ("zh_CN-huayan-medium", "en_US-lessac-medium", "de_DE-thorsten-medium", "fr_FR-siwis-medium")
PIPER_REPO = "rhasspy/piper-voices"
_PIPER_VOICE = re.compile(
    r"^(?P<lang>[a-z]{2,3})_(?P<region>[A-Z]{2})-(?P<voice>[A-Za-z0-9_]+)-(?P<quality>x_low|low|medium|high)$"
)


def _piper(voice: str) -> CatalogueEntry | None:
    m = _PIPER_VOICE.match(voice)
    if m is None:
        return None
    lang, region = m["lang"], m["region"]
    folder = f"{lang}/{lang}_{region}/{m['voice']}/{m['quality']}/{voice}"
    return CatalogueEntry(
        name=f"piper:{voice}",
        lane=Lane.TTS,
        repo=PIPER_REPO,
        files=(f"{folder}.onnx", f"{folder}.onnx.json"),
        source=f"{folder}.onnx",
        backend="piper",
        languages=(f"{lang}-{region}",),
        description=f"Piper voice {voice} ({PIPER_REPO})",
    )


def lookup(name: str) -> CatalogueEntry | None:
    """The entry a short name names (`qwen2.5`, `qwen2.5:7b`, `piper:zh_CN-huayan-medium`)."""
    name = name.strip()
    if name.lower().startswith("piper:"):
        return _piper(name[len("piper:") :])
    key = name.lower()
    return CATALOGUE.get(ALIASES.get(key, key))


def names() -> list[str]:
    """Every name `ris pull` takes, for listings and error messages."""
    return [*ALIASES, *CATALOGUE, *(f"piper:{v}" for v in PIPER_VOICES)]


def listing() -> str:
    return ", ".join(names()) + " (piper:<any rhasspy/piper-voices voice>)"


def writer_of(language: str, lane: str) -> str | None:
    """The short name to pull for a lane's model that writes (or speaks) `language`."""
    if lane == Lane.TTS:
        voices = [v for v in PIPER_VOICES if v.split("_")[0] == language]
        return f"piper:{voices[0]}" if voices else None
    for alias, target in ALIASES.items():
        entry = CATALOGUE[target]
        if entry.lane == lane and language in entry.languages:
            return alias
    found = [e.name for e in CATALOGUE.values() if e.lane == lane and language in e.languages]
    return found[0] if found else None


# Catalogue entries this process pulled into config.json (POST /api/pull): they serve after a
# restart, which is what a request for one is told (it was told to pull it again).
PULLED: set[str] = set()


def pull_hint(name: str, lane: str) -> str | None:
    """What to tell a request for a model that is not configured: the command that gets it."""
    key = name.strip().lower()
    if key in UNAVAILABLE:
        return UNAVAILABLE[key]
    entry = lookup(name)
    if entry is None or entry.lane != lane:
        return None
    if entry.name in PULLED:
        return (
            f"{name!r} was pulled into config.json after this server started: restart the server "
            "to serve it (it reads its configuration once, at start)"
        )
    return (
        f"{name!r} is in the model catalogue but not installed: run `ris pull {name}` "
        "(it downloads the model and adds it to config.json), then restart the server"
    )


__all__ = ["CATALOGUE", "PULLED", "CatalogueEntry", "listing", "lookup", "names", "pull_hint", "writer_of"]
