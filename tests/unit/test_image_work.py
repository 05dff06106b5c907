"""An image's ETA at its size: its work is its steps times its pixels (LaneKind.work)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ris.config import ModelSpec
from ris.lanes import Lane
from ris.lanes.image import LANE as IMAGE
from ris.lanes.image import ImageRequest

from .fakes import IMAGE_ON, run, settle, started_engine


def test_an_images_work_is_its_steps_times_its_pixels() -> None:
    sd = ModelSpec(backend="diffusers", source="/sd")
    assert IMAGE.work(ImageRequest("a", width=512, height=512, steps=40), sd) == 40
    assert IMAGE.work(ImageRequest("a", width=64, height=64, steps=2), sd) == pytest.approx(2 / 64)
    assert IMAGE.work(ImageRequest("a", width=512, height=512), sd) == 25  # the backend's default
    turbo = ModelSpec(backend="diffusers", source="/t", options={"turbo": True})
    assert IMAGE.work(ImageRequest("a", width=512, height=512), turbo) == 4
    eight = ModelSpec(backend="diffusers", source="/e", options={"default_steps": 8})
    assert IMAGE.work(ImageRequest("a", width=256, height=256), eight) == 2
    assert IMAGE.work(ImageRequest("a", width=512, height=512), None) == 25  # model gone


@run
async def test_a_submitted_image_carries_its_work(tmp_path: Path) -> None:
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        workers[Lane.IMAGE].ready()
        await settle()
        small = eng.submit(IMAGE, "i", ImageRequest("a", width=64, height=64, steps=2))
        large = eng.submit(IMAGE, "i", ImageRequest("a", width=512, height=512, steps=40))
        works = [eng._scheduler.get(h.task_id) for h in (small, large)]
        assert [t.spec.work if t else None for t in works] == [pytest.approx(2 / 64), 40]
        # Its steps are known before it runs: "step 0 of 40" while it waits, not "0 of ?".
        waiting = eng.lookup(large.task_id)
        assert waiting is not None and (waiting.state, waiting.progress_total) == ("queued", 40)
        default = eng.submit(IMAGE, "i", ImageRequest("a", width=64, height=64))
        assert (view := eng.lookup(default.task_id)) is not None and view.progress_total == 25
