"""The image lane: text to image, batch work behind a durable asynchronous queue.

Clients submit, poll progress (denoising steps) and fetch the PNG later, so accepted tasks are
stored and survive a server restart. The worker yields to real-time lanes that share its GPU
or cores: the backend calls `run.checkpoint()` between denoising steps (and, under the `block`
policy, inside the UNet), which pauses while such a lane is busy (see ris.preemption) and is
also where a cancelled task stops.
"""

from __future__ import annotations

import html
import importlib.util
import logging
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from ris.config.backend_options import DiffusersOptions
from ris.config.schema import ModelSpec
from ris.lanes.base import (
    Backend,
    BackendEntry,
    Cancelled,
    Counted,
    LaneKind,
    LaneResult,
    LaneRunner,
    ResultFiles,
    Seen,
    WorkerEnv,
    result_from_json,
)
from ris.preemption.policy import Activity, PreemptedCancel

IMAGE_FOLDER = "images"  # under the server's data_dir

# Every image backend here reads a prompt through a CLIP text encoder: 77 tokens, two of them
# its start and end marks; diffusers cuts the rest off with a line in the worker's log.
CLIP_CONTENT_TOKENS = 75
# CLIP's tokenizer splits NFC-normalized, lowercased text into these pieces before its BPE, which makes one
# token or more of each: contractions, runs of letters, single digits, runs of anything else.
_CLIP_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+")


# What CLIP's Python tokenizer (transformers 4) cleans away or mends before it splits: control
# and format characters (a soft hyphen, a zero-width space), and with ftfy curly apostrophes
# and HTML entities. Done here too, each can only lower the count: never above either tokenizer.
_INVISIBLE = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]"
)


def clip_tokens_at_least(text: str) -> int:
    """A lower bound of the tokens CLIP's tokenizer makes of `text` (its start and end marks
    not counted): exact for common words of a real CLIP vocabulary, below the count where BPE
    splits a piece. Over CLIP_CONTENT_TOKENS, the text is certainly cut."""
    text = _INVISIBLE.sub("", html.unescape(text)).replace("\u2019", "'").replace("\u2018", "'")
    return len(_CLIP_PIECES.findall(unicodedata.normalize("NFC", text).lower()))


@dataclass(frozen=True)
class ImageRequest:
    prompt: str = field(repr=False)
    negative_prompt: str | None = field(default=None, repr=False)
    width: int = 512
    height: int = 512
    # None: the model's default (few for turbo models).
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class GeneratedImage:
    """What an image backend returns."""

    png: bytes = field(repr=False)
    width: int
    height: int
    steps: int
    seed: int


@dataclass(frozen=True)
class ImageOutcome:
    image: GeneratedImage
    # Seconds the worker spent paused for real-time lanes, and how often it paused.
    paused_s: float = 0.0
    pauses: int = 0


class ImageRun(ABC):
    """What an image backend reports to, and asks, while it works on one task."""

    @abstractmethod
    def step(self, done: int, total: int) -> None:
        """After each denoising step."""

    @abstractmethod
    def checkpoint(self, where: Literal["step", "block"] = "step") -> None:
        """A preemption point: returns when the work may go on, which may be after a pause
        while a real-time lane sharing the hardware is busy; raises Cancelled once the task
        is cancelled. Call it between steps, and inside a step for the `block` policy."""


