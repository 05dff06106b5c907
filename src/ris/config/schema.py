"""The settings model of config.json: pydantic, one docstring per field, bounds on every number.

Lanes are keyed by name. The model knows no lane kind: the loader (load.py) first fills in
each kind's own defaults (ris.lanes) and the lanes a config does not mention, disabled, so what
a Config means never depends on which kinds happened to be registered when it was validated.
Checks against the machine live in checks.py.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ris.machine import MachineInfo
from ris.scheduler import LanePolicy, Ordering, PriorityClass

_DEVICE_RE = re.compile(r"^(cpu|cuda:(\d+))$")
# llama.cpp's own bound on sequences in one context (LLAMA_MAX_SEQ).
MAX_PARALLEL = 256


class ConfigError(ValueError):
    """config.json (or a default built from the machine) is not usable; the message says why."""


class _Strict(BaseModel):
    # No Infinity or NaN (JSON readers take 1e309 and NaN): a budget or a timeout that is not a
    # number is refused here, where it failed later as an OverflowError's traceback.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
    languages: tuple[str, ...] | None = Field(
        default=None,
        description="languages the model writes or speaks (tags like 'en', 'zh'); a prompt in "
        "another is answered with a warning; None: unknown, nothing is flagged",
    )
    preload: bool | None = Field(
        default=None,
        description="load at the worker's start rather than on first use; None: the lane's default "
        "model preloads (every model of a speech lane), the others load on first use",
    )


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
    yield_to: tuple[str, ...] | None = Field(
        default=None,
        description="the real-time lanes to yield to; None: those sharing the lane's hardware (here: "
        "its GPU or overlapping cores; on a cluster: its GPU only, since core numbers of different "
        "machines say nothing about sharing). On a cluster, lanes yielded to are placed on its node",
    )


class LaneConfig(_Strict):
    """Resources, limits and models of one lane, served by its own worker process."""

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
    wait_policy: Literal["auto", "spin", "passive"] = Field(
        default="auto",
        description="how the worker's OpenMP threads (llama.cpp, torch) wait for each other: "
        "'spin' a moment before sleeping (the library's default: multi-threaded decode at "
        "llama.cpp's speed), 'passive' sleep at once (cycles left to a lane sharing the cores); "
        "'auto': passive where an enabled lane of the same or a higher OS priority shares a core "
        "(or, for a lane that yields, its hardware), else spin",
    )
    exclusive_cores: bool = Field(
        default=True,
        description="a real-time lane's cores may not be given to another one; false lets this "
        "lane share another's (said at start where that one says true)",
    )
    borrow_idle_cores: bool = Field(
        default=False,
        description="work-conserving isolation (LLM, TTS and image lanes on CPU): while it has work, "
        "the lane also runs on the cores of real-time lanes that are idle, and gives them back "
        "before its next step (a decode step, a sentence, a denoising step) once their owner gets "
        "work "
        "(docs/PERFORMANCE_OPTIMIZATION.md)",
    )
    min_cpu_share: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="batch lanes (applied on CPU; kept, unused, on a GPU): the share of a core the "
        "lane keeps while real-time lanes saturate it, set by a cgroup's cpu.shares where the OS "
        "lets the server make one, else "
        "by the nice level whose CPU weight gives it; None: the lane's nice alone",
    )
    max_queue: int = Field(default=64, ge=0, le=1_000_000, description="queued tasks at most")
    aging_s: float = Field(default=10.0, gt=0, description="waiting worth one priority step")
    client_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="the share of the lane's slots one client (API key, else address) may hold "
        "while another client's task waits (at least one slot; 1: priority order alone)",
    )
    client_queue_share: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="the share of the lane's queue places one client (API key, else address) may "
        "hold (at least one; 1: any, up to max_queue), so one key cannot lock the others out; "
        "null: 0.5 where server.api_keys holds more than one key, else 1",
    )
    request_timeout_s: float = Field(
        default=300.0, gt=0, description="default deadline of a request, from its submission"
    )
    heartbeat_timeout_s: float = Field(
        default=10.0,
        # A worker says it is alive every 0.5 s (HEARTBEAT_INTERVAL_S); below a few of those
        # every healthy idle worker would be declared hung and restarted, over and over.
        ge=2.0,
        description="a worker silent this long is declared hung (at least 2 s: workers report every 0.5 s)",
    )
    busy_timeout_s: float = Field(
        default=300.0, gt=0, description="a task with no progress this long is declared hung"
    )
    load_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="model loading at most, at start or on first use (busy_timeout_s waits while one loads)",
    )
    parallel: int = Field(
        default=1,
        ge=1,
        le=MAX_PARALLEL,
        description="tasks the worker runs at once (the LLM lane batches them, continuous "
        "batching; the TTS lane speaks them a piece each in turn, 4 by default); the image lane "
        "runs one at a time",
    )
    memory_limit_mb: int | None = Field(
        default=None,
        ge=0,
        le=2**30,
        description="the worker's memory ceiling (resident MiB): a worker over it is restarted and "
        "its tasks fail `worker_out_of_memory`; None: the lane kind's share of the machine's "
        "memory (TTS 25%, others 60%); 0: no ceiling",
    )
    memory_budget_mb: int | None = Field(
        default=None,
        ge=1,
        le=2**30,
        description="RAM the lane's loaded models may use together (their footprints: weights, KV "
        "cache, working margin; on a GPU lane what each keeps in RAM beside the card): a model that "
        "must load when the rest leave too little evicts the least recently used idle one; None: "
        "the worker's memory ceiling (memory_limit_mb)",
    )
    gpu_memory_gb: float | None = Field(
        default=None,
        gt=0,
        description="GPU lanes: the lane's budget on its card, in GiB, for each of its workers; lanes "
        "sharing a card must fit it together with every worker's CUDA context (512 MiB); None: "
        "gpu_memory_fraction, else an equal part of what other lanes leave (at least 256 MiB)",
    )
    gpu_memory_fraction: float | None = Field(
        default=None, gt=0, le=1, description="GPU lanes: the lane's budget as a share of its card"
    )
    keep_alive_s: float | None = Field(
        default=None,
        description="seconds an idle model stays loaded after its last request (a request may say "
        "its own, as Ollama's keep_alive); None or negative: until evicted; 0: unloaded once idle",
    )
    default_model: str | None = None
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    preemption: PreemptionConfig = Field(
        default_factory=PreemptionConfig,
        description="preemptible (image) lanes only: how they yield to real-time lanes",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=64,
        description="workers serving the lane; the scheduler dispatches to free slots across them "
        "(meant for cluster mode, where each is placed on a node advertising the lane's resource)",
    )
    min_replicas: int = Field(
        default=1,
        ge=1,
        le=64,
        description="cluster mode: the workers the nodes must be able to host for the server to "
        "start; the others wait (pending) for nodes that can host them and serve once they join",
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
        """Its threads: as set, else one per core it runs on, never more than the CPUs' worth
        of time a container's quota holds (machine.cpus)."""
        if self.threads is not None:
            return self.threads
        return min(machine.cpus, len(self.cores) if self.cores is not None else len(machine.cores))

    def memory_limit_bytes(self, machine: MachineInfo, default_share: float) -> int | None:
        if self.memory_limit_mb is None:
            return int(machine.memory_bytes * default_share)
        return self.memory_limit_mb * 2**20 if self.memory_limit_mb else None

    def policy(self, keys: int = 0) -> LanePolicy:
        """The scheduler's policy for the lane; `keys`: how many API keys the server has (with
        several, clients are users to keep from locking each other out of a queue; with one or
        none, most often one person, whose queue is all theirs)."""
        pclass = PriorityClass.REALTIME if self.priority_class == "realtime" else PriorityClass.BATCH
        queue_share = self.client_queue_share
        if queue_share is None:
            queue_share = DEFAULT_CLIENT_QUEUE_SHARE if keys > 1 else 1.0
        return LanePolicy(
            max_queue=self.max_queue,
            aging_s=self.aging_s,
            priority_class=pclass,
            client_share=self.client_share,
            client_queue_share=queue_share,
        )

    def resolve_model(self, name: str | None) -> str:
        """The configured model name a request's `model` field picks (default when absent)."""
        if name is None:
            if self.default_model is None:
                raise KeyError("this lane has no default model; name one")
            return self.default_model
        if name not in self.models:
            raise KeyError(f"unknown model {name!r}; configured: {', '.join(sorted(self.models)) or 'none'}")
        return name


