"""What the speech routes (/api/tts, /v1/audio/speech, /api/chat/speak) share: which TTS model
speaks a voice, its sample rate, refusing text with nothing to speak, and a task's first
audio before a stream's status line is sent."""

from __future__ import annotations

from fastapi import Request

from ris.api.deps import resolve_model, unless_gone
from ris.api.errors import APIError, failure
from ris.lanes import Lane
from ris.lanes.tts import NOTHING_TO_SPEAK, speakable, speaks, voice_listing
from ris.runtime.engine import Engine
from ris.services.audio import AudioStream


def pick_tts_model(engine: Engine, model: str | None, voice: str | None) -> str:
    """The TTS model a request names, else the first configured one that speaks its voice.
    A named model must speak the voice asked for: refused here, before queueing, as its worker
    would refuse it (the worker is the judge while it has not reported its voices yet)."""
    cfg = engine.config.lane(Lane.TTS)
    infos = engine.model_infos(Lane.TTS)
    if model is not None:
        name = resolve_model(engine, Lane.TTS, model)
        info = infos.get(name)
        if voice is not None and info is not None and not speaks(info.details.voices, voice):
            raise APIError(
                422,
                "unknown_voice",
                f"TTS model {name!r} does not speak voice {voice!r}; "
                f"its voices: {voice_listing(info.details.voices)}",
                param="voice",
            )
        return name
    if voice is None:
        return resolve_model(engine, Lane.TTS, None)
    order = [cfg.default_model] + [n for n in cfg.models if n != cfg.default_model]
    for candidate in order:
        info = infos.get(candidate or "")
        if info and speaks(info.details.voices, voice):
            return info.name
    if not infos:
        raise APIError(
            503, "lane_unavailable", "the TTS worker is still starting", headers={"Retry-After": "5"}
        )
    known = sorted({v for i in infos.values() for v in i.details.voices[:1]} | {"en-US", "zh-CN"})
    raise APIError(
        422,
        "unknown_voice",
        f"no configured TTS model speaks voice {voice!r}; examples: {', '.join(known)}",
        param="voice",
    )


def tts_rate(engine: Engine, model: str) -> int:
    """The sample rate of a loaded TTS model (streams need it before the first chunk)."""
    info = engine.model_infos(Lane.TTS).get(model)
    if info is None or not info.details.sample_rate:
        raise APIError(503, "lane_unavailable", "the TTS worker is still starting", {"Retry-After": "5"})
    return info.details.sample_rate


def require_speakable(text: str, status: int = 422, param: str | None = None) -> None:
    """Refuse, before anything is queued, text in which no engine has anything to say."""
    if not speakable(text):
        raise APIError(status, "nothing_to_speak", NOTHING_TO_SPEAK, param=param)


async def first_audio(engine: Engine, audio: AudioStream, request: Request) -> bytes:
    """A TTS task's first piece of PCM. A task that ends without one answers with its error
    here, while the response's status line is still unsent: a stream must not begin with
    200 and a WAV header for audio that never comes. A client that leaves meanwhile takes
    its task with it."""
    handle = audio.handle
    try:
        pcm = await unless_gone(request, audio.next())
    except BaseException:
        engine.cancel(handle.task_id)
        raise
    if pcm is None:
        view = await handle.done
        if not view.succeeded:
            raise failure(view)
        raise APIError(500, "synthesis_empty", "the speech engine produced no audio")
    return pcm
