"""What the speech routes (/api/tts, /v1/audio/speech, /api/chat/speak) share: which TTS model
speaks a voice, its sample rate, refusing text with nothing to speak, a task's first
audio before a stream's status line is sent, and its audio after that."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request

from ris.api.deps import first_or_failure, resolve_model
from ris.api.errors import APIError
from ris.api.streams import StreamBroken
from ris.lanes import Lane
from ris.lanes.tts import NOTHING_TO_SPEAK, speakable, speaks, voice_key, voice_listing
from ris.languages import LANGUAGE_NAMES, text_script
from ris.runtime.engine import Engine
from ris.services.audio import AudioStream
from ris.services.speech_encoding import MEDIA_TYPES, SPEECH_FORMATS, SpeechFormat


def pick_tts_model(engine: Engine, model: str | None, voice: str | None) -> str:
    """The TTS model a request names, else the first configured one that speaks its voice.
    A named model must speak the voice asked for: refused here, before queueing, as its worker
    would refuse it (the worker is the judge while it has not reported its voices yet)."""
    cfg = engine.config.lane(Lane.TTS)
    infos = engine.known_model_infos(Lane.TTS)
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
        engine.require_serving(Lane.TTS)  # failed or pending: said as such (lane_pending, the reason)
        raise APIError(503, "lane_unavailable", still_starting(engine), headers={"Retry-After": "5"})
    known = sorted({v for i in infos.values() for v in i.details.voices[:1]} | {"en-US", "zh-CN"})
    raise APIError(
        422,
        "unknown_voice",
        f"no configured TTS model speaks voice {voice!r}; examples: {', '.join(known)} "
        "(GET /api/models lists each model's voices)",
        param="voice",
    )


def voice_for_text(
    engine: Engine, model: str | None, text: str, what: str = "the text"
) -> tuple[str, str | None, list[str]]:
    """The model and voice for a request that names no voice, and the answer's warnings. Text
    mostly in a script other than Latin (ris.languages) is read by a voice of its likeliest
    language, the named or default model's else another configured model's, where one speaks
    it; else by a voice of another language written in that script (Ukrainian read by a
    Russian voice): the default voice read "这是一段测试文本" as "Chinese letter" eight times,
    and Russian letter by letter. Where none does, the default voice reads it and the answer
    says so."""
    chosen = pick_tts_model(engine, model, None)
    found = text_script(text)
    infos = engine.known_model_infos(Lane.TTS)
    info = infos.get(chosen)
    if found is None or info is None or not info.details.voices:
        return chosen, None, []
    default = info.details.voices[0]
    candidates = [chosen] if model is not None else [chosen, *(n for n in infos if n != chosen)]
    own = voice_key(default).split("-")[0]  # its own voice's language ("zh_CN-huayan-medium": zh)
    for tag in found.candidates:
        if tag == own:
            return chosen, None, []  # its own voice reads it (no voice of a likelier one is loaded)
        for name in candidates:
            if speaks(infos[name].details.voices, tag):
                # The language, not the tag asked for: the engine names its voice ("zh" is
                # espeak's "cmn", which the answer's `voice` says).
                voice = LANGUAGE_NAMES.get(tag, tag)
                note = (
                    f"voice: none given and {what} is {found.describe()}: {name!r} reads it with its "
                    f"{voice} voice, not {default!r}; pass voice to choose"
                )
                return name, tag, [note]
    others = [
        n for n in infos if n != chosen and any(speaks(infos[n].details.voices, t) for t in found.candidates)
    ]
    where = f"{chosen!r} has no voice for it ({others[0]!r} has)" if others else "no loaded voice reads it"
    note = (
        f"voice: none given and {what} is {found.describe()}; {where}: {default!r} reads it as its "
        "own language would (pull a voice of that language: docs/MODELS_TTS.md)"
    )
    return chosen, None, [note]


def still_starting(engine: Engine) -> str:
    """The TTS lane has no worker up yet: so, with why its last start failed, if one did (a
    worker restarted in a loop reads as a lane about to serve otherwise)."""
    why = engine.start_failure(Lane.TTS)
    return "the TTS worker is still starting" + (f"; its last start failed: {why}" if why else "")


def tts_rate(engine: Engine, model: str) -> int:
    """The sample rate of a loaded TTS model (streams need it before the first chunk)."""
    info = engine.known_model_infos(Lane.TTS).get(model)
    if info is None or not info.details.sample_rate:
        engine.require_serving(Lane.TTS)
        raise APIError(503, "lane_unavailable", still_starting(engine), {"Retry-After": "5"})
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
    pcm = await first_or_failure(request, engine, audio.handle, audio.next())
    if pcm is None:
        raise APIError(500, "synthesis_empty", "the speech engine produced no audio")
    return pcm


async def task_pcm(audio: AudioStream, first: bytes) -> AsyncIterator[bytes]:
    """A TTS task's PCM from its `first` piece (`first_audio`) on, as it is made. A task that
    fails after some audio raises StreamBroken at the point of failure: the body is broken
    off, and no encoder writes a clean end to it first."""
    pcm: bytes | None = first
    while pcm is not None:
        yield pcm
        pcm = await audio.next()
    view = await audio.handle.done
    if not view.succeeded:
        raise StreamBroken(view.error_code or "failed", view.error_message or "the task failed")


# The audio types an Accept header may name, each the format it is written in: OpenAI's
# content types (MEDIA_TYPES) and the other names players and browsers send for them.
ACCEPTED_AUDIO: dict[str, SpeechFormat] = {
    **{media: fmt for fmt, media in MEDIA_TYPES.items()},
    "audio/mp3": "mp3",
    "audio/opus": "opus",
    "audio/x-flac": "flac",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
}


def _media_range(part: str) -> tuple[str, float]:
    """One Accept entry as (type, q): `audio/mpeg;q=0.5` -> ("audio/mpeg", 0.5)."""
    media, *params = (p.strip() for p in part.split(";"))
    q = 1.0
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0  # a q that is not a number accepts nothing (RFC 9110: it is invalid)
    return media.lower(), q


def accepted_format(accept: str, fmt: SpeechFormat | None) -> SpeechFormat | None:
    """The format of an audio answer, from the Accept header and the request's `format`; None
    when Accept asks for no audio, or for JSON at a q as high as any audio's: the answer is
    JSON. `format` wins where Accept allows it (its type, or audio/*); else the type Accept
    prefers (its q; among equals, wav, served as it is stored, then the first named); audio/*
    alone means wav. A type with q=0 is refused. 406 when Accept names only audio no format is
    written in, or not the one `format` asks for."""
    weighted = [_media_range(part) for part in accept.split(",") if part.strip()]
    types = [t for t, q in sorted(weighted, key=lambda w: -w[1]) if q > 0]  # stable: ties keep order
    audio = [t for t in types if t.startswith("audio/")]
    # JSON where Accept likes it as well as any audio ("audio/mpeg, application/json;q=0.5"
    # was answered in JSON: it asks for audio first).
    json_q = max((q for t, q in weighted if t == "application/json"), default=0.0)
    if not audio or (json_q > 0 and json_q >= max(q for t, q in weighted if t.startswith("audio/"))):
        return None
    named = [ACCEPTED_AUDIO[t] for t in audio if t in ACCEPTED_AUDIO]
    if fmt is not None:
        if fmt in named or "audio/*" in audio:
            return fmt
        raise APIError(
            406,
            "not_acceptable",
            f"format {fmt!r} is served as {MEDIA_TYPES[fmt]}, which Accept ({accept}) does not list",
        )
    if named:
        best = max(q for t, q in weighted if t in ACCEPTED_AUDIO and q > 0)
        top = [ACCEPTED_AUDIO[t] for t, q in weighted if t in ACCEPTED_AUDIO and q == best]
        return "wav" if "wav" in top else top[0]
    if "audio/*" in audio:
        return "wav"
    listing = ", ".join(f"{MEDIA_TYPES[f]} ({f})" for f in SPEECH_FORMATS)
    raise APIError(406, "not_acceptable", f"Accept ({accept}) names no audio type served here: {listing}")
