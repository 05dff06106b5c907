"""ris.Client and ris.AsyncClient: the Python SDK over the REST API (httpx)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from ris.sdk._common import (
    FINAL_STATES,
    RETRY_STATUSES,
    Generation,
    RISError,
    Speech,
    SSEDecoder,
    backoff_delay,
    check_final,
    error_from,
    generation_from,
    llm_body,
)

DEFAULT_URL = "http://127.0.0.1:8080"


class Client:
    """Synchronous client. Retries 429/503 up to `max_retries` times, honouring Retry-After."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers)
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            resp = self._http.request(method, url, **kw)
            if resp.status_code < 400:
                return resp
            err = error_from(resp)
            if resp.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                raise err
            time.sleep(backoff_delay(attempt, err.retry_after, self.max_retry_wait))
        raise AssertionError("unreachable")

    # ----- LLM -----------------------------------------------------------------------------

    def generate(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        **options: Any,
    ) -> Generation:
        """Generate text; options: model, temperature, top_p, max_tokens, stop, seed, priority."""
        body = llm_body(prompt, messages, **options, stream=False)
        return generation_from(self._request("POST", "/api/llm/generate", json=body).json())

    def generate_stream(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        **options: Any,
    ) -> Iterator[str]:
        """Yield text pieces as the model produces them."""
        body = llm_body(prompt, messages, **options, stream=True)
        for attempt in range(self.max_retries + 1):
            with self._http.stream("POST", "/api/llm/generate", json=body) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    err = error_from(resp)
                    if resp.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                        raise err
                    time.sleep(backoff_delay(attempt, err.retry_after, self.max_retry_wait))
                    continue
                decoder = SSEDecoder()
                for line in resp.iter_lines():
                    event = decoder.feed(line)
                    if event is None:
                        continue
                    name, data = event
                    if name == "token":
                        yield data["text"]
                    elif name == "error":
                        raise RISError(200, data["code"], data["message"])
                return

    # ----- TTS -----------------------------------------------------------------------------

    def synthesize(
        self,
        text: str,
        *,
        voice: str | None = None,
        speed: float = 1.0,
        model: str | None = None,
        path: str | Path | None = None,
        **options: Any,
    ) -> Speech:
        """Synthesize speech; returns the WAV bytes (and writes them to `path` if given)."""
        body = {"text": text, "voice": voice, "speed": speed, "model": model, **options}
        body = {k: v for k, v in body.items() if v is not None}
        meta = self._request("POST", "/api/tts/synthesize", json=body).json()
        audio = self._request("GET", meta["audio_url"]).content
        speech = Speech(
            meta["task_id"], meta["model"], meta["voice"], meta["sample_rate"], meta["duration_s"], audio
        )
        if path is not None:
            speech.save(path)
        return speech

    # ----- images --------------------------------------------------------------------------

    def generate_image(self, prompt: str, **options: Any) -> dict[str, Any]:
        """Queue an image; returns at once with task_id, status and queue_position.
        Options: width, height, steps, guidance, seed, negative_prompt, use_turbo, model, priority."""
        body = {"prompt": prompt, **{k: v for k, v in options.items() if v is not None}}
        return dict(self._request("POST", "/api/image/generate", json=body).json())

    def progress(self, task_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/image/progress/{task_id}").json())

    def wait(
        self,
        task_id: str,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll_s: float = 0.25,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the task ends; return its last progress, or raise RISError if it failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            prog = self.progress(task_id)
            if on_progress is not None:
                on_progress(prog)
            if prog["status"] in FINAL_STATES:
                return check_final(prog)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} still {prog['status']} after {timeout} s")
            time.sleep(poll_s)

    def result(self, task_id: str, path: str | Path | None = None) -> bytes:
        """The PNG of a finished image task (written to `path` too if given)."""
        png = self._request("GET", f"/api/image/result/{task_id}").content
        if path is not None:
            Path(path).write_bytes(png)
        return png

    def image(self, prompt: str, *, path: str | Path | None = None, **options: Any) -> bytes:
        """Generate, wait and fetch: the PNG bytes."""
        task_id = self.generate_image(prompt, **options)["task_id"]
        self.wait(task_id)
        return self.result(task_id, path)

    def image_tasks(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("status", status), ("limit", limit)) if v is not None}
        return list(self._request("GET", "/api/image/tasks", params=params).json()["tasks"])

    # ----- speaking pipeline ---------------------------------------------------------------

    def speak(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        path: str | Path | None = None,
        **options: Any,
    ) -> bytes:
        """An answer spoken as it is generated: the WAV bytes (written to `path` if given).
        Options: model, voice, speed, tts_model, max_tokens, temperature, seed."""
        body = llm_body(prompt, messages, **options)
        with self._http.stream("POST", "/api/chat/speak", json=body) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise error_from(resp)
            audio = b"".join(resp.iter_bytes())
        if path is not None:
            Path(path).write_bytes(audio)
        return audio

    def speak_events(
        self, prompt: str | None = None, *, messages: list[dict[str, str]] | None = None, **options: Any
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, data) as they happen: text, audio (data["pcm"] as bytes), llm_done, done."""
        body = llm_body(prompt, messages, **options, stream_format="events")
        with self._http.stream("POST", "/api/chat/speak", json=body) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise error_from(resp)
            decoder = SSEDecoder()
            for line in resp.iter_lines():
                event = decoder.feed(line)
                if event is None:
                    continue
                name, data = event
                if name == "audio":
                    data["pcm"] = base64.b64decode(data["pcm"])
                elif name == "error":
                    raise RISError(200, data["code"], data["message"])
                yield name, data

    # ----- tasks and status ----------------------------------------------------------------

    def task(self, task_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/tasks/{task_id}").json())

    def tasks(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        return list(self._request("GET", "/api/tasks", params=params).json()["tasks"])

    def cancel(self, task_id: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/api/tasks/{task_id}/cancel").json())

    def health(self) -> bool:
        return self._http.get("/health").status_code == 200

    def ready(self) -> dict[str, Any]:
        resp = self._http.get("/ready")
        return dict(resp.json())

    def stats(self) -> dict[str, Any]:
        return dict(self._request("GET", "/api/stats").json())

    def models(self) -> dict[str, Any]:
        return dict(self._request("GET", "/api/models").json())


class AsyncClient:
    """Asynchronous twin of Client."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers)
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            resp = await self._http.request(method, url, **kw)
            if resp.status_code < 400:
                return resp
            err = error_from(resp)
            if resp.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                raise err
            await asyncio.sleep(backoff_delay(attempt, err.retry_after, self.max_retry_wait))
        raise AssertionError("unreachable")

    async def generate(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        **options: Any,
    ) -> Generation:
        body = llm_body(prompt, messages, **options, stream=False)
        resp = await self._request("POST", "/api/llm/generate", json=body)
        return generation_from(resp.json())

    async def generate_stream(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        **options: Any,
    ) -> AsyncIterator[str]:
        body = llm_body(prompt, messages, **options, stream=True)
        for attempt in range(self.max_retries + 1):
            async with self._http.stream("POST", "/api/llm/generate", json=body) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    err = error_from(resp)
                    if resp.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                        raise err
                    await asyncio.sleep(backoff_delay(attempt, err.retry_after, self.max_retry_wait))
                    continue
                decoder = SSEDecoder()
                async for line in resp.aiter_lines():
                    event = decoder.feed(line)
                    if event is None:
                        continue
                    name, data = event
                    if name == "token":
                        yield data["text"]
                    elif name == "error":
                        raise RISError(200, data["code"], data["message"])
                return

    async def synthesize(
        self,
        text: str,
        *,
        voice: str | None = None,
        speed: float = 1.0,
        model: str | None = None,
        path: str | Path | None = None,
        **options: Any,
    ) -> Speech:
        body = {"text": text, "voice": voice, "speed": speed, "model": model, **options}
        body = {k: v for k, v in body.items() if v is not None}
        meta = (await self._request("POST", "/api/tts/synthesize", json=body)).json()
        audio = (await self._request("GET", meta["audio_url"])).content
        speech = Speech(
            meta["task_id"], meta["model"], meta["voice"], meta["sample_rate"], meta["duration_s"], audio
        )
        if path is not None:
            speech.save(path)
        return speech

    async def generate_image(self, prompt: str, **options: Any) -> dict[str, Any]:
        body = {"prompt": prompt, **{k: v for k, v in options.items() if v is not None}}
        return dict((await self._request("POST", "/api/image/generate", json=body)).json())

    async def progress(self, task_id: str) -> dict[str, Any]:
        return dict((await self._request("GET", f"/api/image/progress/{task_id}")).json())

    async def wait(
        self,
        task_id: str,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll_s: float = 0.25,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            prog = await self.progress(task_id)
            if on_progress is not None:
                on_progress(prog)
            if prog["status"] in FINAL_STATES:
                return check_final(prog)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} still {prog['status']} after {timeout} s")
            await asyncio.sleep(poll_s)

    async def result(self, task_id: str, path: str | Path | None = None) -> bytes:
        png = (await self._request("GET", f"/api/image/result/{task_id}")).content
        if path is not None:
            Path(path).write_bytes(png)
        return png

    async def task(self, task_id: str) -> dict[str, Any]:
        return dict((await self._request("GET", f"/api/tasks/{task_id}")).json())

    async def tasks(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        return list((await self._request("GET", "/api/tasks", params=params)).json()["tasks"])

    async def cancel(self, task_id: str) -> dict[str, Any]:
        return dict((await self._request("POST", f"/api/tasks/{task_id}/cancel")).json())

    async def health(self) -> bool:
        return (await self._http.get("/health")).status_code == 200

    async def ready(self) -> dict[str, Any]:
        return dict((await self._http.get("/ready")).json())

    async def stats(self) -> dict[str, Any]:
        return dict((await self._request("GET", "/api/stats")).json())
