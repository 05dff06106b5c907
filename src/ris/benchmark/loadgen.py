"""The load generator: a separate process that drives one phase and writes its raw samples.

    python -m ris.benchmark.loadgen --url URL --lanes llm,tts,image --workload JSON --out FILE

Every sample carries times relative to the phase start (perf_counter of this process), what
the client saw, and the server's own timings where the API reports them. While it runs, one
JSON line per half second on stdout tells the orchestrator how far it is (its progress bar).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ris.benchmark.workload import LONG_SENTENCES, SHORT_SENTENCES, Workload

PROMPT_TOPICS = ("a lighthouse keeper", "a city garden", "a long train journey", "a robot chef")


@dataclass
class Phase:
    w: Workload
    t0: float = field(default_factory=time.perf_counter)
    samples: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {"llm": [], "tts": [], "image": []}
    )
    pending: set[asyncio.Task[None]] = field(default_factory=set)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def open(self) -> bool:
        return self.now() < self.w.duration_s

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)


def _error(e: BaseException) -> str:
    if isinstance(e, httpx.HTTPStatusError):
        return f"http_{e.response.status_code}"
    return type(e).__name__


# ----- LLM -------------------------------------------------------------------------------------


def _prompt(w: Workload, i: int) -> str:
    words = f"Write a long story about {PROMPT_TOPICS[i % len(PROMPT_TOPICS)]}."
    filler = " ".join(["please"] * max(0, w.llm_prompt_words - len(words.split())))
    return f"{filler} {words}".strip()


async def llm_client(ph: Phase, client: httpx.AsyncClient, index: int) -> None:
    i = index
    while ph.open:
        stream = ph.w.llm_plain_every <= 0 or (i + 1) % ph.w.llm_plain_every != 0
        body = {
            "messages": [{"role": "user", "content": _prompt(ph.w, i)}],
            "max_tokens": ph.w.llm_max_tokens,
            "ignore_eos": True,
            "temperature": 0.7,
            "stream": stream,
        }
        sample: dict[str, Any] = {"t0": ph.now(), "stream": stream, "ok": False}
        ph.samples["llm"].append(sample)
        try:
            if stream:
                await _llm_stream(ph, client, body, sample)
            else:
                r = await client.post("/api/llm/generate", json=body)
                r.raise_for_status()
                data = r.json()
                sample["tokens"] = data["usage"]["completion_tokens"]
                sample["ttft_s"] = data["timings"]["first_output_ms"] / 1000
                sample["max_gap_s"] = sample["ttft_s"]  # the only gap a plain request shows
                sample["ok"] = True
        except (httpx.HTTPError, KeyError, ValueError) as e:
            sample["error"] = _error(e)
        sample["t_end"] = ph.now()
        sample["latency_s"] = sample["t_end"] - sample["t0"]
        i += 1
        await asyncio.sleep(ph.w.llm_think_s)


async def _llm_stream(
    ph: Phase, client: httpx.AsyncClient, body: dict[str, Any], sample: dict[str, Any]
) -> None:
    times: list[float] = []
    event = ""
    async with client.stream("POST", "/api/llm/generate", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "token":
                times.append(ph.now())
            elif line.startswith("data: ") and event == "error":
                sample["error"] = "stream_" + json.loads(line[6:]).get("code", "error")
                return
    if not times:
        sample["error"] = "no_tokens"
        return
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    sample["ttft_s"] = times[0] - sample["t0"]
    sample["itl_s"] = gaps
    sample["tokens"] = len(times)
    sample["decode_tok_s"] = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None
    sample["max_gap_s"] = max([sample["ttft_s"], *gaps])
    sample["ok"] = True


# ----- TTS -------------------------------------------------------------------------------------


async def tts_driver(ph: Phase, client: httpx.AsyncClient) -> None:
    k = bursts = 0
    next_at = 0.0
    next_burst = ph.w.tts_burst_every_s / 2
    while ph.open:
        if ph.w.tts_burst_size > 0 and ph.now() >= next_burst:
            bursts += 1
            for j in range(ph.w.tts_burst_size):
                ph.spawn(tts_request(ph, client, SHORT_SENTENCES[j % len(SHORT_SENTENCES)], burst=bursts))
            next_burst += ph.w.tts_burst_every_s
        text = (SHORT_SENTENCES if k % 2 == 0 else LONG_SENTENCES)[k // 2 % 2]
        ph.spawn(tts_request(ph, client, text, burst=0))
        k += 1
        next_at += ph.w.tts_interval_s
        await asyncio.sleep(max(0.0, next_at - ph.now()))


async def tts_request(ph: Phase, client: httpx.AsyncClient, text: str, burst: int) -> None:
    """One synthesis; `burst` numbers the burst it belongs to (0: none)."""
    sample: dict[str, Any] = {"t0": ph.now(), "burst": burst, "chars": len(text), "ok": False}
    ph.samples["tts"].append(sample)
    try:
        r = await client.post("/api/tts/synthesize", json={"text": text})
        r.raise_for_status()
        data = r.json()
        t = data["timings"]
        sample["audio_s"] = data["duration_s"]
        sample["run_s"] = (t["total_ms"] - t["queue_ms"]) / 1000
        sample["rtf"] = sample["run_s"] / data["duration_s"]
        # Audio reaches the server in chunks; until the first one the caller hears nothing.
        sample["max_gap_s"] = t["first_output_ms"] / 1000
        sample["ok"] = True
    except (httpx.HTTPError, KeyError, ValueError, ZeroDivisionError) as e:
        sample["error"] = _error(e)
    sample["t_end"] = ph.now()
    sample["latency_s"] = sample["t_end"] - sample["t0"]


# ----- images ----------------------------------------------------------------------------------


async def image_driver(ph: Phase, client: httpx.AsyncClient) -> None:
    active: list[dict[str, Any]] = []
    seed = 0
    while ph.open:
        while len(active) < ph.w.image_outstanding:
            seed += 1
            sample = await _submit_image(ph, client, seed)
            if sample is None:
                await asyncio.sleep(ph.w.poll_s)
                break
            active.append(sample)
        await asyncio.sleep(ph.w.poll_s)
        for sample in list(active):
            if await _poll_image(ph, client, sample):
                active.remove(sample)
    # The window is over: what is still queued or running is not waited for, but its end is:
    # a cancelled image stops at its next sub-step, and the phase that follows (ris bench
    # --rounds) must not meet the rest of it.
    for sample in active:
        sample["unfinished"] = True
        try:
            await client.post(f"/api/tasks/{sample['task_id']}/cancel")
        except httpx.HTTPError:
            pass
    deadline = ph.now() + ph.w.drain_s
    while active and ph.now() < deadline:
        await asyncio.sleep(ph.w.poll_s)
        active = [s for s in active if not await _ended(client, s["task_id"])]


async def _ended(client: httpx.AsyncClient, task_id: str) -> bool:
    try:
        r = await client.get(f"/api/tasks/{task_id}")
        r.raise_for_status()
        return r.json()["state"] in ("succeeded", "failed", "cancelled")
    except (httpx.HTTPError, KeyError, ValueError):
        return True  # nothing more to learn about it


async def _submit_image(ph: Phase, client: httpx.AsyncClient, seed: int) -> dict[str, Any] | None:
    w = ph.w
    sample: dict[str, Any] = {"t0": ph.now(), "ok": False, "steps": w.image_steps, "max_gap_s": 0.0}
    ph.samples["image"].append(sample)
    body = {"prompt": "a lighthouse at dawn", "width": w.image_size, "height": w.image_size}
    try:
        r = await client.post("/api/image/generate", json={**body, "steps": w.image_steps, "seed": seed})
        r.raise_for_status()
        sample["task_id"] = r.json()["task_id"]
    except (httpx.HTTPError, KeyError, ValueError) as e:
        sample["error"] = _error(e)
        sample["t_end"] = ph.now()
        return None
    sample["steps_in_window"] = 0
    return sample


async def _poll_image(ph: Phase, client: httpx.AsyncClient, sample: dict[str, Any]) -> bool:
    """One look at a submitted image; True once it has finished."""
    try:
        r = await client.get(f"/api/tasks/{sample['task_id']}")
        r.raise_for_status()
        v = r.json()
    except (httpx.HTTPError, ValueError) as e:
        sample["error"] = _error(e)
        sample["t_end"] = ph.now()
        return True
    now = ph.now()
    if v["started_at"] is not None and "queue_wait_s" not in sample:
        sample["queue_wait_s"] = v["started_at"] - v["submitted_at"]
        sample["last_change"] = now
        sample["done_seen"] = 0
    if v["state"] == "running" or v["state"] == "succeeded":
        done = v["progress_done"] if v["state"] == "running" else sample["steps"]
        if done != sample.get("done_seen"):
            sample["done_seen"], sample["last_change"] = done, now
        sample["max_gap_s"] = max(sample["max_gap_s"], now - sample.get("last_change", now))
        if now <= ph.w.duration_s:
            sample["steps_in_window"] = done
    if v["state"] in ("succeeded", "failed", "cancelled"):
        sample["t_end"] = now
        sample["ok"] = v["state"] == "succeeded"
        if v["finished_at"] is not None and v["started_at"] is not None:
            sample["run_s"] = v["finished_at"] - v["started_at"]
        if not sample["ok"]:
            sample["error"] = (v.get("error") or {}).get("code", v["state"])
        return True
    return False


# ----- the phase -------------------------------------------------------------------------------


async def report_progress(ph: Phase) -> None:
    while True:
        done = {lane: sum(1 for s in xs if s.get("ok")) for lane, xs in ph.samples.items()}
        errors = sum(1 for xs in ph.samples.values() for s in xs if s.get("error"))
        print(json.dumps({"t": round(ph.now(), 2), "done": done, "errors": errors}), flush=True)
        await asyncio.sleep(0.5)


async def run_phase(url: str, lanes: frozenset[str], w: Workload) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    timeout = httpx.Timeout(w.duration_s + w.drain_s + 60)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        ph = Phase(w)
        reporter = asyncio.create_task(report_progress(ph))
        drivers = []
        if "llm" in lanes:
            drivers += [asyncio.create_task(llm_client(ph, client, i)) for i in range(w.llm_clients)]
        if "tts" in lanes:
            drivers.append(asyncio.create_task(tts_driver(ph, client)))
        if "image" in lanes:
            drivers.append(asyncio.create_task(image_driver(ph, client)))
        done, late = await asyncio.wait(drivers, timeout=w.duration_s + w.drain_s)
        if ph.pending:
            _, stuck = await asyncio.wait(
                set(ph.pending), timeout=max(1.0, w.duration_s + w.drain_s - ph.now())
            )
            late |= stuck
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        for xs in ph.samples.values():
            for s in xs:
                if "t_end" not in s and not s.get("unfinished"):
                    s["error"] = "unfinished_after_drain"
        reporter.cancel()
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return {"lanes": sorted(lanes), "workload": w.to_json(), "samples": ph.samples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="drive one benchmark phase against a running service")
    p.add_argument("--url", required=True)
    p.add_argument("--lanes", required=True, help="comma-separated: llm,tts,image")
    p.add_argument("--workload", required=True, help="the Workload as JSON")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    lanes = frozenset(x for x in args.lanes.split(",") if x)
    result = asyncio.run(run_phase(args.url, lanes, Workload.from_json(json.loads(args.workload))))
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