class DirectRun(ImageRun):
    """An ImageRun for calling a backend directly: records the steps, never pauses."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []

    def step(self, done: int, total: int) -> None:
        self.steps.append((done, total))

    def checkpoint(self, where: Literal["step", "block"] = "step") -> None:
        return None


class ImageBackend(Backend):
    """Text to image, with preemption points (`run.checkpoint`) and progress (`run.step`)."""

    @abstractmethod
    def generate(self, req: ImageRequest, run: ImageRun) -> GeneratedImage: ...

    def set_threads(self, threads: int) -> None:  # noqa: B027 - optional hook
        """The thread count for the steps from now on (cores lent to the lane, or given back);
        called between steps. A backend that cannot change it keeps its own."""


# The work a task of this lane counts (its result's counted(); the lane declares it: counters).
IMAGE_STEPS = Counted("image_steps", "denoising steps run by finished tasks", 0)


@dataclass(frozen=True)
class ImageResult(LaneResult):
    # The PNG on the server's disk (its route serves it by task id).
    path: str
    width: int
    height: int
    steps: int
    seed: int
    paused_s: float = 0.0
    pauses: int = 0

    @property
    def steps_done(self) -> int | None:
        return self.steps

    def counted(self) -> tuple[Counted, ...]:
        return (replace(IMAGE_STEPS, value=self.steps),)

    def files(self) -> tuple[str, ...]:
        return (self.path,)

    def public_json(self) -> dict[str, Any]:
        data = self.to_json()
        del data["path"]
        return data


class _WorkerRun(ImageRun):
    def __init__(
        self, env: WorkerEnv, backend: ImageBackend, task_id: str, cancelled: Callable[[], bool]
    ) -> None:
        self._env = env
        self._backend = backend
        self._task_id = task_id
        self._cancelled = cancelled

    def step(self, done: int, total: int) -> None:
        self._env.progress(self._task_id, done, total)

    def fit_cores(self, working: bool) -> None:
        """Work-conserving isolation (borrow_idle_cores): before each step, widen onto the idle
        real-time lanes' cores or give back those whose owner got work. A lender waits at most
        one step (~5 ms where the worker's lending watcher runs: passive waits), and meanwhile
        runs ahead of this nice-19 worker on its own core."""
        if self._env.cores is None:
            return
        threads = self._env.cores.fit(working)
        if threads is not None:
            self._backend.set_threads(threads)

    def checkpoint(self, where: Literal["step", "block"] = "step") -> None:
        yielder = self._env.yielder
        if yielder is None:
            if self._cancelled():
                raise Cancelled()
        else:
            try:
                yielder.checkpoint(where, self._cancelled)
            except PreemptedCancel:
                raise Cancelled() from None
        if where == "step":
            self.fit_cores(True)  # after any pause: the cores idle now, not before it


class ImageRunner(LaneRunner[ImageBackend, ImageRequest, ImageOutcome]):
    def run(
        self, backend: ImageBackend, task_id: str, request: ImageRequest, cancelled: Callable[[], bool]
    ) -> ImageOutcome:
        # Busy on the activity board while a picture is made (/api/stats, the console and
        # ris_lane_activity read it; it read idle throughout); the worker marks it idle after.
        # No lane reads a batch lane's mark for a decision: yielders and borrowers read only
        # real-time lanes' (ris.config.sharing).
        self.env.publish(Activity.BUSY)
        yielder = self.env.yielder
        before = (yielder.stats.paused_s, yielder.stats.pauses) if yielder else (0.0, 0)
        if yielder is not None:
            yielder.begin()
        run = _WorkerRun(self.env, backend, task_id, cancelled)
        try:
            image = backend.generate(request, run)
        finally:
            try:
                run.fit_cores(False)  # idle: only its own cores, so a lender's next task finds them free
            except Exception:  # noqa: BLE001 - the task's own error, if any, is what the client hears
                logging.getLogger("ris.worker").exception("giving lent cores back failed")
        after = (yielder.stats.paused_s, yielder.stats.pauses) if yielder else (0.0, 0)
        return ImageOutcome(image, paused_s=after[0] - before[0], pauses=after[1] - before[1])


class ImageLane(LaneKind[ImageRequest, ImageOutcome, ImageResult]):
    name = "image"
    generic_api = False
    request_type, outcome_type, backend_type, runner_type = (
        ImageRequest,
        ImageOutcome,
        ImageBackend,
        ImageRunner,
    )
    durable = True
    preemptible = True
    borrows_cores = True  # its runner sets the backend's threads between denoising steps
    counters = (IMAGE_STEPS,)
    result_folder = IMAGE_FOLDER
    config_defaults: ClassVar[Mapping[str, Any]] = {
        "priority_class": "batch",
        "nice": 19,
        "max_queue": 256,
        "request_timeout_s": 3600.0,
        "busy_timeout_s": 600.0,
    }

    builtin_backends = {
        # Importing torch and diffusers alone: 311 MiB; a worker with the tiny pipeline: ~450.
        "diffusers": BackendEntry(
            "ris.backends.image_diffusers:DiffusersImage", options=DiffusersOptions, process_bytes=384 * 2**20
        )
    }
    embedded_models = {
        "tiny-sd": ModelSpec(
            backend="diffusers",
            source="builtin:tiny-sd",
            options={"default_steps": 8, "default_guidance": 5.0},
            description="UNTRAINED tiny Stable Diffusion pipeline built offline (tests, "
            "plumbing); its pictures are noise. Configure SD 1.5 / SD-Turbo / SDXL for real ones",
        )
    }

    def enabled_by_default(self) -> bool:
        # The image extra (torch, diffusers) is optional: without it the lane stays off.
        return importlib.util.find_spec("diffusers") is not None

    def build_result(self, seen: Seen, outcome: ImageOutcome, files: ResultFiles) -> ImageResult:
        image = outcome.image
        path = files.write(IMAGE_FOLDER, f"{seen.task_id}.png", image.png)
        return ImageResult(
            seen.model, seen.timings, str(path), image.width, image.height, image.steps, image.seed,
            outcome.paused_s, outcome.pauses,
        )  # fmt: skip

    def result_from_json(self, data: Mapping[str, Any]) -> ImageResult:
        return result_from_json(ImageResult, data)

    def work(self, request: ImageRequest, spec: ModelSpec | None) -> float:
        """Denoising steps times pixels, in 512 x 512 steps: a step's cost grows with the
        latent's size, and the run is its steps."""
        return self.planned_progress(request, spec) * request.width * request.height / (512 * 512)

    def planned_progress(self, request: ImageRequest, spec: ModelSpec | None) -> int:
        """Its denoising steps: the request's, else its model's default."""
        return request.steps or (default_steps(spec.options) if spec is not None else 25)


def default_steps(options: Mapping[str, Any]) -> int:
    """A model's steps when a request names none: its `default_steps`, else few for a turbo
    model (it is made for them) and 25 for others (the diffusers backend's)."""
    return int(options.get("default_steps", 4 if options.get("turbo") else 25))


LANE = ImageLane()