# A named key's name: it is the owner of the key's tasks, shown to admins and in logs, so it is
# kept short and plain (no ':', which marks the fingerprint owners of plain keys).
KEY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"

# What `ris config` prints in place of a key, so its output can be pasted into a terminal, a
# ticket or a log; refused as a key, so the printed file cannot serve with a known secret.
KEY_PLACEHOLDER = "REDACTED"
# Of a stop's grace, the seconds kept to write the server_shutdown answers once the engine has
# ended their tasks (cli.py): the least shutdown_grace_s.
ANSWER_MARGIN_S = 1.5
# The least server.memory_limit_mb that leaves the API process room to serve (0: none).
MIN_SERVER_MEMORY_MB = 256


class NamedKey(_Strict):
    """An API key that is a user: its tasks are its own (docs/DEPLOYMENT_GUIDE.md, Security)."""

    name: str = Field(pattern=KEY_NAME, description="who holds the key; owner of its tasks")
    key: str = Field(min_length=1, description="the bearer secret")
    role: Literal["user", "admin"] = Field(
        default="user", description="'user': sees only its own tasks; 'admin': sees and cancels all"
    )

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"NamedKey(name={self.name!r}, role={self.role!r})"

    __str__ = __repr__


# A lane's queue places one key's tasks may hold on a server with several keys.
DEFAULT_CLIENT_QUEUE_SHARE = 0.5


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    ollama_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="a second listener serving the Ollama API at its root paths (and /v1, as Ollama "
        "does), on the same host, keys and engine (Ollama's own port is 11434); null: off "
        "(docs/OLLAMA_COMPATIBILITY.md)",
    )
    api_keys: tuple[str | NamedKey, ...] = Field(
        default=(),
        description="bearer keys; when set, every endpoint but /health needs one. A plain string "
        "is an admin key; {name, key, role} a named one (role 'user' by default: it sees only "
        "its own tasks)",
    )
    allowed_hosts: tuple[str, ...] = Field(
        default=(), description="Host names served besides loopback ones ('*': any; DNS rebinding guard)"
    )
    allowed_origins: tuple[str, ...] = Field(
        default=(),
        description="web origins allowed to call the API from a browser (CORS; with any request "
        "header, the OpenAI JS SDK's included)",
    )
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="request body limit")
    http_parser: Literal["auto", "httptools", "h11"] = Field(
        default="auto",
        description="how HTTP/1.1 requests are parsed: 'httptools' (C, llhttp), 'h11' (pure "
        "Python); 'auto': httptools when installed, else h11",
    )
    memory_limit_mb: int = Field(
        default=2048,
        ge=0,
        description="the API process's memory ceiling: over it, new work (POST) gets 503 "
        "server_memory_full until it is back under; 0: none (workers have their own, per lane)",
    )
    log_probes: bool = Field(
        default=False,
        description="write probes that found the server well (GET/HEAD /health, /ready, /metrics "
        "answered 2xx) in the access log; false: only probes that failed",
    )
    shutdown_grace_s: int = Field(
        default=5,
        ge=2,  # ANSWER_MARGIN_S, and a moment for the answers before it
        le=3600,
        description="at a stop (SIGTERM), how long answers being written (a streamed chat, speech) "
        "may go on before their tasks end with server_shutdown; keep systemd's TimeoutStopSec above it",
    )
    max_prompt_chars: int = Field(default=32_000, ge=1)
    max_tts_chars: int = Field(default=5_000, ge=1)
    max_new_tokens: int = Field(default=4096, ge=1)
    max_image_pixels: int = Field(default=1024 * 1024, ge=64 * 64, description="width x height")
    max_image_steps: int = Field(default=100, ge=1, le=1000)
    openai_voices: dict[str, str] = Field(
        default_factory=dict,
        description="OpenAI voice names (alloy, nova, ...) -> our voices (names without case); unlisted "
        "ones speak the input's language as its script says (Chinese, Russian, Arabic, Hindi, ...; "
        "Latin letters: en-US)",
    )

    @field_validator("memory_limit_mb")
    @classmethod
    def _room_to_serve(cls, mb: int) -> int:
        if 0 < mb < MIN_SERVER_MEMORY_MB:
            # The API process holds ~100 MiB idle: below that, /ready said true while every
            # POST got 503 server_memory_full.
            raise ValueError(
                f"{mb} MiB is less than the API process holds idle (about 100 MiB); at least "
                f"{MIN_SERVER_MEMORY_MB}, or 0 for no ceiling"
            )
        return mb

    @field_validator("host")
    @classmethod
    def _host_form(cls, v: str) -> str:
        """A name or an address, not a URL or one with a port: "http://127.0.0.1" was refused
        as a host beyond this machine without keys, "localhost:8080" as an unknown name."""
        if "://" in v or "/" in v:
            raise ValueError(
                f"{v!r} is a URL; server.host is a name or address ('127.0.0.1', '0.0.0.0', '::'), "
                "the port goes in server.port"
            )
        bare = v[1:-1] if v.startswith("[") and v.endswith("]") else v
        if ":" in bare:
            try:
                ipaddress.IPv6Address(bare)
            except ValueError:
                raise ValueError(
                    f"{v!r} has a port; server.host is a name or address, the port goes in server.port"
                ) from None
        return v

    @field_validator("api_keys")
    @classmethod
    def _distinct_keys(cls, keys: tuple[str | NamedKey, ...]) -> tuple[str | NamedKey, ...]:
        secrets: set[str] = set()
        names: set[str] = set()
        for i, entry in enumerate(keys):
            secret = entry if isinstance(entry, str) else entry.key
            if not secret:
                raise ValueError(f"entry {i} is empty; a key is a non-empty secret")
            if any(not "!" <= c <= "~" for c in secret):
                # A space (a key pasted with its margin) or a letter outside ASCII: no client
                # sends it in an Authorization header as written (curl gets 401, httpx refuses).
                raise ValueError(
                    f"entry {i} has a space or a character outside visible ASCII; a key is sent in "
                    "an HTTP header: letters, digits and ASCII punctuation only"
                )
            if secret == KEY_PLACEHOLDER:
                raise ValueError(
                    f"entry {i} is {KEY_PLACEHOLDER!r}, what `ris config` prints in place of a key; "
                    "put the real key back (`ris config --show-keys` prints them)"
                )
            if secret in secrets:
                # Quoted by position, never by value: the message may reach a log.
                raise ValueError(
                    f"entry {i} repeats an earlier key; each key must be different "
                    "(one secret cannot be two users)"
                )
            secrets.add(secret)
            if isinstance(entry, NamedKey):
                if entry.name in names:
                    raise ValueError(
                        f"entry {i}: the name {entry.name!r} is given twice; "
                        "each named key needs a name of its own (it owns that key's tasks)"
                    )
                names.add(entry.name)
        return keys

    @model_validator(mode="after")
    def _two_ports(self) -> ServerConfig:
        if self.ollama_port is not None and self.ollama_port != 0 and self.ollama_port == self.port:
            raise ValueError(
                f"server.ollama_port {self.ollama_port} is server.port too; give the Ollama listener "
                "a port of its own (Ollama's is 11434), or null to serve it on the main port only"
            )
        return self


