"""A request that names no steps runs its model's default, held to server.max_image_steps as
steps asked for are: a default of 500 ran past a limit that refused `steps: 101`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from ris import messages as m
from ris.api.app import create_app
from ris.lanes import Lane
from ris.lanes.image import GeneratedImage, ImageOutcome, ImageRequest

from .fakes import IMAGE_ON, run, settle, started_engine

MANY = {**IMAGE_ON, "models": {"i": {"backend": "diffusers", "options": {"default_steps": 500}}}}


@run
async def test_a_models_default_steps_are_held_to_the_servers_limit_and_said(tmp_path: Path) -> None:
    async with started_engine(tmp_path, image=MANY) as (eng, workers, _):
        workers[Lane.IMAGE].ready()
        limit = eng.config.server.max_image_steps
        transport = httpx.ASGITransport(app=create_app(eng.config, eng))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            r = await client.post("/api/image/generate", json={"prompt": "a boat", "width": 64, "height": 64})
            assert r.status_code == 202, r.text
            assert r.json()["warnings"] == [
                f"steps: 'i' runs 500 by default, over server.max_image_steps; it ran {limit}"
            ]
            r = await client.post(
                "/api/image/generate", json={"prompt": "a boat", "width": 64, "height": 64, "steps": 3}
            )
            assert r.status_code == 202 and r.json()["warnings"] == []
            over = await client.post("/api/image/generate", json={"prompt": "a boat", "steps": limit + 1})
            assert over.status_code == 422 and over.json()["error"]["code"] == "too_many_steps"
        first = workers[Lane.IMAGE].runs[0].request
        assert isinstance(first, ImageRequest) and first.steps == limit  # the worker runs the steps said


@run
async def test_openais_images_route_holds_the_default_too_and_says_so_in_a_header(tmp_path: Path) -> None:
    async with started_engine(tmp_path, image=MANY) as (eng, workers, _):
        img = workers[Lane.IMAGE]
        img.ready()
        limit = eng.config.server.max_image_steps
        transport = httpx.ASGITransport(app=create_app(eng.config, eng))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            body = {"prompt": "a boat", "size": "64x64", "response_format": "b64_json"}
            answer = asyncio.ensure_future(client.post("/v1/images/generations", json=body))
            for _ in range(50):
                await settle()
                if img.runs:
                    break
            (run_,) = img.runs
            assert isinstance(run_.request, ImageRequest) and run_.request.steps == limit
            img.deliver(
                m.TaskDone(
                    run_.task_id, ImageOutcome(GeneratedImage(b"\x89PNG\r\n\x1a\nfake", 64, 64, limit, 1))
                )
            )
            r = await asyncio.wait_for(answer, 5)
        assert r.status_code == 200, r.text
        assert json.loads(r.headers["x-warnings"]) == [
            f"steps: 'i' runs 500 by default, over server.max_image_steps; it ran {limit}"
        ]
