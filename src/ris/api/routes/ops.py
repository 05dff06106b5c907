"""Operations: health, readiness, statistics, metrics and the configured models."""

from __future__ import annotations

import asyncio
import gzip
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ris.api.deps import engine_of, viewer_of
from ris.api.errors import APIError
from ris.api.memory import own_rss
from ris.api.prometheus import CONTENT_TYPE, ServerFacts, prometheus_text
from ris.api.stats import gpus_json, lane_stats
from ris.config.fit_checks import lane_footprints, preloaded
from ris.gpus import gpu_devices
from ris.messages import ModelInfo
from ris.runtime.disk_room import disk_free

router = APIRouter(tags=["ops"])


@router.get("/health", summary="The server process is alive")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready", summary="Every enabled lane's worker is up, or every lane named by `lane` (503 otherwise)"
)
async def ready(
    request: Request,
    lane: Annotated[
        list[str] | None,
        Query(
            description="only these lanes decide (repeat it: ?lane=llm&lane=tts), so a load "
            "balancer for chat and speech keeps the server in rotation while the image worker restarts",
        ),
    ] = None,
) -> JSONResponse:
    engine = engine_of(request)
    lanes = engine.ready()
    if lane:
        unknown = [name for name in lane if name not in lanes]
        if unknown:
            raise APIError(
                422,
                "unknown_lane",
                f"lane {unknown[0]!r} is not an enabled lane; enabled: {', '.join(lanes) or 'none'}",
                param="lane",
            )
        lanes = {name: up for name, up in lanes.items() if name in lane}
    ok = bool(lanes) and all(lanes.values())
    body: dict[str, object] = {"ready": ok, "lanes": lanes}
    pending = {name: why for name, why in engine.pending().items() if name in lanes}
    if pending:  # a worker a cluster has not placed: not "starting", and said why
        body["pending"] = pending
    return JSONResponse(body, status_code=200 if ok else 503)


# HEAD as well, for health checkers that send it (HTTP says a server answers it wherever it
# answers GET); the server drops the body.
router.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)
router.add_api_route("/ready", ready, methods=["HEAD"], include_in_schema=False)


@router.get("/api/stats", summary="Per-lane queues, outcomes, latency, resources")
async def stats(request: Request) -> dict[str, Any]:
    # NVML is a blocking C library: asked off the event loop that streams the real-time lanes.
    gpus = await asyncio.to_thread(gpu_devices)
    engine = engine_of(request)
    return {"lanes": lane_stats(engine.snapshot(), engine.config), "gpus": gpus_json(gpus)}


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (admin keys)")
async def metrics(request: Request) -> PlainTextResponse:
    # The operator's scrape: workers' processes, memory and GPUs, per model. A user key reads
    # its lanes' state at /api/stats; no figure in either names a task or holds its text.
    if not viewer_of(request).admin:
        raise APIError(
            403,
            "admin_only",
            "/metrics is for admin keys (server.api_keys: a plain key, or role 'admin'); "
            "a user key reads the lanes' state at /api/stats",
        )
    engine = engine_of(request)
    snapshot = engine.snapshot()
    cfg = engine.config
    models = {lane: tuple(cfg.lane(lane).models) for lane in cfg.lanes if cfg.lane(lane).enabled}
    limit = cfg.server.memory_limit_mb * 2**20 or None
    held = engine.held_writes()
    responses = dict(request.app.state.responses)  # a copy: the loop counts on meanwhile

    # Prometheus asks for gzip (Accept-Encoding: gzip): ~30 KB of text is ~4 KB on the wire.
    gzipped = accepts_gzip(request.headers.get("accept-encoding", ""))

    def text() -> bytes:
        # NVML, the data folder's statvfs and the text's encoding are blocking work: done off
        # the event loop, on the frozen snapshot taken here.
        facts = ServerFacts(own_rss(), limit, disk_free(cfg.data_dir), held, models, responses)
        body = prometheus_text(snapshot, gpu_devices(), facts)
        return gzip.compress(body, compresslevel=5) if gzipped else body

    headers = {"Vary": "Accept-Encoding", **({"Content-Encoding": "gzip"} if gzipped else {})}
    return PlainTextResponse(await asyncio.to_thread(text), media_type=CONTENT_TYPE, headers=headers)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding asks for gzip: named, or `*`, with a weight above 0
    (`gzip;q=0` refuses it, whatever `*` says)."""
    weights: dict[str, float] = {}
    for part in accept_encoding.lower().split(","):
        coding, _, params = part.partition(";")
        q = params.strip()
        try:
            weights[coding.strip()] = float(q[2:]) if q.startswith("q=") else 1.0
        except ValueError:
            weights[coding.strip()] = 0.0
    return weights.get("gzip", weights.get("*", 0.0)) > 0


# An uptime checker pointed at the scrape URL sends HEAD; it got 405 as if the path were wrong.
router.add_api_route("/metrics", metrics, methods=["HEAD"], include_in_schema=False)


def _counted(info: ModelInfo | None, gpu_lane: bool) -> dict[str, int | None]:
    """A loaded model as its worker counts it against the lane's budgets: on a GPU lane its part
    on the card and its part kept in RAM beside it; on a CPU lane all of it in RAM (None: not
    loaded, or no file says)."""
    if info is None:
        return {"on_gpu_bytes": None, "in_ram_bytes": None}
    if gpu_lane:
        return {"on_gpu_bytes": info.footprint_bytes, "in_ram_bytes": info.ram_bytes}
    return {"on_gpu_bytes": None, "in_ram_bytes": info.footprint_bytes}


@router.get("/api/models", summary="Configured models per lane")
async def models(request: Request) -> dict[str, Any]:
    engine = engine_of(request)
    # Footprints come from the model files' headers: file I/O, off the event loop (cached
    # per file version after the first read).
    footprints = await asyncio.to_thread(
        lambda: {lane: lane_footprints(cfg)[0] for lane, cfg in engine.config.lanes.items()}
    )
    last_load = engine.model_log().last_load_s
    out: dict[str, Any] = {}
    for lane, cfg in engine.config.lanes.items():
        loaded = engine.model_infos(lane)
        out[lane] = [
            {
                "name": name,
                "backend": spec.backend,
                "default": name == cfg.default_model,
                "description": spec.description,
                "languages": None if spec.languages is None else list(spec.languages),
                "loaded": name in loaded,
                # Bytes it needs while loaded (weights, KV cache for the lane's parallel x n_ctx,
                # working margin), from its files; None where no file says (espeak, builtin:).
                "footprint": fp.to_json() if (fp := footprints[lane].get(name)) else None,
                # "gpu", "partial" (some layers on the GPU), "model_offload" or
                # "sequential_offload" (a pipeline larger than its GPU budget), "cpu", or
                # "not_loaded"; why, in numbers, where the backend chose within a budget.
                "placement": loaded[name].placement if name in loaded else "not_loaded",
                "placement_reason": loaded[name].details.placement_reason if name in loaded else None,
                **_counted(loaded.get(name), cfg.gpu_index is not None),
                "last_load_s": last_load.get((lane, name)),
                "preload": name in preloaded(cfg, engine.kinds[lane].load_all_models),
                "voices": list(loaded[name].details.voices) if name in loaded else None,
                # Requests this model serves at once (LaneKind.serves_at_once).
                "parallel": engine.kinds[lane].serves_at_once(spec.backend, cfg.parallel),
                **engine.kinds[lane].model_features(
                    spec.backend, loaded[name].details if name in loaded else None
                ),
            }
            for name, spec in cfg.models.items()
        ]
    return {"lanes": out}
