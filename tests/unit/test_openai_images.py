"""/v1/images/generations through the real app over fake workers: OpenAI's defaults by model,
and n images that fail as one request when one of them fails."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import httpx

from ris import messages as m
from ris.api.app import create_app
from ris.lanes import Lane
from ris.lanes.image import GeneratedImage, ImageOutcome
from ris.runtime.engine import Engine

from .fakes import IMAGE_ON, FakeWorker, run, settle, started_engine

PNG = b"\x89PNG\r\n\x1a\nfake"


async def post(eng: Engine, body: dict[str, Any]) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(eng.config, eng))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.post("/v1/images/generations", json=body)


def done(worker: FakeWorker, i: int) -> None:
    worker.deliver(m.TaskDone(worker.runs[i].task_id, ImageOutcome(GeneratedImage(PNG, 64, 64, 2, 7))))


@run
async def test_gpt_image_1_answers_in_base64_and_takes_size_auto(tmp_path: Path) -> None:
    """OpenAI's gpt-image-1 has no url: its clients read data[0].b64_json, and send size auto."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        workers[Lane.IMAGE].ready()
        request = asyncio.create_task(post(eng, {"model": "gpt-image-1", "prompt": "a cat", "size": "auto"}))
        await settle()
        done(workers[Lane.IMAGE], 0)
        r = await asyncio.wait_for(request, 5)
        assert r.status_code == 200, r.text
        assert base64.b64decode(r.json()["data"][0]["b64_json"]) == PNG
        request = asyncio.create_task(post(eng, {"model": "dall-e-2", "prompt": "a cat", "size": "64x64"}))
        await settle()
        done(workers[Lane.IMAGE], 1)
        r = await asyncio.wait_for(request, 5)
        assert r.status_code == 200 and "url" in r.json()["data"][0], r.text  # dall-e's default


@run
async def test_one_of_n_images_failing_answers_at_once_and_stops_the_others(tmp_path: Path) -> None:
    """The request waited for every sibling to render, then answered the first one's error,
    their pictures left unreachable."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        img = workers[Lane.IMAGE]
        img.ready(slots=3)
        request = asyncio.create_task(post(eng, {"prompt": "a cat", "n": 3, "size": "64x64"}))
        await settle()
        assert len(img.runs) == 3
        img.deliver(m.TaskError(img.runs[0].task_id, "gpu_out_of_memory", "out of memory"))
        r = await asyncio.wait_for(request, 5)
        assert r.status_code == 507 and r.json()["error"]["code"] == "gpu_out_of_memory", r.text
        assert sorted(img.cancels) == sorted(run.task_id for run in img.runs[1:])


@run
async def test_more_images_than_the_lane_ever_admits_is_a_400_not_a_429(tmp_path: Path) -> None:
    """OpenAI's SDK waited out Retry-After and retried n=3 on a lane of 1 place and 1 slot."""
    async with started_engine(tmp_path, image={**IMAGE_ON, "max_queue": 1}) as (eng, workers, _):
        workers[Lane.IMAGE].ready()
        r = await post(eng, {"prompt": "a cat", "n": 3, "size": "64x64"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "batch_too_large" and "at most 2" in r.json()["error"]["message"]
        assert r.headers["x-should-retry"] == "false" and "retry-after" not in r.headers
