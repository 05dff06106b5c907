"""How the image backend places a pipeline by its GPU plan, and puts an offloaded one back after
an image fails: the backend's own methods on a recording stand-in for a diffusers pipeline.
Moving parts to a GPU needs a GPU (tests/gpu/test_gpu_budget.py); the choice of calls does not."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="needs torch (make test installs it)")
pytest.importorskip("diffusers", reason="needs diffusers (make test installs it)")

from ris.backends import BackendError  # noqa: E402
from ris.backends.image_diffusers import DiffusersImage  # noqa: E402
from ris.lanes.image import DirectRun, ImageRequest  # noqa: E402
from ris.memory.fit import ImagePlan  # noqa: E402


class RecordingVae:
    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self._calls = calls

    def enable_tiling(self) -> None:
        self._calls.append(("vae_tiling",))

    def enable_slicing(self) -> None:
        self._calls.append(("vae_slicing",))


class RecordingPipe:
    """Records what the backend asks of a pipeline; generating raises `fail`."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.vae = RecordingVae(self.calls)
        self.fail = fail

    def to(self, device: str) -> RecordingPipe:
        self.calls.append(("to", device))
        return self

    def enable_model_cpu_offload(self, gpu_id: int) -> None:
        self.calls.append(("model_offload", gpu_id))

    def enable_sequential_cpu_offload(self, gpu_id: int) -> None:
        self.calls.append(("sequential_offload", gpu_id))

    def maybe_free_model_hooks(self) -> None:
        self.calls.append(("offload_again",))

    def __call__(self, **_kwargs: Any) -> Any:
        assert self.fail is not None
        raise self.fail


def placed(plan: ImagePlan | None) -> list[tuple[Any, ...]]:
    pipe = RecordingPipe()
    result = DiffusersImage._place(pipe, plan, "cuda:0")
    assert result is pipe
    return list(pipe.calls)


def test_each_plan_places_the_pipeline_as_it_says() -> None:
    assert placed(None) == [("to", "cuda:0")]  # no budget: whole on the device, as before
    assert placed(ImagePlan("gpu", 1, "fits")) == [("to", "cuda:0")]
    # Offloaded: the worker's only GPU is cuda:0, and the VAE decodes in tiles and slices.
    assert placed(ImagePlan("model_offload", 1, "")) == [
        ("model_offload", 0),
        ("vae_tiling",),
        ("vae_slicing",),
    ]
    assert placed(ImagePlan("sequential_offload", 1, ""))[0] == ("sequential_offload", 0)
    with pytest.raises(BackendError) as exc:
        placed(ImagePlan(None, 0, "the budget (51 MiB) is below the working margin (203 MiB)"))
    assert exc.value.code == "model_too_large" and "51 MiB" in exc.value.message


def backend_over(pipe: RecordingPipe, placement: str | None) -> DiffusersImage:
    """The backend's generate over `pipe`, without loading one."""
    backend = DiffusersImage.__new__(DiffusersImage)
    backend._pipe, backend._device, backend._run = pipe, "cpu", None
    backend.placement, backend.default_steps, backend.default_guidance = placement, 2, 0.0
    return backend


@pytest.mark.parametrize("placement, put_back", [("model_offload", True), ("gpu", False), (None, False)])
def test_an_offloaded_pipeline_is_put_back_when_an_image_fails(placement: str | None, put_back: bool) -> None:
    # diffusers re-offloads its parts only when a call ends well; after torch's out-of-memory
    # error (or a cancel) a part may be left on the card, and every later image would fail.
    pipe = RecordingPipe(fail=torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB"))
    with pytest.raises(torch.OutOfMemoryError):
        backend_over(pipe, placement).generate(ImageRequest(prompt="x", width=64, height=64), DirectRun())
    assert (("offload_again",) in pipe.calls) is put_back
