"""Speech in every OpenAI format from the real server and voices: the unmodified `openai`
client's default call (mp3), each format decoded back by FFmpeg (through PyAV) to the WAV's
duration and rate, the native route's `format` and Accept, and unknown formats refused."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import av
import httpx
import pytest

from ris import Client

from .server import Server

if TYPE_CHECKING:
    from openai import OpenAI

openai = pytest.importorskip("openai", reason="the openai package is a test dependency")
pytestmark = pytest.mark.slow

TEXT = "Speech in every format, streamed as it is made."
RATE = 22050  # Piper's joe voice
# Decoders' rates: Opus always decodes at 48 kHz; the others keep the voice's.
DECODED_RATES = {"mp3": RATE, "opus": 48000, "aac": RATE, "flac": RATE}
CONTAINERS = {"mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac"}
MEDIA = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac"}
# Encoders pad to whole frames and lead in (LAME's delay, Opus's pre-skip): at most about
# three MP3 frames longer than the PCM.
SLACK_S = 3 * 1152 / RATE


def decoded(data: bytes) -> tuple[float, int, str]:
    """Seconds, sample rate and container of an encoded answer, decoded by FFmpeg."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / rate, rate, container.format.name


@pytest.fixture()
def oa(server: Server) -> Iterator[OpenAI]:
    # Closed after the test: its connection pool's sockets are not left to the collector.
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def synthesized(server: Server) -> tuple[str, float]:
    """One finished synthesis (its task id and WAV seconds) that each format re-encodes."""
    r = httpx.post(f"{server.url}/api/tts/synthesize", json={"text": TEXT, "voice": "en-US"}, timeout=120)
    r.raise_for_status()
    return r.json()["task_id"], r.json()["duration_s"]


def test_the_openai_clients_default_speech_call_is_mp3_that_decodes(oa: OpenAI) -> None:
    """No response_format: OpenAI's default, mp3 (RIS answered 400 here before)."""
    resp = oa.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)
    assert resp.response.headers["content-type"] == "audio/mpeg"
    seconds, rate, container = decoded(resp.content)
    assert (rate, container) == (RATE, "mp3") and seconds > 1.5


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac"])
def test_streamed_speech_in_each_format_decodes_to_the_wavs_duration(
    oa: OpenAI, server: Server, fmt: str
) -> None:
    with httpx.stream(
        "POST",
        f"{server.url}/v1/audio/speech",
        json={"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": fmt},
        timeout=120,
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"] == MEDIA[fmt]
        assert r.headers.get("transfer-encoding") == "chunked"  # streamed, no length known ahead
        data = r.read()
    # The same text as PCM, for the duration to compare (16-bit mono).
    pcm = oa.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="pcm")
    pcm_seconds = len(pcm.content) / 2 / int(pcm.response.headers["x-sample-rate"])  # OpenAI's 24 kHz
    seconds, rate, container = decoded(data)
    assert (rate, container) == (DECODED_RATES[fmt], CONTAINERS[fmt])
    # The voice is synthesized twice: Piper's timing may differ by a few percent between runs.
    assert abs(seconds - pcm_seconds) < SLACK_S + 0.05 * pcm_seconds, (seconds, pcm_seconds)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "pcm"])
def test_a_finished_synthesis_in_each_format_has_its_duration(
    server: Server, synthesized: tuple[str, float], fmt: str
) -> None:
    task_id, wav_seconds = synthesized
    r = httpx.get(f"{server.url}/api/tts/audio/{task_id}", params={"format": fmt}, timeout=60)
    assert r.status_code == 200
    if fmt == "pcm":
        assert r.headers["content-type"] == "audio/pcm"
        assert abs(len(r.content) / 2 / RATE - wav_seconds) < 0.001
        return
    assert r.headers["content-type"] == MEDIA[fmt]
    seconds, rate, container = decoded(r.content)
    assert (rate, container) == (DECODED_RATES[fmt], CONTAINERS[fmt])
    assert wav_seconds <= seconds + 0.001 and seconds - wav_seconds < SLACK_S, (seconds, wav_seconds)


