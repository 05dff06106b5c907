"""The real speech engines (Piper, espeak-ng) driven through the TTS lane's runner, as the worker
drives them: every engine refuses a voice it does not have, and no audio is never a success."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ris.backends import BackendContext, BackendError, backend_class
from ris.config import ModelSpec
from ris.lanes import Lane
from ris.lanes.base import WorkerEnv
from ris.lanes.tts import LANE, TTSBackend, TTSOutcome, TTSRequest, TTSRunner


@pytest.fixture(scope="module", params=["piper", "espeak"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TTSBackend:
    spec = LANE.embedded_models[request.param]
    ctx = BackendContext(device="cpu", threads=1, data_dir=tmp_path_factory.mktemp("tts"))
    backend = backend_class(Lane.TTS, spec.backend)(spec, ctx)
    assert isinstance(backend, TTSBackend)
    return backend


def speak(backend: TTSBackend, req: TTSRequest) -> TTSOutcome:
    env = WorkerEnv("tts", lambda _msg: None, lambda _activity: None, lambda: None)
    return TTSRunner(env).run(backend, "t", req, lambda: False)


def test_a_voice_the_engine_does_not_have_is_refused(engine: TTSBackend) -> None:
    # Piper's English model used to speak "zh-CN" text in English, and say nothing of it.
    voice = "xx-klingon" if "zh-CN" in engine.voices else "zh-CN"
    with pytest.raises(BackendError) as exc:
        speak(engine, TTSRequest(text="Hello there.", voice=voice))
    assert exc.value.code == "unknown_voice" and engine.voices[0] in exc.value.message


def test_every_voice_it_lists_can_be_selected(engine: TTSBackend) -> None:
    # The server routes by this list and refuses voices not on it, so every entry must work:
    # espeak-ng listed language tags it could not select by name ("en-gb", "zh-yue"), and
    # refused the aliases it takes ("zh-TW") at the server, for not listing them.
    assert "zh-tw" in engine.voices or "zh-CN" not in engine.voices
    # And each speaks: a few espeak-ng voices ship without their dictionary and answered every
    # text with silence (fo, kaa, xex); they are not listed now.
    for voice in engine.voices:
        assert speak(engine, TTSRequest(text="One.", voice=voice)).samples > 0, voice


def test_the_engine_speaks_the_same_on_lent_cores_as_on_its_own(engine: TTSBackend) -> None:
    """borrow_idle_cores: the runner sets the thread count between sentences where the engine
    uses threads; Piper switches to a session of that many threads, made once. Same voice and
    about the same length of speech either way (Piper draws its durations: a few % apart)."""
    text = TTSRequest(text="The keeper lit the lamp at dusk.")
    own = speak(engine, text)
    if not engine.uses_threads:  # espeak-ng: one thread, never moved onto a lent core
        assert getattr(engine, "_voices", None) is None
        return
    engine.set_threads(2)
    try:
        lent_session = engine._voices[2]  # type: ignore[attr-defined]  # noqa: SLF001
        lent = speak(engine, text)
        engine.set_threads(2)  # again: the same session, not another one
        assert engine._voices[2] is lent_session  # type: ignore[attr-defined]  # noqa: SLF001
    finally:
        engine.set_threads(1)
    assert (lent.voice, lent.sample_rate) == (own.voice, own.sample_rate)
    assert abs(lent.samples - own.samples) <= own.samples // 5
    assert sorted(engine._voices) == [1, 2]  # type: ignore[attr-defined]  # noqa: SLF001


def test_text_the_engine_has_no_sound_for_is_an_error(engine: TTSBackend) -> None:
    # An Arabic-Indic digit: Piper gives no samples, espeak-ng 154 silent ones.
    with pytest.raises(BackendError) as exc:
        speak(engine, TTSRequest(text="\u0663"))
    assert exc.value.code == "synthesis_empty"


@pytest.mark.parametrize("timeout", [0, -1, "30", True])
def test_pyttsx3_refuses_a_timeout_that_is_not_a_positive_number(timeout: object, tmp_path: Path) -> None:
    # Checked before the engine starts: this process's libespeak-ng stays the espeak backend's.
    spec = ModelSpec(backend="pyttsx3", options={"timeout_s": timeout})
    with pytest.raises(BackendError) as exc:
        backend_class(Lane.TTS, "pyttsx3")(spec, BackendContext(device="cpu", threads=1, data_dir=tmp_path))
    assert exc.value.code == "bad_model" and "timeout_s" in exc.value.message


def test_pyttsx3_starts_where_the_data_folder_does_not_exist_yet(tmp_path: Path) -> None:
    # A Ray node gets the server's data_dir path, which nothing has made there. In a process of
    # its own: libespeak-ng's state is per process, and this one's is the espeak backend's.
    folder = tmp_path / "not" / "made"
    code = (
        "import sys; from pathlib import Path\n"
        "from ris.backends import BackendContext, backend_class\n"
        "from ris.config import ModelSpec\n"
        "b = backend_class('tts', 'pyttsx3')(ModelSpec(backend='pyttsx3'),"
        " BackendContext(device='cpu', threads=1, data_dir=Path(sys.argv[1])))\n"
        "b.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert folder.is_dir()


def test_a_pulled_piper_voice_answers_to_its_locale_and_language() -> None:
    """Piper names voices by locale (zh_CN-huayan-medium); its espeak voice is often no locale
    ("cmn"), so a request for zh-CN never reached a pulled Chinese voice."""
    from ris.backends.tts_piper import voice_tags
    from ris.lanes.tts import speaks

    zh = voice_tags("cmn", "zh_CN-huayan-medium")
    assert zh[0] == "zh_CN-huayan-medium" and all(speaks(zh, v) for v in ("zh-CN", "zh", "huayan", "cmn"))
    de = voice_tags("de", "de_DE-thorsten-medium")
    assert speaks(de, "de-DE") and speaks(de, "de") and not speaks(de, "en")
    assert voice_tags("en-us", "en_US-joe-medium") == ("en_US-joe-medium", "en", "en-US", "en-us", "joe")


def test_piper_speed_scales_the_voices_own_pace(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A voice tuned to length_scale 2 spoke at 1 (its pace replaced by 1 / speed): speed 1 is
    the voice's own pace, and speed 2 of it half as long (Piper's durations vary by a few
    percent from one run to the next: the bounds allow for it)."""
    spec = LANE.embedded_models["piper"]
    ctx = BackendContext(device="cpu", threads=1, data_dir=tmp_path_factory.mktemp("piper"))
    piper = backend_class(Lane.TTS, spec.backend)(spec, ctx)
    assert isinstance(piper, TTSBackend)
    text = "A sentence long enough to time its pace."
    own = speak(piper, TTSRequest(text=text)).samples
    piper._config.length_scale = 2.0  # type: ignore[attr-defined]  # a slower voice
    slow = speak(piper, TTSRequest(text=text)).samples
    assert 1.5 < slow / own < 2.3, (own, slow)  # pauses and edges do not scale exactly
    assert 0.43 < speak(piper, TTSRequest(text=text, speed=2.0)).samples / slow < 0.57
    # Each speed as asked: the voice's length_scale / speed spoke 2 at 1.57x, 4 at 1.97x and
    # 0.5 at 0.57x; the noise in Piper's durations (a few percent) aside.
    piper._config.length_scale = 1.0  # type: ignore[attr-defined]
    own = speak(piper, TTSRequest(text=text)).samples
    for speed in (0.5, 1.25, 2.0, 4.0):
        pace = own / speak(piper, TTSRequest(text=text, speed=speed)).samples
        assert 0.88 * speed < pace < 1.12 * speed, (speed, pace)