class RetentionConfig(_Strict):
    """How long generated files (speech, images) and their task records are kept."""

    max_age_h: float = Field(
        default=168.0,
        gt=0,
        description="a finished task and its files are deleted this many hours after its end",
    )
    max_total_mb: int = Field(
        default=2048, ge=1, description="result files beyond this size in all: the oldest go first"
    )
    sweep_interval_s: float = Field(default=60.0, ge=1, description="how often the policy is applied")


class ClusterConfig(_Strict):
    """Where lane workers run: local processes (the default) or actors on a Ray cluster."""

    engine: str = Field(
        default="local",
        pattern=r"^(local|ray|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$",
        description="'local': each worker a process on this machine; 'ray': each worker a Ray actor "
        "placed on a node advertising the lane's resource (`ris_lane_<lane>`), see docs/CLUSTER.md; "
        "or the 'module:Class' of another worker kind's pool (ris.runtime.workers)",
    )
    address: str | None = Field(
        default=None,
        description="the Ray cluster to join ('HOST:PORT' of the head, or 'auto'); engine 'ray' only",
    )
    namespace: str = Field(default="ris", min_length=1, description="the Ray namespace of our actors")
    link: Literal["direct", "ray"] = Field(
        default="direct",
        description="how messages travel between the server and its Ray actors: 'direct', one TCP "
        "connection to each actor (its node's address, a port the node picks; authenticated with a "
        "key handed over through Ray), falling back to Ray for an actor the server cannot reach; "
        "'ray', through Ray's own calls (3-4 ms more per task, measured on 2 cores); a cluster with "
        "RAY_USE_TLS keeps to Ray's calls (the link is not encrypted); engine 'ray' only",
    )

    @model_validator(mode="after")
    def _address_with_ray(self) -> ClusterConfig:
        if self.engine == "ray" and not self.address:
            raise ValueError(
                "cluster.address is missing; engine 'ray' needs the head's 'HOST:PORT' (or 'auto')"
            )
        if self.engine == "local" and self.address:
            raise ValueError(
                f"cluster.address {self.address!r} is set but cluster.engine is 'local'; set engine 'ray'"
            )
        return self


class Config(_Strict):
    """The whole service: HTTP server, data folder and its lanes."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    plugins: tuple[str, ...] = Field(
        default=(),
        description="Python modules imported before the rest is read: they register backends "
        "or lane kinds (see docs/DEVELOPER_GUIDE.md, the recipes)",
    )
    data_dir: Path = Field(default=Path("ris-data"), description="tasks, audio and images")
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    scheduling: Ordering = Field(
        default=Ordering.LANES,
        description="'lanes': each lane its own priority queue (the product); 'fifo': one "
        "first-in-first-out queue for all lanes, the traditional baseline `ris bench` measures",
    )
    lanes: dict[str, LaneConfig] = Field(
        default_factory=dict, description="by lane name: llm, tts, image (and registered kinds)"
    )

    def lane(self, lane: str) -> LaneConfig:
        return self.lanes[lane]

    @property
    def enabled_lanes(self) -> list[str]:
        return [lane for lane, cfg in self.lanes.items() if cfg.enabled]
