"""Image progress counts the steps asked, whatever the scheduler runs: SD 1.5's PNDM runs one
timestep more than its steps (26 for 25), which showed as step 26 of 25 and 100% early."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("diffusers", reason="the image backend's library")


def test_progress_reaches_the_asked_steps_only_at_the_last_timestep(tmp_path: Path) -> None:
    from diffusers import PNDMScheduler

    from ris.backends import BackendContext
    from ris.backends.image_diffusers import DiffusersImage
    from ris.config import ModelSpec
    from ris.lanes.image import DirectRun, ImageRequest

    img = DiffusersImage(
        ModelSpec(backend="diffusers", source="builtin:tiny-sd"), BackendContext("cpu", 1, tmp_path)
    )
    pipe = img._pipe  # noqa: SLF001 - the scheduler SD 1.5 ships with, on the tiny pipeline
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    run = DirectRun()
    img.generate(ImageRequest(prompt="x", width=64, height=64, steps=3, seed=1), run)
    done = [d for d, _ in run.steps]
    assert len(done) == 4  # PNDM: one timestep more than asked
    assert {t for _, t in run.steps} == {3} and done == sorted(done) and done[-1] == 3 and done[-2] < 3