def test_piper_survives_long_runs_of_initials(tmp_path: Path) -> None:
    """ "Ж." * 100 (and "b." * 100 one time in two) killed the TTS worker with SIGSEGV inside
    piper-tts's espeak-ng, which spells a run of initials into a buffer it overruns. Run in a
    process of its own: a crash fails this test, not the test session."""
    script = f"""
from pathlib import Path
from ris.backends import BackendContext, backend_class
from ris.lanes import Lane
from ris.lanes.tts import LANE, TTSRequest
spec = LANE.embedded_models["piper"]
ctx = BackendContext(device="cpu", threads=1, data_dir=Path({str(tmp_path)!r}))
piper = backend_class(Lane.TTS, spec.backend)(spec, ctx)
class Out:
    def emit(self, pcm): pass
    def cancelled(self): return False
for text in ["Ж." * 100, "b." * 100, "U.S." * 50] * 2:
    assert piper.synthesize(TTSRequest(text=text), Out()).samples > 0
print("spoke")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "spoke" in done.stdout, (done.returncode, done.stderr[-2000:])


def test_piper_speaks_a_long_sentence_in_bounded_runs(tmp_path: Path) -> None:
    """200 characters of "1e308 " are 932 phonemes read out as numbers: one run of the voice
    took the worker to 1 GiB (its memory grows with the run). Runs are bounded, cut at words."""
    from ris.backends.tts_piper import MAX_PHONEMES, phoneme_pieces

    assert phoneme_pieces(list("ab cd ef"), 4) == [list("ab "), list("cd "), list("ef")]
    assert phoneme_pieces(list("abcdefgh"), 4) == [list("abcd"), list("efgh")]  # no word end: cut
    assert phoneme_pieces([], 4) == []
    spec = LANE.embedded_models["piper"]
    piper = backend_class(Lane.TTS, spec.backend)(
        spec, BackendContext(device="cpu", threads=1, data_dir=tmp_path)
    )
    assert isinstance(piper, TTSBackend)
    voice = piper._voice  # type: ignore[attr-defined]
    runs: list[int] = []
    run = voice.phoneme_ids_to_audio

    def counted(ids: list[int], *args: object, **kw: object) -> object:
        runs.append(len(ids))
        return run(ids, *args, **kw)

    voice.phoneme_ids_to_audio = counted
    outcome = speak(piper, TTSRequest(text="1e308 " * 33))
    assert outcome.samples > 0 and len(runs) >= 4
    # Each phoneme is an id and a pad, after a start and its pad, before an end.
    assert max(runs) <= 2 * MAX_PHONEMES + 3, runs


def test_pyttsx3_tries_again_once_before_a_silence_is_the_texts(tmp_path: Path) -> None:
    """Under load pyttsx3's driver now and then ended an utterance before its first sample: a
    Chinese request among eight at once came back 422 synthesis_empty. In a process of its own
    (libespeak-ng's state is per process)."""
    code = (
        "import sys; from pathlib import Path\n"
        "from ris.backends import BackendContext, backend_class\n"
        "from ris.config import ModelSpec\n"
        "from ris.lanes.tts import AudioOutput, TTSRequest\n"
        "class Out(AudioOutput):\n"
        "    def emit(self, pcm): pass\n"
        "    def cancelled(self): return False\n"
        "b = backend_class('tts', 'pyttsx3')(ModelSpec(backend='pyttsx3'),"
        " BackendContext(device='cpu', threads=1, data_dir=Path(sys.argv[1])))\n"
        "real, calls = b._synthesize_locked, []\n"
        "def flaky(*args):\n"
        "    calls.append(1)\n"
        "    return b'' if len(calls) == 1 else real(*args)\n"
        "b._synthesize_locked = flaky\n"
        "out = Out()\n"
        "outcome = b.synthesize(TTSRequest(text='这是一段测试文本', voice='zh-CN'), out)\n"
        "assert len(calls) == 2 and outcome.samples > 0, (calls, outcome)\n"
        "b.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