def test_the_native_route_answers_in_the_type_accept_names(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/api/tts/synthesize",
        json={"text": TEXT, "voice": "en-US"},
        headers={"Accept": "audio/mpeg"},
        timeout=120,
    )
    assert r.status_code == 200 and r.headers["content-type"] == "audio/mpeg"
    seconds, _, container = decoded(r.content)
    assert container == "mp3" and abs(seconds - float(r.headers["X-Duration-S"])) < SLACK_S
    as_json = httpx.post(
        f"{server.url}/api/tts/synthesize", json={"text": "Hi.", "format": "flac"}, timeout=120
    ).json()
    assert as_json["audio_url"].endswith("?format=flac")
    # The rate said is the rate of the audio audio_url serves: opus is 24 kHz (it was the voice's).
    opus = httpx.post(
        f"{server.url}/api/tts/synthesize", json={"text": "Hi.", "format": "opus"}, timeout=120
    ).json()
    assert opus["sample_rate"] == 24000 and as_json["sample_rate"] == RATE
    # Raw PCM fetched by its URL says its rate (it had no header to say it in).
    task = as_json["audio_url"].split("?")[0]
    pcm = httpx.get(f"{server.url}{task}?format=pcm", timeout=60)
    assert pcm.status_code == 200 and pcm.headers["x-sample-rate"] == str(RATE), pcm.headers
    wav = httpx.get(f"{server.url}{task}", timeout=60)
    assert wav.headers["x-sample-rate"] == str(RATE)
    # A task's file never changes: a browser keeps it (private: it may be one key's).
    assert wav.headers["cache-control"] == "private, max-age=86400, immutable"
    # HEAD as GET, without the body (it was 405); an encoded format is not encoded for it.
    for query, kind in (("", "audio/wav"), ("?format=mp3", "audio/mpeg")):
        head = httpx.head(f"{server.url}{task}{query}", timeout=60)
        assert head.status_code == 200 and head.headers["content-type"] == kind and not head.content
    assert httpx.head(f"{server.url}{task}", timeout=60).headers["content-length"] == str(len(wav.content))
    # An encoded format's length is not known before it is made: HEAD says none, as GET does
    # (it said 0), and neither is to be buffered by a proxy.
    mp3 = httpx.get(f"{server.url}{task}?format=mp3", timeout=60)
    head = httpx.head(f"{server.url}{task}?format=mp3", timeout=60)
    assert "content-length" not in mp3.headers and head.headers.get("content-length") != "0", head.headers
    assert mp3.headers["x-accel-buffering"] == "no"
    # A player that seeks asks for ranges (a browser's <audio> does, "bytes=0-" first): the
    # encoded file, its length known, each range served (it was the whole stream, 200).
    whole = httpx.get(f"{server.url}{task}?format=mp3", headers={"Range": "bytes=0-"}, timeout=60)
    assert whole.status_code == 206 and int(whole.headers["content-length"]) == len(whole.content) > 1000
    assert whole.headers["content-range"] == f"bytes 0-{len(whole.content) - 1}/{len(whole.content)}"
    assert whole.content == mp3.content  # the same encoding as the stream's
    part = httpx.get(f"{server.url}{task}?format=mp3", headers={"Range": "bytes=100-199"}, timeout=60)
    assert part.status_code == 206 and part.content == whole.content[100:200]
    head = httpx.head(f"{server.url}{task}?format=mp3", headers={"Range": "bytes=0-"}, timeout=60)
    assert head.headers["content-length"] == str(len(whole.content)) and not head.content


def test_the_sdk_saves_speech_in_the_format_asked(client: Client, tmp_path: Path) -> None:
    speech = client.synthesize(TEXT, voice="en-US", format="opus", path=tmp_path / "speech.ogg")
    seconds, rate, container = decoded((tmp_path / "speech.ogg").read_bytes())
    assert (rate, container) == (48000, "ogg") and abs(seconds - speech.duration_s) < SLACK_S


def test_unknown_formats_are_refused_with_the_ones_there_are(server: Server) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": "Hi.", "response_format": "wma"}
    r = httpx.post(f"{server.url}/v1/audio/speech", json=body, timeout=60)
    assert r.status_code == 400
    err = r.json()["error"]
    assert (
        err["param"] == "response_format" and "'mp3', 'opus', 'aac', 'flac', 'wav' or 'pcm'" in err["message"]
    )
    native = httpx.post(f"{server.url}/api/tts/synthesize", json={"text": "Hi.", "format": "ogg"}, timeout=60)
    assert native.status_code == 422 and "'mp3', 'opus', 'aac', 'flac', 'wav' or 'pcm'" in native.text
    refused = httpx.post(
        f"{server.url}/api/tts/synthesize",
        json={"text": "Hi.", "format": "mp3"},
        headers={"Accept": "audio/wav"},
        timeout=60,
    )
    assert refused.status_code == 406 and refused.json()["error"]["code"] == "not_acceptable"
